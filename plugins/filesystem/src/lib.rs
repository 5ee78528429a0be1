//! filesystem (work in progress)
