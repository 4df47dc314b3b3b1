//! Work and where it runs: placement as pure logic ([`scheduler`]), the task engine (submit,
//! dispatch, results, requeue: [`tasks`]), the tool registry ([`tools`]) and the agents that
//! run on nodes ([`agents`]), the live output of both ([`output`]), and the input schemas tools
//! describe ([`schema`]); the tool policy that supervises agents' calls ([`supervision`]).

pub mod agents;
pub mod output;
pub mod scheduler;
pub mod schema;
pub mod supervision;
pub mod tasks;
pub mod tools;
