//! The `usher-autoscaler` command.

use std::io::{BufReader, stdin, stdout};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use usher_autoscaler::{filter, policy};

/// Usher's autoscaler: scales LMS Deployments from the balancer's metrics.
#[derive(Debug, Parser)]
#[command(name = "usher-autoscaler", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate ScalingPolicy files; exit 1 naming the file and field on error.
    Check {
        /// Policy files (YAML).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Read JSON lines of observations on stdin and write one JSON decision
    /// per line on stdout, exactly as the controller would decide.
    Decide {
        /// The policy file.
        #[arg(short, long, value_name = "FILE")]
        policy: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { files } => {
            let mut ok = true;
            for file in files {
                match policy::load(&file) {
                    Ok(p) => println!(
                        "{}: OK: {} scales Deployment {} from pool `{}`, {} to {} replicas, {} schedule(s)",
                        file.display(),
                        p.name,
                        p.target_ref.name,
                        p.pool,
                        p.min_replicas,
                        p.max_replicas,
                        p.schedules.len()
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Decide { policy: path } => {
            let policy = match policy::load(&path) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match filter::run(&policy, BufReader::new(stdin().lock()), stdout().lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
