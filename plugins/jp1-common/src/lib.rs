//! jp1-common (work in progress)
