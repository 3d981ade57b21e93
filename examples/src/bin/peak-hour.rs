//! `peak-hour`: the one-command demo. A school day compressed into about 90
//! seconds: the balancer, the autoscaler in local mode, simulated LMS pods
//! and goose learners, all on 127.0.0.1; a live line each second; a CSV, a
//! chart and a summary at the end. See [`usher_examples::peak_hour`].
//!
//! ```sh
//! cargo run --release -p usher-examples --bin peak-hour [-- --duration 90s --out DIR --compare --seed N]
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use usher_examples::{lms_sim, peak_hour};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "peak-hour",
    about = "A school day on one machine: balancer, autoscaler, simulated LMS pods, goose learners",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Internal: run one pod.
    #[command(subcommand)]
    pod: Option<Sub>,
    #[command(flatten)]
    demo: peak_hour::Options,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// One lms-sim pod (the autoscaler starts these; same options as `lms-sim`).
    #[command(hide = true)]
    Pod(lms_sim::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::Pod(args)) = cli.pod {
        return match lms_sim::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pod: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(peak_hour::run(cli.demo)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
