//! What a reload may change while the agent runs, and what it may not.
//!
//! Live: the keys (both slots, the serial line's too, so a rotation is: add the next key on every
//! node, reload, make it current, reload), `heartbeat_interval`,
//! `node_timeout`, `agent_timeout`, and the other nodes (added, removed,
//! their addresses, priorities and votes). Everything that would need the
//! XDP program reattached, a socket reopened or the node renamed is refused
//! with the key named, and the running configuration stays in force.

use crate::plan::Plan;

/// Checks that `new` differs from `old` only in what can change live;
/// the error names the first key that cannot.
pub fn check(old: &Plan, new: &Plan) -> Result<(), String> {
    let (o, n) = (&old.config, &new.config);
    let refuse = |key: &str| {
        Err(format!(
            "`{key}` cannot change while the agent runs (restart the agent to change it)"
        ))
    };
    if o.cluster.name != n.cluster.name {
        return refuse("cluster.name");
    }
    if o.cluster.id != n.cluster.id {
        return refuse("cluster.id");
    }
    if o.cluster.port != n.cluster.port {
        return refuse("cluster.port");
    }
    if o.cluster.events_file != n.cluster.events_file {
        return refuse("cluster.events_file");
    }
    if o.control.socket != n.control.socket {
        return refuse("control.socket");
    }
    if o.metrics != n.metrics {
        return refuse("metrics.listen");
    }
    if o.cluster.netif != n.cluster.netif {
        return refuse(
            "cluster.network_* / auto_failback / failback_hold (the network manager's settings)",
        );
    }
    if old.local.id != new.local.id || old.local.name != new.local.name {
        return refuse("node.id");
    }
    if o.serial_of(&old.local) != n.serial_of(&new.local) {
        return refuse("serial (the serial line: [serial] and [node.serial])");
    }
    if o.watchdog != n.watchdog {
        return refuse("watchdog (the watchdog self-fence: [watchdog])");
    }
    if old.local.links != new.local.links {
        return refuse(&format!(
            "the links of the local node {} (node.link)",
            old.local.name
        ));
    }
    if old.interfaces != new.interfaces || old.fenced() != new.fenced() {
        // The programs would have to be attached (and pinned) elsewhere.
        return refuse("the devices of the local packages' addresses (package.addresses)");
    }
    Ok(())
}

/// The changes from `old` to `new`, for the journal and the answer.
pub fn changes(old: &Plan, new: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let (o, n) = (&old.config.cluster, &new.config.cluster);
    if old.keys.current != new.keys.current {
        out.push("current key changed".to_owned());
    }
    if old.keys.next != new.keys.next {
        out.push(match new.keys.next {
            Some(_) => "next key installed".to_owned(),
            None => "next key removed".to_owned(),
        });
    }
    for (key, a, b) in [
        (
            "heartbeat_interval",
            o.heartbeat_interval,
            n.heartbeat_interval,
        ),
        ("node_timeout", o.node_timeout, n.node_timeout),
        ("agent_timeout", o.agent_timeout, n.agent_timeout),
    ] {
        if a != b {
            out.push(format!("{key} {a:?} -> {b:?}"));
        }
    }
    for p in &new.peers {
        if !old.peers.iter().any(|q| q.id == p.id) {
            out.push(format!("node {} added", p.name));
        }
    }
    for p in &old.peers {
        if !new.peers.iter().any(|q| q.id == p.id) {
            out.push(format!("node {} removed", p.name));
        }
    }
    for p in &new.peers {
        if let Some(q) = old.peers.iter().find(|q| q.id == p.id)
            && q != p
        {
            out.push(format!("node {} changed", p.name));
        }
    }
    if old.links != new.links && out.iter().all(|c| !c.starts_with("node ")) {
        out.push("peer addresses changed".to_owned());
    }
    out
}
