//! `cargo xtask setup`: makes a fresh Debian machine with only stable Rust
//! (via rustup) able to build and test the project. Each step checks first
//! and does nothing when its piece is present, so a second run takes about a
//! second:
//! 1. the nightly toolchain and its `rust-src` component (`-Z build-std=core`
//!    for the eBPF target);
//! 2. bpf-linker 0.13.0, built against the nightly's own libLLVM (prebuilt
//!    binaries cannot be downloaded here, and the LLVM versions must match);
//! 3. cargo-fuzz (the fuzz targets in `fuzz/`, run by `cargo xtask fuzz`
//!    and `cargo xtask test`);
//! 4. the Debian packages the tests use.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{self, step};

/// Debian packages every test run needs: `ip` (netns, veth), `nft` (silent
/// fault injection), `ethtool` (veth GRO/offloads), `sysctl`, `ping`,
/// `resource-agents` (the OCF agents `Dummy` and `IPaddr2` the package
/// runner's tests run unchanged).
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "ethtool",
    "procps",
    "iputils-ping",
    "resource-agents",
];

/// bpf-linker release the eBPF build is verified with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-fuzz release `cargo xtask fuzz` is verified with.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// LLVM majors bpf-linker 0.13.0 has a feature for.
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];

#[derive(Args)]
pub struct SetupArgs {
    /// Print what would be done (including the exact bpf-linker build
    /// commands, even if bpf-linker is already present) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `cargo xtask setup`.
pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    if args.dry_run {
        return dry_run();
    }
    ensure()?;
    step(
        "setup",
        format!("done in {:.1} s", start.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// Runs every setup step (each a no-op when its piece is present).
pub fn ensure() -> anyhow::Result<()> {
    check_kernel();
    ensure_rustup()?;
    ensure_nightly()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    ensure_packages(TEST_PACKAGES)
}

/// Warns (does not fail) on a kernel older than 6.0.
fn check_kernel() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let major: u32 = release
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0);
    if major < 6 {
        step(
            "setup",
            format!(
                "warning: kernel {} is older than 6.0; bpf_timer and netdev egress hooks may be missing",
                release.trim()
            ),
        );
    }
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn ensure_rustup() -> anyhow::Result<()> {
    if !util::succeeds(rustup().arg("--version")) {
        bail!(
            "rustup not found on PATH: this project needs Rust installed with rustup \
             (https://rustup.rs), which setup uses to add the nightly toolchain"
        );
    }
    Ok(())
}

fn nightly_installed() -> anyhow::Result<bool> {
    let out = util::run_captured(rustup().args(["toolchain", "list"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        // `nightly-<host>`, not a dated `nightly-2026-05-19-<host>`, which
        // `rustup run nightly` would not pick.
        .any(|l| {
            l.strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        }))
}

/// Facts about the installed nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    /// From `LLVM version: 22.1.4`.
    llvm_major: u32,
}

fn nightly_info() -> anyhow::Result<Nightly> {
    let out = util::run_captured(rustup().args(["run", "nightly", "rustc", "-vV"]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .with_context(|| format!("no `LLVM version:` line in `rustc +nightly -vV`:\n{text}"))?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version `{llvm}`"))?;
    let out = util::run_captured(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(Nightly {
        sysroot,
        llvm_major,
    })
}

fn rust_src_present(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

fn ensure_nightly() -> anyhow::Result<()> {
    if !nightly_installed()? {
        step(
            "setup",
            "installing the nightly toolchain (profile minimal, for the eBPF build)",
        );
        util::run_streamed(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let nightly = nightly_info()?;
    if !rust_src_present(&nightly.sysroot) {
        step(
            "setup",
            "adding rust-src to nightly (for -Z build-std=core)",
        );
        util::run_streamed(rustup().args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// True if bpf-linker runs, either on its own or inside the nightly's
/// environment (which is how aya-build calls it: `rustup run nightly cargo`
/// puts the nightly's lib directory, with its libLLVM, on LD_LIBRARY_PATH).
fn bpf_linker_works() -> bool {
    util::succeeds(Command::new("bpf-linker").arg("--version"))
        || util::succeeds(rustup().args(["run", "nightly", "bpf-linker", "--version"]))
}

/// How bpf-linker gets built against the nightly's libLLVM.
struct BpfLinkerPlan {
    /// The nightly's shared LLVM, e.g. `.../lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
    libllvm: PathBuf,
    /// LLVM_PREFIX: `<prefix>/lib` holds symlinks to `libllvm`.
    prefix: PathBuf,
    llvm_major: u32,
}

impl BpfLinkerPlan {
    fn new(nightly: &Nightly) -> anyhow::Result<Self> {
        let libdir = nightly.sysroot.join("lib");
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(&libdir)
            .with_context(|| format!("reading {}", libdir.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("libLLVM.so"))
            .map(|e| e.path())
            .collect();
        // Prefer the versioned file (`libLLVM.so.22.1-rust-...`) over a bare
        // `libLLVM.so`, should a toolchain ship both.
        candidates.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        let libllvm = candidates.into_iter().next().with_context(|| {
            format!(
                "no libLLVM.so* in {}: this nightly does not ship LLVM as a shared library",
                libdir.display()
            )
        })?;
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .context("neither CARGO_HOME nor HOME is set")?;
        Ok(BpfLinkerPlan {
            libllvm,
            // Kept (not a temp dir): bpf-linker's rpath points here.
            prefix: cargo_home.join("bpf-linker-llvm"),
            llvm_major: nightly.llvm_major,
        })
    }

    /// Names of the symlinks made in `<prefix>/lib`: `libLLVM.so` (found by
    /// the build) and the library's own file name (its soname, found at run
    /// time through the rpath).
    fn links(&self) -> Vec<(PathBuf, PathBuf)> {
        let lib = self.prefix.join("lib");
        let mut links = vec![(lib.join("libLLVM.so"), self.libllvm.clone())];
        if let Some(name) = self.libllvm.file_name()
            && name != "libLLVM.so"
        {
            links.push((lib.join(name), self.libllvm.clone()));
        }
        links
    }

    fn install_command(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", &self.prefix).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", self.llvm_major),
        ]);
        cmd
    }

    fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .links()
            .iter()
            .map(|(link, target)| format!("ln -sf {} {}", target.display(), link.display()))
            .collect();
        lines.insert(0, format!("mkdir -p {}", self.prefix.join("lib").display()));
        lines.push(format!(
            "LLVM_PREFIX={} {}",
            self.prefix.display(),
            util::describe(&self.install_command())
        ));
        lines
    }

    fn execute(&self) -> anyhow::Result<()> {
        if !BPF_LINKER_LLVM_MAJORS.contains(&self.llvm_major) {
            bail!(
                "the nightly uses LLVM {}, but bpf-linker {BPF_LINKER_VERSION} supports LLVM {:?}: \
                 install a matching nightly (`rustup toolchain install nightly-YYYY-MM-DD`) or \
                 bump BPF_LINKER_VERSION in xtask/src/setup.rs",
                self.llvm_major,
                BPF_LINKER_LLVM_MAJORS
            );
        }
        let lib = self.prefix.join("lib");
        std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
        for (link, target) in self.links() {
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
            }
            std::os::unix::fs::symlink(&target, &link).with_context(|| {
                format!("symlinking {} -> {}", link.display(), target.display())
            })?;
        }
        util::run_captured(&mut self.install_command())
            .context("building bpf-linker (cargo install)")?;
        Ok(())
    }
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let plan = BpfLinkerPlan::new(&nightly_info()?)?;
    step(
        "setup",
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} against nightly LLVM {} (about 2 minutes)",
            plan.llvm_major
        ),
    );
    plan.execute()?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was built but `rustup run nightly bpf-linker --version` still fails; \
             is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

/// True if `cargo fuzz` runs.
fn cargo_fuzz_works() -> bool {
    util::succeeds(util::cargo().args(["fuzz", "--version"]))
}

fn cargo_fuzz_install_command() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]);
    cmd
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if cargo_fuzz_works() {
        return Ok(());
    }
    step(
        "setup",
        format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 minutes)"),
    );
    util::run_captured(&mut cargo_fuzz_install_command())
        .context("installing cargo-fuzz (cargo install)")?;
    if !cargo_fuzz_works() {
        bail!(
            "cargo-fuzz was installed but `cargo fuzz --version` still fails; is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

/// Which of `pkgs` are not installed (per dpkg).
fn missing_packages(pkgs: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package} ${Status}\n"]).args(pkgs);
    // dpkg-query exits 1 when some package is unknown; the output still
    // lists the known ones.
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .context("dpkg-query not found: setup installs packages with apt (Debian/Ubuntu)")?;
    let installed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        // Multi-arch packages may show as `name:arch`.
        .map(|p| p.split(':').next().unwrap_or(p).to_owned())
        .collect();
    Ok(pkgs
        .iter()
        .filter(|p| !installed.contains(**p))
        .map(|p| (*p).to_owned())
        .collect())
}

/// Installs the Debian packages among `pkgs` that are missing (apt-get,
/// noninteractive, no recommends). Does nothing, not even `apt-get update`,
/// when all are present. Fails clearly when not root.
pub fn ensure_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(pkgs)?;
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !util::is_root() {
        bail!(
            "missing Debian packages: {list}. Run setup as root, or install them with \
             `sudo apt-get install -y --no-install-recommends {list}`"
        );
    }
    step("setup", format!("installing Debian packages: {list}"));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    util::run_captured(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    util::run_captured(&mut install)?;
    let still = missing_packages(pkgs)?;
    if !still.is_empty() {
        bail!(
            "apt-get install finished but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// `setup --dry-run`: reports each step's state and the commands it would run.
fn dry_run() -> anyhow::Result<()> {
    step("setup", "dry run: nothing is changed");
    ensure_rustup()?;
    let have_nightly = nightly_installed()?;
    println!(
        "nightly toolchain: {}",
        if have_nightly {
            "present"
        } else {
            "missing -> rustup toolchain install nightly --profile minimal --component rust-src"
        }
    );
    if have_nightly {
        let nightly = nightly_info()?;
        println!(
            "rust-src: {}",
            if rust_src_present(&nightly.sysroot) {
                "present"
            } else {
                "missing -> rustup component add rust-src --toolchain nightly"
            }
        );
        let works = bpf_linker_works();
        println!(
            "bpf-linker: {}",
            if works {
                "works (step skipped); it would otherwise be built with:"
            } else {
                "missing or broken -> would be built with:"
            }
        );
        match BpfLinkerPlan::new(&nightly) {
            Ok(plan) => {
                for line in plan.describe() {
                    println!("    {line}");
                }
                if !BPF_LINKER_LLVM_MAJORS.contains(&plan.llvm_major) {
                    println!(
                        "    (would fail: LLVM {} is not among bpf-linker {BPF_LINKER_VERSION}'s {:?})",
                        plan.llvm_major, BPF_LINKER_LLVM_MAJORS
                    );
                }
            }
            Err(e) => println!("    cannot plan the build: {e:#}"),
        }
    } else {
        println!("rust-src, bpf-linker: checked after the nightly is installed");
    }
    println!(
        "cargo-fuzz: {}",
        if cargo_fuzz_works() {
            "present".to_owned()
        } else {
            format!(
                "missing -> {}",
                util::describe(&cargo_fuzz_install_command())
            )
        }
    );
    let missing = missing_packages(TEST_PACKAGES)?;
    if missing.is_empty() {
        println!("Debian packages ({}): present", TEST_PACKAGES.join(" "));
    } else {
        println!(
            "Debian packages: missing {} -> apt-get update && apt-get install -y --no-install-recommends {}{}",
            missing.join(" "),
            missing.join(" "),
            if util::is_root() { "" } else { " (needs root)" }
        );
    }
    Ok(())
}
