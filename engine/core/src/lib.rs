//! Warden's decision core. Sans-IO: events in, commands out; no sockets, clocks, tokio or
//! wasmtime, so its tests (scenarios and seeded simulations) build and run in seconds.
//!
//! The engine (`warden`) turns the config into a [`scheduler::Model`], feeds the scheduler
//! events (agent results, timers, operator commands) and carries out the commands it returns.
//! Nodes, groups and resources are named by their own types ([`NodeId`], [`GroupId`],
//! [`ResourceId`]), so one cannot be passed for another.

pub mod id;
pub mod lease;
pub mod model;
pub mod scheduler;

pub use id::{GroupId, NodeId, ResourceId};
pub use model::{topo_order, Role, Switchback};
