//! pivot-agent: the per-host daemon that reads and drives ASIC miners and GPUs for the controller.

/// `println!` that ends the program quietly when whoever reads its output has gone
/// (`pivot-agent … | head`), where `std::println!` would panic on the closed pipe. Exits 141, as a
/// process killed by SIGPIPE would.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(&e);
        }
    }};
}

/// Where a write to stdout that failed ends the program.
#[doc(hidden)]
pub fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("pivot-agent: cannot write to standard output: {e}");
    std::process::exit(1);
}

pub mod config;
pub mod daemon;
pub mod gpu;
pub mod host;
pub mod inventory;
pub mod link;
pub mod metrics;
pub mod miner;
pub mod poll;
pub mod reconcile;
pub mod state;
pub mod workload;
