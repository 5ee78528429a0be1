//! fence-test (work in progress)
