//! `cargo xtask demo`: a live 3-node cluster in network namespaces, a node
//! killed, the failover shown. (Stub; being written by another engineer.)

use clap::Args;

/// Options of `cargo xtask demo`.
#[derive(Args, Debug, Default)]
pub struct DemoArgs {}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let _ = args;
    println!("demo: not yet implemented");
    Ok(())
}
