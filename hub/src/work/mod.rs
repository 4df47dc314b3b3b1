//! Work and where it runs: placement as pure logic ([`scheduler`]), the task engine (submit,
//! dispatch, results, requeue: [`tasks`]) and the tool registry ([`tools`]).

pub mod scheduler;
pub mod tasks;
pub mod tools;
