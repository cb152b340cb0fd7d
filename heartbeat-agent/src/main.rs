//! `heartbeat-agent`: the daemon and its command-line tools.
#![allow(
    unused_crate_dependencies,
    reason = "the package's dependencies are the library's; the binary uses the library"
)]

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use heartbeat_agent::{
    config::ClusterConfig,
    control::{self, Done, Request},
    daemon, keyfile,
    status::{self, StatusReport},
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
    ///
    /// SIGUSR2 (or `heartbeat-agent restart`) announces a restart instead:
    /// the agent exits with status 75 leaving XDP attached and answering
    /// (pinned in bpffs) for `cluster.restart_window`; the next `run`
    /// adopts it if the window is still open.
    Run {
        /// The cluster configuration file (TOML, identical on every node).
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name in the configuration (default: the hostname).
        #[arg(long, short)]
        node: Option<String>,
        #[command(flatten)]
        pins: Pins,
    },
    /// Announce a restart of the running agent (an upgrade without
    /// failover): the agent exits, leaving its XDP program attached and
    /// answering for `cluster.restart_window`; peers show the node as
    /// `restarting`. Start the agent again within the window (systemd does,
    /// on exit status 75) and it adopts the program; if nobody does, the
    /// node fails when the window runs out. Waits until the agent has exited.
    Restart {
        #[command(flatten)]
        target: Target,
    },
    /// Detach the XDP program an announced restart (or a killed agent of a
    /// node that may run packages: the kernel fence) left pinned for this
    /// node, and remove its pins; refused while the node's agent runs.
    Detach {
        /// The cluster configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name in the configuration (default: the hostname).
        #[arg(long, short)]
        node: Option<String>,
        #[command(flatten)]
        pins: Pins,
    },
    /// Validate a configuration file without changing anything on the system
    /// (with --node, also checks that node's interfaces, key file, ports and paths).
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// Also check this node's interfaces and key file, that the metrics
        /// port can be bound, and that the control socket, events_file and
        /// state_file paths can be used (nothing is created or deleted).
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
    /// Print the event journal (link/node up/down, membership, agent events) as JSON lines.
    Events {
        #[command(flatten)]
        target: Target,
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
    },
    /// Re-read the configuration and key file and apply what can change
    /// live (keys, timeouts, other nodes), without detaching XDP; refuses,
    /// naming the key, what needs a restart. SIGHUP does the same.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Cluster-wide operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// This node's membership.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Packages: move, start, stop, enable, disable (carried out by the
    /// cluster's coordinator; any node's agent takes them).
    Package {
        #[command(subcommand)]
        command: PackageCommand,
    },
}

#[derive(Subcommand)]
enum PackageCommand {
    /// Move a package to a node; it stays there while that node may run
    /// it, whatever its failback policy.
    Move {
        #[command(flatten)]
        target: Target,
        /// The package.
        #[arg(value_name = "PACKAGE")]
        name: String,
        /// The node to run it.
        #[arg(id = "to_node", value_name = "NODE")]
        node: String,
    },
    /// Let a stopped package run again (also clears its bans and errors).
    Start {
        #[command(flatten)]
        target: Target,
        /// The package.
        name: String,
    },
    /// Stop a package everywhere (until `package start`).
    Stop {
        #[command(flatten)]
        target: Target,
        /// The package.
        name: String,
    },
    /// Let a package run on a node again (no node: everywhere).
    Enable {
        #[command(flatten)]
        target: Target,
        /// The package.
        #[arg(value_name = "PACKAGE")]
        name: String,
        /// The node.
        #[arg(id = "on_node", value_name = "NODE")]
        node: Option<String>,
    },
    /// Keep a package off a node (no node: stop it everywhere).
    Disable {
        #[command(flatten)]
        target: Target,
        /// The package.
        #[arg(value_name = "PACKAGE")]
        name: String,
        /// The node.
        #[arg(id = "on_node", value_name = "NODE")]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Form the cluster now: with `auto_start = false`, or to stop waiting
    /// `auto_start_timeout` for nodes that are not coming.
    Start {
        #[command(flatten)]
        target: Target,
    },
    /// Maintenance: no package moves (failover, failback, placement) until
    /// `cluster unfreeze`; monitors keep running and reporting.
    Freeze {
        #[command(flatten)]
        target: Target,
    },
    /// End maintenance.
    Unfreeze {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Leave the cluster gracefully: announced, so the other nodes reform at
    /// once instead of waiting for node_timeout. The agent keeps running
    /// (passive) until `node start`.
    Halt {
        #[command(flatten)]
        target: Target,
        /// The node to halt (default: the agent's own node; a node is
        /// halted through its own agent).
        name: Option<String>,
    },
    /// Join the cluster again after a halt.
    Start {
        #[command(flatten)]
        target: Target,
        /// The node to start (default: the agent's own node).
        name: Option<String>,
    },
}

/// Where the pins of an announced restart live.
#[derive(Args)]
struct Pins {
    /// The bpffs mount point (mounted there if nothing is). Pins go under
    /// DIR/heartbeat/<cluster id>-<node id>/. `ip netns exec` hides the
    /// host's /sys/fs/bpf: agents run that way need a bpffs mounted
    /// elsewhere, shared by the old and the new agent. Default:
    /// $HEARTBEAT_BPFFS, else /sys/fs/bpf.
    #[arg(long, value_name = "DIR")]
    bpffs: Option<PathBuf>,
}

impl Pins {
    fn options(&self) -> daemon::RunOptions {
        let bpffs = self
            .bpffs
            .clone()
            .or_else(|| std::env::var_os("HEARTBEAT_BPFFS").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(heartbeat_agent::pins::DEFAULT_BPFFS));
        daemon::RunOptions { bpffs }
    }
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
        Ok(daemon::Exit::Stopped) => ExitCode::SUCCESS,
        Ok(daemon::Exit::Restarting) => ExitCode::from(daemon::RESTART_EXIT_CODE),
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

fn real_main(cli: Cli) -> Result<daemon::Exit> {
    match cli.command {
        Command::Run { config, node, pins } => {
            Ok(runtime()?.block_on(daemon::run(&config, node.as_deref(), &pins.options()))?)
        }
        Command::Restart { target } => restart(&target).map(|()| daemon::Exit::Stopped),
        Command::Detach { config, node, pins } => {
            println!(
                "{}",
                daemon::detach(&config, node.as_deref(), &pins.options())?
            );
            Ok(daemon::Exit::Stopped)
        }
        other => other_command(other).map(|()| daemon::Exit::Stopped),
    }
}

fn other_command(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run { .. } | Command::Restart { .. } | Command::Detach { .. } => {
            unreachable!("handled by real_main")
        }
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
                control::request(&socket, &Request::Status {}, |line| {
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
                    print!("{}", status::render(&report));
                }
                Ok(())
            })
        }
        Command::Reload { target } => command(&target, &Request::Reload {}),
        Command::Cluster {
            command: ClusterCommand::Start { target },
        } => command(&target, &Request::ClusterStart {}),
        Command::Cluster {
            command: ClusterCommand::Freeze { target },
        } => command(&target, &Request::ClusterFreeze {}),
        Command::Cluster {
            command: ClusterCommand::Unfreeze { target },
        } => command(&target, &Request::ClusterUnfreeze {}),
        Command::Package { command: pc } => match pc {
            PackageCommand::Move { target, name, node } => {
                command(&target, &Request::PackageMove { name, node })
            }
            PackageCommand::Start { target, name } => {
                command(&target, &Request::PackageStart { name })
            }
            PackageCommand::Stop { target, name } => {
                command(&target, &Request::PackageStop { name })
            }
            PackageCommand::Enable { target, name, node } => {
                command(&target, &Request::PackageEnable { name, node })
            }
            PackageCommand::Disable { target, name, node } => {
                command(&target, &Request::PackageDisable { name, node })
            }
        },
        Command::Node {
            command: NodeCommand::Halt { target, name },
        } => command(&target, &Request::NodeHalt { node: name }),
        Command::Node {
            command: NodeCommand::Start { target, name },
        } => command(&target, &Request::NodeStart { node: name }),
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

/// Asks the agent to restart, then waits (at most 30 s) until it has exited:
/// its control socket stops answering.
fn restart(target: &Target) -> Result<()> {
    command(target, &Request::Restart {})?;
    let socket = target.socket()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        if std::time::Instant::now() > deadline {
            bail!(
                "the agent announced the restart but still answers on {} after 30 s",
                socket.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Sends a command that changes something and prints what was done.
fn command(target: &Target, request: &Request) -> Result<()> {
    let socket = target.socket()?;
    runtime()?.block_on(async {
        let mut out = None;
        control::request(&socket, request, |line| {
            out = Some(line.to_owned());
            Ok(())
        })
        .await?;
        let Some(line) = out else {
            bail!("the agent closed the connection without an answer")
        };
        let done: Done = serde_json::from_str(&line).context("answer")?;
        println!("{}", done.done);
        Ok(())
    })
}

fn check_config(file: &Path, node: Option<&str>) -> Result<()> {
    let cfg = ClusterConfig::load(file)?;
    if let Some(n) = node {
        let local = cfg.local_node(Some(n))?;
        cfg.check_system(local)?;
        cfg.check_resources(local)?;
    }
    let q = &cfg.quorum;
    let options: Vec<&str> = [
        (q.two_node, "two_node"),
        (q.wait_for_all, "wait_for_all"),
        (q.last_man_standing, "last_man_standing"),
        (q.auto_tie_breaker, "auto_tie_breaker"),
        (q.quorum_server.is_some(), "quorum_server"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    println!(
        "{}: OK (cluster {} id {}, {} nodes, {} votes{}{})",
        file.display(),
        cfg.cluster.name,
        cfg.cluster.id,
        cfg.nodes.len(),
        cfg.total_votes(),
        if options.is_empty() { "" } else { "; quorum: " },
        options.join(", ")
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
