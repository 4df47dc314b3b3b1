//! Work and where it runs: placement as pure logic ([`scheduler`]), the task engine (submit,
//! dispatch, results, requeue: [`tasks`]), the tool registry ([`tools`]) and the agents that
//! run on nodes ([`agents`]), and the live output of both ([`output`]).

pub mod agents;
pub mod output;
pub mod scheduler;
pub mod tasks;
pub mod tools;
