//! jp1-ajs3-agent (work in progress)
