//! ip (work in progress)
