//! Warden's decision core. Sans-IO: events in, commands out; no sockets, clocks, tokio or
//! wasmtime, so its tests (scenarios and seeded simulations) build and run in seconds.
//!
//! The engine (`warden`) turns the config into a [`scheduler::Model`], feeds the scheduler
//! events (agent results, timers, operator commands) and carries out the commands it returns.

pub mod model;
pub mod scheduler;

pub use model::{topo_order, Role, Switchback};
