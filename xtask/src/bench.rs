//! `cargo xtask bench`: failure-detection benchmarks against other heartbeat
//! implementations. (Stub; being written by another engineer.)

use clap::Args;

/// Options of `cargo xtask bench`.
#[derive(Args, Debug, Default)]
pub struct BenchArgs {
    /// A short run (fewer repetitions).
    #[arg(long)]
    pub quick: bool,
    /// The minimal run `cargo xtask test` does: checks that the bench works.
    #[arg(long)]
    pub smoke: bool,
}

/// Runs the benchmarks.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.smoke {
        return smoke();
    }
    println!("bench: not yet implemented (quick: {})", args.quick);
    Ok(())
}

/// The benchmark smoke run called by `cargo xtask test`.
pub fn smoke() -> anyhow::Result<()> {
    Ok(())
}
