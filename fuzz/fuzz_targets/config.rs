//! The config loader: `ClusterConfig::from_str` on any UTF-8 text (the
//! loader reads files with `read_to_string`, so non-UTF-8 never reaches it).
#![no_main]

use std::path::Path;

use heartbeat_agent::config::ClusterConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClusterConfig::from_str(text, Path::new("/etc/heartbeat/cluster.toml")) {
        Ok(cfg) => {
            for n in &cfg.nodes {
                let local = cfg.local_node(Some(&n.name)).expect("a configured node");
                assert_eq!(local.id, n.id);
                assert_eq!(cfg.node(n.id).map(|x| &x.name), Some(&n.name));
            }
        }
        Err(e) => {
            // Every rejection renders to a message.
            assert!(!e.to_string().is_empty());
            let _ = (e.place(), e.key());
        }
    }
});
