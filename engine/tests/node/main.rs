//! Node tier: the real `warden node run` on temporary configs, driven through the CLI, and the config snapshots.

#[path = "../support/inproc.rs"]
mod inproc;
#[path = "../support/node.rs"]
mod node;

mod config_snapshots;
mod daemon;
mod in_process;
mod operator;
mod watch;
