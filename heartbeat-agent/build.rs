//! Builds the XDP program (heartbeat-ebpf) for `bpfel-unknown-none` with the
//! nightly toolchain and bpf-linker, so the agent embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};
// A build dependency only so that cargo rebuilds the agent when the XDP
// program changes.
use heartbeat_ebpf as _;

fn main() -> anyhow::Result<()> {
    let meta =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["locate-project", "--workspace", "--message-format=plain"])
            .output()
            .context("cargo locate-project")?;
    let root = String::from_utf8(meta.stdout)?;
    let root = std::path::Path::new(root.trim())
        .parent()
        .ok_or_else(|| anyhow!("workspace root"))?
        .join("heartbeat-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let ebpf = Package {
        name: "heartbeat-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
