//! Process-wide settings made through libc: the open-file limit and SIGPIPE.
//!
//! Raise the open-file limit at start: the daemon holds a socket per client, a pipe pair per
//! running program and files per agent call, and the default soft limit (1024) is what a
//! connection flood or a thousand resources run into first.

#![allow(unsafe_code)] // getrlimit(2)/setrlimit(2) through libc

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns (before, after).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// Restore SIGPIPE's default action (terminate), which Rust's runtime sets to "ignore": a CLI
/// whose output pipe closes should end, not panic in `println!`.
pub fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL at startup, before any thread that could
    // rely on it exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
