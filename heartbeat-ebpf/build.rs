//! Rebuild the eBPF object when bpf-linker changes (it is not a cargo input).
use std::{env, path::PathBuf};

fn main() {
    let path = env::var_os("PATH").unwrap_or_default();
    for dir in env::split_paths(&path) {
        let candidate: PathBuf = dir.join("bpf-linker");
        if candidate.is_file() {
            println!("cargo:rerun-if-changed={}", candidate.display());
            break;
        }
    }
}
