//! Resource agent for JP1/Base on a logical host (`jp1-base`).
//! The logic is shared with the other JP1 agents in `jp1-common`; see README.md.
use jp1_common::Kind;
use warden_sdk::*;

struct Jp1Base;

impl Agent for Jp1Base {
    fn metadata() -> AgentMetadata {
        jp1_common::metadata(Kind::Base)
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::validate(Kind::Base, ctx)
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::start(Kind::Base, ctx)
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::stop(Kind::Base, ctx)
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        jp1_common::monitor(Kind::Base, ctx)
    }

    fn recover(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::recover(Kind::Base, ctx)
    }
}

export_agent!(Jp1Base);
