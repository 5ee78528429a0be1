//! Resource agent for JP1/AJS3 - Manager on a logical host (`jp1-ajs3-manager`).
//! The logic is shared with the other JP1 agents in `jp1-common`; see README.md.
use jp1_common::Kind;
use warden_sdk::*;

struct Jp1Ajs3Manager;

impl Agent for Jp1Ajs3Manager {
    fn metadata() -> AgentMetadata {
        jp1_common::metadata(Kind::AjsManager)
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::validate(Kind::AjsManager, ctx)
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::start(Kind::AjsManager, ctx)
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::stop(Kind::AjsManager, ctx)
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        jp1_common::monitor(Kind::AjsManager, ctx)
    }

    fn recover(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::recover(Kind::AjsManager, ctx)
    }
}

export_agent!(Jp1Ajs3Manager);
