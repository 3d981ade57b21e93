//! The `usher-balancer` command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use usher_balancer::{Balancer, Options, config, summary};

/// Usher's L7 load balancer for learning platforms.
#[derive(Debug, Parser)]
#[command(name = "usher-balancer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic with a config file; reloads it on change and on SIGHUP,
    /// drains and exits on SIGTERM.
    Run {
        /// The config file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Log format; `auto` is JSON unless stderr is a terminal.
        #[arg(long, value_enum, default_value_t = LogFormat::Auto, env = "USHER_LOG_FORMAT")]
        log_format: LogFormat,
        /// How often to check the config and certificates for changes (`0s` turns it off).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        watch_interval: Duration,
    },
    /// Validate a config file, print a summary, and exit 0 (valid) or 1 (invalid).
    Check {
        /// The config file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("USHER_LOG").unwrap_or_else(|_| "info".into());
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                print!("{}", summary::render(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            log_format,
            watch_interval,
        } => {
            init_logging(log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(run(config, watch_interval))
        }
    }
}

async fn run(config: PathBuf, watch_interval: Duration) -> ExitCode {
    let options = Options {
        watch_interval: (!watch_interval.is_zero()).then_some(watch_interval),
        ..Default::default()
    };
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("error: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let balancer = match Balancer::start(&config, options).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot start");
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = balancer.reload();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    balancer.shutdown().await;
    ExitCode::SUCCESS
}
