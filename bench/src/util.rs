//! Small helpers of the benchmark binary: progress lines, workspace paths,
//! cargo, root check and which Debian packages are installed.

use std::{
    collections::BTreeSet,
    fmt::Display,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

/// Prints one progress line, `==> [bench] message`, on stderr.
pub fn step(msg: impl Display) {
    eprintln!("==> [bench] {msg}");
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command in the workspace root.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{what} needs root (network namespaces, nftables, XDP, BPF statistics): run it as root"
        );
    }
    Ok(())
}

/// The packages among `pkgs` that dpkg does not list as installed
/// (`cargo xtask bench` installs them before it starts the benchmark).
pub fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(pkgs)
        .stdin(std::process::Stdio::null())
        .output();
    let installed: BTreeSet<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.ends_with(" install ok installed"))
                .filter_map(|l| l.split_whitespace().next())
                .map(|p| p.split(':').next().unwrap_or(p).to_owned())
                .collect()
        })
        .unwrap_or_default();
    pkgs.iter()
        .filter(|p| !installed.contains(**p))
        .map(|p| (*p).to_owned())
        .collect()
}
