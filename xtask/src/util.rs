//! Small helpers shared by the xtask commands: progress lines, workspace
//! paths, and running external commands with useful errors.

use std::{
    fmt::Display,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

/// Prints one progress line, `==> [tag] message`, on stderr (stdout stays
/// clean for the output of `cargo xtask run`).
pub fn step(tag: &str, msg: impl Display) {
    eprintln!("==> [{tag}] {msg}");
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command (the same cargo that runs xtask) in the workspace root.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// `program arg arg ...` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with its output going straight to the terminal; fails unless
/// it exits with status 0.
pub fn run_streamed(cmd: &mut Command) -> anyhow::Result<()> {
    let desc = describe(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{desc}`"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its output; on failure the error carries
/// the command's stderr (and the tail of stdout).
pub fn run_captured(cmd: &mut Command) -> anyhow::Result<Output> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{desc}`"))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!("`{desc}` failed ({}):\n{tail}", out.status);
    }
    Ok(out)
}

/// Runs `cmd` quietly and reports only whether it exited with status 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when running as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root (network namespaces, nftables, XDP): run it as root, \
             e.g. `sudo -E env PATH=$PATH cargo xtask ...`"
        );
    }
    Ok(())
}
