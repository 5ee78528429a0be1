//! Resource agent for JP1/AJS3 - Agent on a logical host (`jp1-ajs3-agent`).
//! The logic is shared with the other JP1 agents in `jp1-common`; see README.md.
use jp1_common::Kind;
use warden_sdk::*;

struct Jp1Ajs3Agent;

impl Agent for Jp1Ajs3Agent {
    fn metadata() -> AgentMetadata {
        jp1_common::metadata(Kind::AjsAgent)
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::validate(Kind::AjsAgent, ctx)
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::start(Kind::AjsAgent, ctx)
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::stop(Kind::AjsAgent, ctx)
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        jp1_common::monitor(Kind::AjsAgent, ctx)
    }

    fn recover(ctx: &Context) -> Result<(), AgentError> {
        jp1_common::recover(Kind::AjsAgent, ctx)
    }
}

export_agent!(Jp1Ajs3Agent);
