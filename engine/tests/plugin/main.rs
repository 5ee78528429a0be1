//! Plugin tier: real components built from `plugins/`, `examples/` and `tests/test-programs` run through the sandboxed host; hostile guests, the example agents in three languages, and the `warden` binary's plugin commands.

#[path = "../support/plugins.rs"]
mod support;

mod cli;
mod example_agents;
mod hostile_guests;
mod sandbox_escapes;
mod watch;
