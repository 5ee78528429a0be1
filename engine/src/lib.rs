//! Warden: a high-availability cluster engine whose resource agents are sandboxed WebAssembly
//! components. This library holds everything; `src/main.rs` is a thin binary over [`cli`].

pub mod api;
pub mod cli;
pub mod config;
pub mod node;
pub mod plugin;
pub use warden_core::scheduler;
