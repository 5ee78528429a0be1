//! jp1-ajs3-manager (work in progress)
