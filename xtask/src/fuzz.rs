//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (nightly,
//! libFuzzer, AddressSanitizer) from their committed seed corpora.
//!
//! - `cargo xtask fuzz --list` lists the targets, and the pending ones (a
//!   commented line in the `bin` list of `fuzz/Cargo.toml`, waiting for its
//!   decoder to be merged);
//! - `cargo xtask fuzz TARGET --time N` runs one target for N seconds;
//!   `--all` runs every target as `cargo xtask test` does;
//! - `cargo xtask test` calls [`run_all`] after `cargo test`: every target
//!   for a share of about 30 s.
//!
//! Each target reads its seeds from `fuzz/seeds/TARGET/` (committed, never
//! written) and keeps what it learns in `fuzz/corpus/TARGET/` (ignored by
//! git). A crash, a timeout or an out-of-memory input fails the run; the
//! input is saved under `fuzz/artifacts/TARGET/` and its path printed. A
//! crash found this way becomes a unit test in the crate it belongs to.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{self, step};

/// Total fuzzing time of `cargo xtask test`, shared by the targets.
pub const TEST_BUDGET_SECS: u64 = 30;
/// No target runs for less than this in `cargo xtask test`.
const MIN_SECS_PER_TARGET: u64 = 5;
/// One input taking longer than this is a hang (a failure).
const INPUT_TIMEOUT_SECS: u64 = 10;

#[derive(Args)]
pub struct FuzzArgs {
    /// The target to run (see --list).
    #[arg(required_unless_present_any = ["list", "write_seeds", "all"])]
    target: Option<String>,
    /// How long to run it, in seconds.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// List the targets (and those pending) and exit.
    #[arg(long)]
    list: bool,
    /// Rewrite the committed seed corpora in fuzz/seeds/ and exit.
    #[arg(long, conflicts_with = "list")]
    write_seeds: bool,
    /// Run every target for its share of about 30 s, as `cargo xtask test` does.
    #[arg(long, conflicts_with_all = ["list", "write_seeds", "target"])]
    all: bool,
}

/// The fuzz project's directory.
pub fn fuzz_dir() -> PathBuf {
    util::workspace_root().join("fuzz")
}

/// Targets of the fuzz project: (enabled, pending), read from the `bin`
/// list of `fuzz/Cargo.toml` (a pending target is a commented entry).
pub fn targets() -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    Ok(parse_targets(&text))
}

fn parse_targets(manifest: &str) -> (Vec<String>, Vec<String>) {
    let mut enabled = Vec::new();
    let mut pending = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        let (list, entry) = match line.strip_prefix('#') {
            Some(rest) => (&mut pending, rest.trim()),
            None => (&mut enabled, line),
        };
        let Some(rest) = entry.strip_prefix("{ name = \"") else {
            continue;
        };
        if let Some((name, _)) = rest.split_once('"') {
            list.push(name.to_owned());
        }
    }
    (enabled, pending)
}

/// `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    if args.write_seeds {
        return write_seeds();
    }
    if args.all {
        return run_all();
    }
    let (enabled, pending) = targets()?;
    if args.list {
        for t in &enabled {
            println!("{t}");
        }
        for t in &pending {
            println!("{t} (pending: enable it in fuzz/Cargo.toml once its decoder is merged)");
        }
        return Ok(());
    }
    let target = args.target.as_deref().unwrap_or_default();
    if !enabled.iter().any(|t| t == target) {
        let why = if pending.iter().any(|t| t == target) {
            "is pending (its line in fuzz/Cargo.toml is commented out)"
        } else {
            "is not a fuzz target"
        };
        bail!("`{target}` {why}; targets: {}", enabled.join(", "));
    }
    if args.time == 0 {
        bail!("--time must be at least 1 second");
    }
    build()?;
    let outcome = run_target(target, args.time)?;
    outcome.report(target)
}

/// `cargo xtask test`'s fuzz step: every target for its share of
/// [`TEST_BUDGET_SECS`]; fails on the first crash, after running all.
pub fn run_all() -> anyhow::Result<()> {
    let (enabled, pending) = targets()?;
    if enabled.is_empty() {
        bail!("no fuzz targets in fuzz/Cargo.toml");
    }
    build()?;
    let each = (TEST_BUDGET_SECS / enabled.len() as u64).max(MIN_SECS_PER_TARGET);
    let mut failed = Vec::new();
    for t in &enabled {
        let outcome = run_target(t, each)?;
        if let Err(e) = outcome.report(t) {
            failed.push(format!("{e:#}"));
        }
    }
    for t in &pending {
        step("fuzz", format!("target {t}: pending (not built yet)"));
    }
    if !failed.is_empty() {
        bail!("fuzzing found problems:\n{}", failed.join("\n"));
    }
    Ok(())
}

/// `cargo +nightly fuzz ...` in the workspace root, with the outer
/// cargo's variables removed so the nightly toolchain is used throughout.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(util::workspace_root());
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Builds every target (sanitizer build, in `fuzz/target`).
fn build() -> anyhow::Result<()> {
    step(
        "fuzz",
        "building the fuzz targets (nightly, AddressSanitizer; the first build takes minutes)",
    );
    util::run_captured(cargo_fuzz().args(["build", "--fuzz-dir", "fuzz"]))
        .context("building the fuzz targets")?;
    Ok(())
}

/// How a target's run ended.
struct Outcome {
    runs: Option<u64>,
    /// Inputs libFuzzer saved as crashing (crash, timeout, oom, leak).
    artifacts: Vec<PathBuf>,
    success: bool,
    secs: f64,
    log: PathBuf,
    tail: Vec<String>,
}

impl Outcome {
    fn report(&self, target: &str) -> anyhow::Result<()> {
        let runs = self
            .runs
            .map_or_else(|| "? runs".to_owned(), |r| format!("{r} runs"));
        if self.success && self.artifacts.is_empty() {
            step(
                "fuzz",
                format!("target {target}: {runs}, 0 crashes ({:.0} s)", self.secs),
            );
            return Ok(());
        }
        for line in &self.tail {
            eprintln!("    {line}");
        }
        if self.artifacts.is_empty() {
            step(
                "fuzz",
                format!(
                    "target {target}: FAILED without a saved input after {runs}; log: {}",
                    self.log.display()
                ),
            );
            bail!("fuzz target {target} failed; log: {}", self.log.display());
        }
        let list: Vec<String> = self
            .artifacts
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        step(
            "fuzz",
            format!(
                "target {target}: {runs}, {} crash(es): {}",
                list.len(),
                list.join(" ")
            ),
        );
        step(
            "fuzz",
            format!(
                "reproduce with: cargo +nightly fuzz run {target} {}",
                list[0]
            ),
        );
        bail!(
            "fuzz target {target} crashed; input saved at {}",
            list.join(", ")
        )
    }
}

/// Runs `target` for `secs` seconds from its seeds; libFuzzer's output goes
/// to `fuzz/logs/TARGET.log`.
fn run_target(target: &str, secs: u64) -> anyhow::Result<Outcome> {
    let dir = fuzz_dir();
    let seeds = dir.join("seeds").join(target);
    let corpus = dir.join("corpus").join(target);
    let logs = dir.join("logs");
    for d in [&corpus, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if !seeds.is_dir() {
        bail!("no seed corpus at {}", seeds.display());
    }
    let log = logs.join(format!("{target}.log"));
    step("fuzz", format!("target {target}: running for {secs} s"));
    let mut cmd = cargo_fuzz();
    cmd.args(["run", "--fuzz-dir", "fuzz", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1");
    let desc = util::describe(&cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{desc}`"))?;
    let mut text = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.with_context(|| format!("reading output of `{desc}`"))?;
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{desc}`"))?;
    fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
    let root = util::workspace_root();
    let (runs, artifacts) = scan(&text);
    let artifacts = artifacts
        .into_iter()
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .collect();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let tail = lines[lines.len().saturating_sub(25)..].to_vec();
    Ok(Outcome {
        runs,
        artifacts,
        success: status.success(),
        secs: start.elapsed().as_secs_f64(),
        log,
        tail,
    })
}

/// From libFuzzer's output: the number of runs (`Done N runs`, or the
/// final stats) and the inputs it saved (`Test unit written to PATH`).
fn scan(text: &str) -> (Option<u64>, Vec<PathBuf>) {
    let mut runs = None;
    let mut artifacts = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Done ")
            && let Some(n) = rest.split_whitespace().next()
            && let Ok(n) = n.parse()
        {
            runs = Some(n);
        }
        if let Some(n) = line
            .strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
        {
            runs = Some(n);
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            artifacts.push(Path::new(path.trim()).to_owned());
        }
    }
    (runs, artifacts)
}

/// The seed corpora: a few valid and near-valid inputs per target, made
/// with the project's own builders (`cargo xtask fuzz --write-seeds`).
fn seeds() -> anyhow::Result<Vec<(&'static str, String, Vec<u8>)>> {
    use heartbeat_common::{
        frame::{self, Addrs, FrameSpec, MAX_FRAME},
        siphash::SipKey,
        wire::{DEFAULT_PORT, HEADER_LEN, Header, KIND_MEMBERSHIP, MAGIC, VERSION},
    };
    let key = SipKey {
        k0: 0x0706_0504_0302_0100,
        k1: 0x0f0e_0d0c_0b0a_0908,
    };
    let mut out = Vec::new();

    let mut request = Header::request(7, 1, 2, 0);
    request.set_sequence((1_790_000_000u64 << 32) | 1);
    request.set_tx_timestamp_ns(1_000_000);
    request.set_generation(1_790_000_000);
    request.node_state = 2;
    request.seal(key);
    let mut reply = request;
    reply.make_reply();
    reply.set_rx_timestamp_ns(2_000_000);
    reply.seal(key);
    let mut bad_version = request;
    bad_version.version = 2;
    out.push(("header", "request".into(), request.as_bytes().to_vec()));
    out.push(("header", "reply".into(), reply.as_bytes().to_vec()));
    out.push((
        "header",
        "bad-version".into(),
        bad_version.as_bytes().to_vec(),
    ));
    out.push((
        "header",
        "short".into(),
        request.as_bytes()[..HEADER_LEN - 1].to_vec(),
    ));

    let v4 = Addrs::V4 {
        src: [10, 0, 0, 1],
        dst: [10, 0, 0, 2],
    };
    let v6 = Addrs::V6 {
        src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    };
    let mut membership = vec![0u8; 40];
    membership[..4].copy_from_slice(&MAGIC);
    membership[4] = VERSION;
    membership[5] = KIND_MEMBERSHIP;
    /// Name, addresses, VLAN tag, destination port, payload.
    type Seed<'a> = (&'a str, Addrs, Option<u16>, u16, &'a [u8]);
    let frames: [Seed<'_>; 6] = [
        ("v4-request", v4, None, DEFAULT_PORT, request.as_bytes()),
        ("v6-request", v6, None, DEFAULT_PORT, request.as_bytes()),
        (
            "v4-vlan-reply",
            v4,
            Some(100),
            DEFAULT_PORT,
            reply.as_bytes(),
        ),
        (
            "v6-vlan-reply",
            v6,
            Some(4094),
            DEFAULT_PORT,
            reply.as_bytes(),
        ),
        ("v4-membership", v4, None, DEFAULT_PORT, &membership),
        ("v4-other-port", v4, None, 53, request.as_bytes()),
    ];
    for (name, addrs, vlan, dst_port, payload) in frames {
        let mut buf = [0u8; MAX_FRAME + 64];
        let spec = FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            addrs,
            src_port: DEFAULT_PORT,
            dst_port,
            payload,
        };
        let n = frame::build(&spec, &mut buf).context("building a seed frame")?;
        out.push(("frame", name.into(), buf[..n].to_vec()));
    }

    let examples = util::workspace_root().join("examples");
    let mut names: Vec<PathBuf> = fs::read_dir(&examples)
        .with_context(|| format!("reading {}", examples.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    for p in names {
        let text = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let name = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push(("config", name, text));
    }
    out.push((
        "config",
        "minimal".into(),
        b"[cluster]\nname = \"c\"\nid = 1\nkey_file = \"k\"\n\n\
          [[node]]\nid = 1\nname = \"a\"\n  [[node.link]]\n  id = 0\n  interface = \"eth0\"\n  address = \"10.0.0.1\"\n\n\
          [[node]]\nid = 2\nname = \"b\"\n  [[node.link]]\n  id = 0\n  interface = \"eth0\"\n  address = \"10.0.0.2\"\n"
            .to_vec(),
    ));

    // Membership messages as the target takes them: without the MAC (it
    // seals every input itself).
    {
        use heartbeat_cluster::{
            ids::{Epoch, NodeId, NodeSet},
            wire::{self, Ack, Header as MsgHeader, Join, Leave, MAC_LEN, Message, ReachEntry},
        };
        let members = NodeSet::from_bits(0b110);
        let header = MsgHeader {
            cluster_id: 7,
            sender: NodeId(1),
            incarnation: 1_790_000_000,
            seq: 5,
        };
        let join = Join {
            max_epoch: Epoch(3),
            promised: Epoch(3),
            view_epoch: Epoch(3),
            view_members: members,
            flags: wire::join_flags::MAY_FORM,
            expected: members,
            proposal: members,
            reach: vec![ReachEntry {
                node: NodeId(2),
                incarnation: 9,
                version: 4,
                reach: members,
            }],
        };
        let msgs = [
            ("join", Message::Join(join)),
            (
                "ack",
                Message::Ack(Ack {
                    epoch: Epoch(4),
                    members,
                }),
            ),
            (
                "leave",
                Message::Leave(Leave {
                    epoch: Epoch(4),
                    version: 5,
                }),
            ),
        ];
        for (name, msg) in msgs {
            let mut bytes = wire::encode(&header, &msg, key);
            bytes.truncate(bytes.len() - MAC_LEN);
            out.push(("membership", name.into(), bytes));
        }
    }

    // Serial line bytes: frames as they go on the line (the target's key,
    // cluster 7, nodes 1 and 2), with noise between them.
    {
        use heartbeat_cluster::{
            NodeId,
            serial::{Encoder, Kind, NetworkView, Status, TEST_KEY},
        };
        let status = Status {
            epoch: heartbeat_cluster::Epoch(3),
            node_state: 0x81,
            flags: 0,
            packages: 0b1,
            view: NetworkView {
                links: 0b11,
                targets: 0,
            },
        };
        let mut e = Encoder::new(7, NodeId(1), 5);
        let hb = e
            .encode(Kind::Heartbeat, &status, &[], TEST_KEY)
            .context("encoding a serial seed")?;
        let m = e
            .encode(Kind::Membership, &status, &out[out.len() - 1].2, TEST_KEY)
            .context("encoding a serial seed")?;
        let mut noisy = vec![0x55, 0xaa, 0x01];
        noisy.extend_from_slice(&hb);
        noisy.extend_from_slice(&hb[..hb.len() / 2]);
        noisy.extend_from_slice(&m);
        out.push(("serial", "heartbeat".into(), hb.clone()));
        out.push(("serial", "membership".into(), m));
        out.push(("serial", "noisy".into(), noisy));
    }

    for (name, line) in [
        ("status", "{\"command\":\"status\"}\n"),
        ("events", "{\"command\":\"events\"}\n"),
        (
            "events-follow",
            "{\"command\":\"events\",\"follow\":true}\n",
        ),
        ("reload", "{\"command\":\"reload\"}\n"),
        ("node-halt", "{\"command\":\"node_halt\",\"node\":\"a\"}\n"),
        ("unknown-command", "{\"command\":\"halt\",\"node\":\"a\"}\n"),
        (
            "unknown-field",
            "{\"command\":\"status\",\"x\":[1,2.5e3,null]}\n",
        ),
    ] {
        out.push(("control", name.into(), line.as_bytes().to_vec()));
    }
    Ok(out)
}

/// `--write-seeds`: rewrites fuzz/seeds/TARGET/NAME for every seed.
fn write_seeds() -> anyhow::Result<()> {
    let root = fuzz_dir().join("seeds");
    for (target, name, bytes) in seeds()? {
        let dir = root.join(target);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(&name);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    step("fuzz", format!("seeds written to {}", root.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_pending_come_from_the_bin_list() {
        let manifest = r#"
bin = [
  { name = "header", path = "fuzz_targets/header.rs", test = false },
  { name = "frame", path = "fuzz_targets/frame.rs", test = false },
# { name = "membership", path = "fuzz_targets/membership.rs", test = false },
]
[dependencies]
name = "x"
"#;
        let (enabled, pending) = parse_targets(manifest);
        assert_eq!(enabled, ["header", "frame"]);
        assert_eq!(pending, ["membership"]);
    }

    #[test]
    fn the_real_manifest_has_targets() {
        let (enabled, _) = targets().unwrap();
        for t in ["header", "frame", "config", "control"] {
            assert!(enabled.iter().any(|e| e == t), "{t} missing: {enabled:?}");
            assert!(
                fuzz_dir().join("seeds").join(t).is_dir(),
                "no seeds for {t}"
            );
        }
    }

    #[test]
    fn committed_seeds_are_up_to_date() {
        // Copies of examples/*.toml may lag behind the examples: harmless.
        let generated = seeds()
            .unwrap()
            .into_iter()
            .filter(|(target, name, _)| *target != "config" || name == "minimal");
        for (target, name, bytes) in generated {
            let path = fuzz_dir().join("seeds").join(target).join(&name);
            let on_disk = fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{} is stale: run `cargo xtask fuzz --write-seeds`",
                path.display()
            );
        }
    }

    #[test]
    fn libfuzzer_output_is_scanned() {
        let out = "#1024 pulse cov: 10\n\
            ==123== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='/w/fuzz/artifacts/frame/'; Test unit written to /w/fuzz/artifacts/frame/crash-abc\n\
            Done 5000 runs in 3 second(s)\n\
            stat::number_of_executed_units: 5001\n";
        let (runs, artifacts) = scan(out);
        assert_eq!(runs, Some(5001));
        assert_eq!(
            artifacts,
            [PathBuf::from("/w/fuzz/artifacts/frame/crash-abc")]
        );
    }
}
