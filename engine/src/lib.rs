//! Warden: a high-availability cluster engine whose resource agents are sandboxed WebAssembly
//! components. This library holds everything; `src/main.rs` is a thin binary over [`cli`].

pub mod cli;
pub mod config;
pub mod plugin;
pub mod scheduler;
