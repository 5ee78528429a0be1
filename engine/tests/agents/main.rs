//! Agents tier: every shipped agent against real processes, namespaces and mounts (the JP1 simulator for JP1).

#[path = "../support/generic.rs"]
mod generic;
#[path = "../support/jp1.rs"]
mod jp1;
#[path = "../support/mountns.rs"]
mod mountns;
#[path = "../support/netns.rs"]
mod netns;
#[path = "../support/plugins.rs"]
mod support;

mod fence_agents;
mod filesystem_agent;
mod generic_agent;
mod ip_agent;
mod jp1_agents;
