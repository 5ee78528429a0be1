//! Faults tier: the real daemon under the faults an independent review used against it: killed
//! in the middle of an action, two daemons on one state, a state disk that fails, damaged state
//! and history files, floods on its sockets, and stalls. Each test states the promise it checks.

#[path = "../support/node.rs"]
mod node;

mod daemon;
