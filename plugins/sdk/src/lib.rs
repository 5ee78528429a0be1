//! The Rust guest SDK for Warden agents.
//!
//! An agent crate implements [`Agent`] (or, with the `fence-agent` feature, [`FenceAgent`]) and
//! registers it with [`export_agent!`] (or [`export_fence_agent!`]); this crate owns the WIT
//! bindings, so the agent holds only its own logic. Host imports are wrapped in [`Command`],
//! [`fs`], [`net`], [`log`] and [`sleep`]. Build with
//! `cargo build --target wasm32-wasip2 --release`; `cargo xtask plugins` also embeds the
//! plugin's `warden.toml` capability manifest.
//!
//! ```ignore
//! use warden_sdk::*;
//! struct Hello;
//! impl Agent for Hello {
//!     fn metadata() -> AgentMetadata { AgentMetadata::new("hello", "0.1.0", "says hello") }
//!     fn start(_: &Context) -> Result<(), AgentError> { Ok(()) }
//!     fn stop(_: &Context) -> Result<(), AgentError> { Ok(()) }
//!     fn monitor(_: &Context) -> Result<Health, AgentError> { Ok(Health::Running) }
//! }
//! export_agent!(Hello);
//! ```

#![allow(unsafe_code)] // the generated bindings use unsafe for the canonical ABI

#[cfg(feature = "resource-agent")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "resource-agent",
        pub_export_macro: true,
        export_macro_name: "__export_resource_agent",
        default_bindings_module: "warden_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

// With both features on (a workspace-wide `cargo clippy`), the fence bindings reuse the shared
// interfaces. Such a build is fine natively but must never be linked into a component: it would
// carry both worlds. `cargo xtask plugins` builds the two kinds separately.
#[cfg(all(feature = "fence-agent", feature = "resource-agent"))]
#[doc(hidden)]
pub mod fence_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "fence-agent",
        with: {
            "warden:agent/types@0.2.0": crate::bindings::warden::agent::types,
            "warden:agent/host@0.2.0": crate::bindings::warden::agent::host,
        },
        pub_export_macro: true,
        export_macro_name: "__export_fence_agent",
        default_bindings_module: "warden_sdk::fence_bindings",
    });
}

#[cfg(all(feature = "fence-agent", not(feature = "resource-agent")))]
#[doc(hidden)]
pub mod fence_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "fence-agent",
        pub_export_macro: true,
        export_macro_name: "__export_fence_agent",
        default_bindings_module: "warden_sdk::fence_bindings",
    });
}

/// The shared interfaces (`types`, `host`), from whichever world is generated.
#[cfg(feature = "resource-agent")]
pub(crate) use bindings::warden::agent as wit;
#[cfg(not(feature = "resource-agent"))]
pub(crate) use fence_bindings::warden::agent as wit;

mod command;
mod context;
pub mod fs;
pub mod log;
pub mod net;
pub mod watch;

pub use command::Command;
pub use context::Param;
pub use wit::host::{ExecOutput, FileKind, WatchTarget};
pub use wit::types::{AgentError, Context, Health, Parameter, Timeouts};

#[cfg(feature = "resource-agent")]
pub use bindings::exports::warden::agent::agent::AgentMetadata;
#[cfg(feature = "fence-agent")]
pub use fence_bindings::exports::warden::agent::fence::{FenceMetadata, PowerState};

/// Wait without spinning; counts against the action's deadline.
pub fn sleep(d: std::time::Duration) {
    wit::host::sleep(d.as_millis().min(u32::MAX as u128) as u32)
}

/// Shorthand for building errors: `fail!("jevstat exited {code}")`.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { $crate::AgentError::Failed(format!($($arg)*)) };
}

/// A resource agent. Each method is one action the engine calls; the engine serialises them per
/// resource and bounds each by its timeout. See `wit/agent.wit` for the full contract.
#[cfg(feature = "resource-agent")]
pub trait Agent {
    /// Name, version, parameters, default timeouts. Pure: no host calls.
    fn metadata() -> AgentMetadata;

    /// Check parameters (required ones are already checked by the engine) and installation.
    fn validate(_ctx: &Context) -> Result<(), AgentError> {
        Ok(())
    }

    /// Idempotent: a running resource stays running and this returns Ok.
    fn start(ctx: &Context) -> Result<(), AgentError>;

    /// Must leave the resource stopped; escalate inside. Ok when already stopped.
    fn stop(ctx: &Context) -> Result<(), AgentError>;

    /// Report health without changing anything.
    fn monitor(ctx: &Context) -> Result<Health, AgentError>;

    /// Local recovery; by default stop then start.
    fn recover(ctx: &Context) -> Result<(), AgentError> {
        Self::stop(ctx)?;
        Self::start(ctx)
    }
}

#[cfg(feature = "resource-agent")]
impl AgentMetadata {
    /// Metadata with no parameters, 60 s start/stop/recover, 20 s monitor and validate timeouts,
    /// a 10 s monitor interval and local recovery enabled. Adjust the fields as needed.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            parameters: Vec::new(),
            timeouts: Timeouts { start_ms: 60_000, stop_ms: 60_000, monitor_ms: 20_000, recover_ms: 120_000, validate_ms: 20_000 },
            monitor_interval_ms: 10_000,
            local_recovery: true,
        }
    }

    /// Add a parameter (builder style).
    pub fn param(mut self, p: Param) -> Self {
        self.parameters.push(p.into());
        self
    }
}

/// Register a type implementing [`Agent`] as this component's export.
#[cfg(feature = "resource-agent")]
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            use $crate::bindings::exports::warden::agent::agent as __w;
            struct __WardenExport;
            impl __w::Guest for __WardenExport {
                fn metadata() -> __w::AgentMetadata {
                    <$agent as $crate::Agent>::metadata()
                }
                fn validate(ctx: $crate::Context) -> Result<(), $crate::AgentError> {
                    <$agent as $crate::Agent>::validate(&ctx)
                }
                fn start(ctx: $crate::Context) -> Result<(), $crate::AgentError> {
                    <$agent as $crate::Agent>::start(&ctx)
                }
                fn stop(ctx: $crate::Context) -> Result<(), $crate::AgentError> {
                    <$agent as $crate::Agent>::stop(&ctx)
                }
                fn monitor(ctx: $crate::Context) -> Result<$crate::Health, $crate::AgentError> {
                    <$agent as $crate::Agent>::monitor(&ctx)
                }
                fn recover(ctx: $crate::Context) -> Result<(), $crate::AgentError> {
                    <$agent as $crate::Agent>::recover(&ctx)
                }
            }
            $crate::bindings::__export_resource_agent!(__WardenExport);
        };
    };
}

/// A fence agent: makes sure a lost node runs nothing.
#[cfg(feature = "fence-agent")]
pub trait FenceAgent {
    fn metadata() -> FenceMetadata;
    fn validate(_ctx: &Context) -> Result<(), AgentError> {
        Ok(())
    }
    /// Ok only when `target` is confirmed off.
    fn fence(ctx: &Context, target: &str) -> Result<(), AgentError>;
    fn status(ctx: &Context, target: &str) -> Result<PowerState, AgentError>;
}

/// Register a type implementing [`FenceAgent`] as this component's export.
#[cfg(feature = "fence-agent")]
#[macro_export]
macro_rules! export_fence_agent {
    ($agent:ty) => {
        const _: () = {
            use $crate::fence_bindings::exports::warden::agent::fence as __w;
            struct __WardenExport;
            impl __w::Guest for __WardenExport {
                fn metadata() -> __w::FenceMetadata {
                    <$agent as $crate::FenceAgent>::metadata()
                }
                fn validate(ctx: $crate::Context) -> Result<(), $crate::AgentError> {
                    <$agent as $crate::FenceAgent>::validate(&ctx)
                }
                fn fence(ctx: $crate::Context, target: String) -> Result<(), $crate::AgentError> {
                    <$agent as $crate::FenceAgent>::fence(&ctx, &target)
                }
                fn status(ctx: $crate::Context, target: String) -> Result<__w::PowerState, $crate::AgentError> {
                    <$agent as $crate::FenceAgent>::status(&ctx, &target)
                }
            }
            $crate::fence_bindings::__export_fence_agent!(__WardenExport);
        };
    };
}
