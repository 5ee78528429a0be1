//! jp1-base (work in progress)
