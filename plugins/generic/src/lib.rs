//! generic (work in progress)
