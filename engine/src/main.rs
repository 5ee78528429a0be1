//! The `warden` binary: parse arguments, set up logging, run, and map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = warden::cli::Cli::parse();
    // A reader that goes away (`warden status --watch | head`) ends the command quietly, as for
    // any Unix tool; only the daemon, which writes to sockets clients may close, ignores SIGPIPE.
    if !cli.is_daemon() {
        warden::node::rlimit::default_sigpipe();
    }
    warden::cli::init_logging(&cli);
    // The daemon runs its loop and every resource's worker on one thread: they hand work to each
    // other constantly, and on one thread that costs no context switch (measured: roughly half
    // the engine's CPU at 1000 resources). Nothing on it blocks: filesystem and process work goes
    // to the blocking pool, and guest code yields every 50 ms.
    let runtime = if cli.is_daemon() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(warden::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, skipping causes that the message already includes (many of our
/// messages embed their cause for readability).
fn chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
