//! fence-exec (work in progress)
