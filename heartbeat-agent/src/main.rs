//! `heartbeat-agent`: the daemon and its command-line tools.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use heartbeat_agent::{
    config::ClusterConfig,
    control::{self, Request},
    daemon, keyfile,
    status::StatusReport,
};

/// XDP-accelerated heartbeats for high-availability clusters.
///
/// The agent attaches an XDP program to every heartbeat interface (it answers
/// peers' heartbeats in the kernel and detects silence with in-kernel timers),
/// sends heartbeats from a real-time thread, tracks link and node state, and
/// exports status, an event journal and Prometheus metrics.
#[derive(Parser)]
#[command(name = "heartbeat-agent", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (needs root, or CAP_BPF + CAP_NET_ADMIN). Stops on SIGINT/SIGTERM, detaching XDP.
    Run {
        /// The cluster configuration file (TOML, identical on every node).
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name in the configuration (default: the hostname).
        #[arg(long, short)]
        node: Option<String>,
    },
    /// Validate a configuration file without touching the system's network
    /// (with --node, also checks that node's interfaces and the key file).
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// Also check this node's interfaces and key file.
        #[arg(long, short)]
        node: Option<String>,
    },
    /// Generate a new 128-bit cluster key file (mode 0600). Copy it to every node.
    Keygen {
        /// Where to write the key (refuses to overwrite). Default: print to stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Show the cluster as this node's agent sees it.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Run a quorum server: breaks the tie when a cluster splits into two
    /// halves of exactly half the votes (grants one half at a time, as a
    /// lease). Authenticated with the cluster key; SIGHUP re-reads the key
    /// file. Stops on SIGINT/SIGTERM.
    QuorumServer {
        /// UDP address to listen on, e.g. 0.0.0.0:6406.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The cluster key file (the same as the nodes').
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Print the event journal (link/node up/down, agent events) as JSON lines.
    Events {
        #[command(flatten)]
        target: Target,
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
    },
}

/// Which agent to ask.
#[derive(Args)]
struct Target {
    /// The agent's control socket.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Read the control socket path from this configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// With --config: the node whose agent to ask (expands `{node}` in the
    /// socket path; default: the hostname).
    #[arg(long, short, requires = "config")]
    node: Option<String>,
}

impl Target {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            let cfg = ClusterConfig::load(c)?;
            let node = cfg.local_node(self.node.as_deref())?;
            return Ok(daemon::expand_node(&cfg.control.socket, &node.name));
        }
        Ok(PathBuf::from("/run/heartbeat/control.sock"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config, node } => runtime()?.block_on(daemon::run(&config, node.as_deref())),
        Command::CheckConfig { file, node } => check_config(&file, node.as_deref()),
        Command::QuorumServer { listen, key_file } => {
            runtime()?.block_on(quorum_server(listen, &key_file))
        }
        Command::Keygen { out } => match out {
            Some(path) => {
                keyfile::write_new(&path)?;
                println!(
                    "wrote a new cluster key to {} (mode 0600); copy it to every node",
                    path.display()
                );
                Ok(())
            }
            None => {
                print!("{}", keyfile::format(&keyfile::generate()?));
                Ok(())
            }
        },
        Command::Status { target, json } => {
            let socket = target.socket()?;
            runtime()?.block_on(async {
                let mut out = None;
                control::request(&socket, &Request::Status, |line| {
                    out = Some(line.to_owned());
                    Ok(())
                })
                .await?;
                let Some(line) = out else {
                    bail!("the agent closed the connection without an answer")
                };
                if json {
                    println!("{line}");
                } else {
                    let report: StatusReport =
                        serde_json::from_str(&line).context("status answer")?;
                    print!("{}", report.render());
                }
                Ok(())
            })
        }
        Command::Events { target, follow } => {
            let socket = target.socket()?;
            runtime()?.block_on(async {
                control::request(&socket, &Request::Events { follow }, |line| {
                    println!("{line}");
                    Ok(())
                })
                .await?;
                Ok(())
            })
        }
    }
}

fn check_config(file: &Path, node: Option<&str>) -> Result<()> {
    let cfg = ClusterConfig::load(file)?;
    if let Some(n) = node {
        let local = cfg.local_node(Some(n))?;
        cfg.check_system(local)?;
    }
    println!(
        "{}: OK (cluster {} id {}, {} nodes)",
        file.display(),
        cfg.cluster.name,
        cfg.cluster.id,
        cfg.nodes.len()
    );
    Ok(())
}

/// `quorum-server`: serves until SIGINT or SIGTERM.
async fn quorum_server(listen: std::net::SocketAddr, key_file: &Path) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let srv = heartbeat_agent::qserver::QuorumServer::from_key_file(listen, key_file).await?;
    tracing::info!(listen = %srv.local_addr()?, "quorum server listening");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    srv.serve(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await?;
    Ok(())
}
