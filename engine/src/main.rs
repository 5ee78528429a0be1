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
    // A multi-thread runtime for the daemon too: a single runtime thread was measured to save
    // ~15 % of the engine's CPU at 1000 resources, but it serialises every fork of the (large)
    // engine process, and starting 1000 resources at once then overran start timeouts.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(warden::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    };
    // Do not wait for blocking threads: one may be stuck in the kernel for good (a FIFO, a hung
    // mount), and dropping the runtime would wait for it forever. The command is done; exit.
    runtime.shutdown_background();
    code
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
