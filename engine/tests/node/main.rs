//! Node tier: the real `warden node run` on temporary configs, driven through the CLI, and the config snapshots.

#[path = "../support/node.rs"]
mod node;

mod config_snapshots;
mod daemon;
