//! `ledger FILE NODE EPOCH`: a service for the cluster tier's S1 checker. Until killed it appends
//! `NODE EPOCH PID MONOTONIC-NS` to FILE every 5 ms, each record in one `write(2)` to a file
//! opened with `O_APPEND` (so records of several writers never interleave). The monotonic clock
//! is the machine's, shared by every network namespace, so records of different members are
//! comparable: two writers whose records overlap in time ran at the same time.
#![allow(unsafe_code)] // clock_gettime through libc (std::time::Instant hides the clock's value)
use std::io::Write;
use std::time::Duration;

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, node, epoch] = &args[..] else {
        eprintln!("usage: ledger FILE NODE EPOCH");
        std::process::exit(2);
    };
    // An epoch that is not a number (the agent did not pass one) is a broken test setup.
    if node.is_empty() || epoch.parse::<u64>().is_err() {
        eprintln!("ledger: bad node `{node}` or epoch `{epoch}`");
        std::process::exit(2);
    }
    let mut f = match std::fs::OpenOptions::new().create(true).append(true).open(file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ledger: {file}: {e}");
            std::process::exit(1);
        }
    };
    let pid = std::process::id();
    loop {
        let record = format!("{node} {epoch} {pid} {}\n", monotonic_ns());
        // One write: a short write (disk full) ends the service rather than tearing a record.
        match f.write(record.as_bytes()) {
            Ok(n) if n == record.len() => {}
            other => {
                eprintln!("ledger: {file}: {other:?}");
                std::process::exit(1);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
