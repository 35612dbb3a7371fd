//! `hagw`: the daemon and its command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hagw::config;
use hagw::control;

#[derive(Parser)]
#[command(
    name = "hagw",
    version,
    about = "Highly-available L3 gateways from the kernel's own forwarding and standard protocols"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (logs to stderr; RUST_LOG or --log sets the level).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value = "info")]
        log: String,
        /// Which node of the config this machine is (default: the hostname, else
        /// the node whose addresses are here).
        #[arg(long)]
        node: Option<String>,
    },
    /// Check a config file: exit 0 when valid, else print every problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Check it as node NAME (see `run --node`).
        #[arg(long)]
        node: Option<String>,
    },
    /// Ask the running daemon for its peers and routes.
    Status {
        #[arg(long)]
        json: bool,
        /// Control socket (default: [control] socket of --config, else /run/hagw/hagw.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The articles' topologies in network namespaces on this machine: the demo to start with.
    Lab(hagw_lab::LabArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Lab(args) => match hagw_lab::run(args, lab_status_text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hagw lab: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Check { config, node } => {
            match config::load(&config)
                .and_then(|c| hagw::policy_routing::check_live(&config, c))
                .and_then(|c| hagw::convergent::check_live(&config, c, node.as_deref()))
            {
                Ok(c) => {
                    match c
                        .node
                        .as_deref()
                        .filter(|_| !c.gateways.is_empty() || c.nat.is_some())
                    {
                        Some(n) => println!("{}: ok (node {n})", config.display()),
                        None => println!("{}: ok", config.display()),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run { config, log, node } => {
            init_tracing(&log);
            let cfg = match config::load(&config)
                .and_then(|c| hagw::policy_routing::check_live(&config, c))
                .and_then(|c| hagw::convergent::check_live(&config, c, node.as_deref()))
            {
                Ok(c) => c,
                Err(e) => {
                    // The same words as `hagw check`: nothing starts half-configured.
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime().and_then(|rt| rt.block_on(hagw::daemon::run(cfg, Some(config.clone()))))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("hagw: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status {
            json,
            socket,
            config,
        } => {
            let path = match (socket, config) {
                (Some(s), _) => s,
                (None, Some(c)) => match config::load(&c) {
                    Ok(cfg) => cfg.control.socket,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
                (None, None) => config::DEFAULT_SOCKET.into(),
            };
            let r = runtime().and_then(|rt| rt.block_on(control::request_status(&path)));
            match r {
                Ok(st) => {
                    if json {
                        match serde_json::to_string_pretty(&st) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("hagw: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    } else {
                        print!("{}", hagw::status_text(&st));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hagw: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `hagw status` of a lab node, for `hagw lab status` and the lab's
/// diagnostics: the daemon gets 3 s to answer.
fn lab_status_text(socket: &Path) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let st = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), control::request_status(socket))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {} within 3 s", socket.display()))?
    })?;
    Ok(hagw::status_text(&st))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journald gets
    // plain text an operator can grep.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
