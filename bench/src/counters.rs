//! Kernel counters read before and after each load window, to find where
//! heartbeats are delayed or lost: the qdisc of each node's interface
//! (`tc -s qdisc`: drops, requeues, backlog), the veth driver's own
//! statistics (`ethtool -S`: XDP_TX and xmit errors, ring drops, peer
//! drops), interface drop counters, and where softirq time landed
//! (`/proc/softirqs`, NET_RX and TIMER per CPU). Only counters that moved
//! are kept.

use std::collections::BTreeMap;

use heartbeat_tests::Netns;

use super::topology::Topology;

/// One interface's counters at one moment.
#[derive(Clone, Debug, Default)]
struct IfSnapshot {
    qdisc: BTreeMap<String, i64>,
    ethtool: BTreeMap<String, i64>,
    link: BTreeMap<String, i64>,
}

/// Everything at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    ifs: Vec<(String, IfSnapshot)>,
    softirqs: BTreeMap<String, Vec<i64>>,
}

/// What moved during a window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WindowCounters {
    /// Per interface ("A if_a", "B if_b"): counter -> increase (qdisc_*,
    /// ethtool names, link rx_dropped / tx_dropped). `qdisc_backlog_max`
    /// is the backlog (packets) at the window's end.
    pub interfaces: BTreeMap<String, BTreeMap<String, i64>>,
    /// NET_RX and TIMER softirqs per CPU during the window.
    pub softirqs: BTreeMap<String, Vec<i64>>,
}

fn qdisc(ns: &Netns, dev: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(o) = ns.exec(&["tc", "-s", "-j", "qdisc", "show", "dev", dev]) else {
        return out;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
        return out;
    };
    // The root qdisc (pfifo_fast) is the first entry.
    if let Some(q) = v.get(0) {
        for key in [
            "packets",
            "drops",
            "overlimits",
            "requeues",
            "backlog",
            "qlen",
        ] {
            if let Some(x) = q.get(key).and_then(serde_json::Value::as_i64) {
                out.insert(format!("qdisc_{key}"), x);
            }
        }
    }
    out
}

fn ethtool(ns: &Netns, dev: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(o) = ns.exec(&["ethtool", "-S", dev]) else {
        return out;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        if let Some((k, v)) = line.trim().split_once(':')
            && let Ok(v) = v.trim().parse::<i64>()
        {
            out.insert(k.trim().to_owned(), v);
        }
    }
    out
}

fn link(ns: &Netns, dev: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(o) = ns.ip(&["-s", "-j", "link", "show", "dev", dev]) else {
        return out;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
        return out;
    };
    for dir in ["rx", "tx"] {
        for key in ["packets", "dropped"] {
            if let Some(x) = v
                .get(0)
                .and_then(|l| l.get("stats64"))
                .and_then(|s| s.get(dir))
                .and_then(|d| d.get(key))
                .and_then(serde_json::Value::as_i64)
            {
                out.insert(format!("link_{dir}_{key}"), x);
            }
        }
    }
    out
}

/// NET_RX and TIMER rows of /proc/softirqs.
fn softirqs() -> BTreeMap<String, Vec<i64>> {
    let text = std::fs::read_to_string("/proc/softirqs").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(':')?;
            matches!(name, "NET_RX" | "TIMER" | "HRTIMER").then(|| {
                (
                    name.to_owned(),
                    rest.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect(),
                )
            })
        })
        .collect()
}

impl Snapshot {
    /// Reads every counter of both nodes' link interfaces now.
    pub fn take(topo: &Topology) -> Self {
        let ifs = [("A", &topo.a, &topo.if_a), ("B", &topo.b, &topo.if_b)]
            .into_iter()
            .map(|(n, ns, dev)| {
                (
                    format!("{n} {dev}"),
                    IfSnapshot {
                        qdisc: qdisc(ns, dev),
                        ethtool: ethtool(ns, dev),
                        link: link(ns, dev),
                    },
                )
            })
            .collect();
        Snapshot {
            ifs,
            softirqs: softirqs(),
        }
    }

    /// What increased from `before` to `self` (the backlog is kept as is).
    pub fn since(&self, before: &Snapshot) -> WindowCounters {
        let mut interfaces = BTreeMap::new();
        for (name, now) in &self.ifs {
            let Some((_, then)) = before.ifs.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let mut moved = BTreeMap::new();
            for (a, b) in [
                (&now.qdisc, &then.qdisc),
                (&now.ethtool, &then.ethtool),
                (&now.link, &then.link),
            ] {
                for (k, v) in a {
                    if k == "qdisc_backlog" || k == "qdisc_qlen" {
                        if *v != 0 {
                            moved.insert(format!("{k}_at_end"), *v);
                        }
                        continue;
                    }
                    let d = v - b.get(k).copied().unwrap_or(0);
                    if d != 0 {
                        moved.insert(k.clone(), d);
                    }
                }
            }
            interfaces.insert(name.clone(), moved);
        }
        let softirqs = self
            .softirqs
            .iter()
            .map(|(k, v)| {
                let old = before.softirqs.get(k);
                let d = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x - old.and_then(|o| o.get(i)).copied().unwrap_or(0))
                    .collect();
                (k.clone(), d)
            })
            .collect();
        WindowCounters {
            interfaces,
            softirqs,
        }
    }
}

impl WindowCounters {
    /// The counters that say where frames were lost, in one short line:
    /// qdisc drops, XDP_TX / xmit errors, ring and peer drops per node.
    pub fn loss_summary(&self) -> String {
        let mut parts = Vec::new();
        for (name, c) in &self.interfaces {
            let node = name.split_whitespace().next().unwrap_or(name);
            let pick: Vec<String> = c
                .iter()
                .filter(|(k, v)| {
                    // `xdp_drops` counts XDP_DROP verdicts: heartbeat's
                    // program ends every reply it consumes that way (its
                    // own counters give the reasons), so it is no loss.
                    **v != 0
                        && !k.ends_with("xdp_drops")
                        && (k.contains("drop")
                            || k.contains("err")
                            || k.contains("requeues")
                            || k.contains("backlog"))
                })
                .map(|(k, v)| format!("{}={v}", short(k)))
                .collect();
            if !pick.is_empty() {
                parts.push(format!("{node}: {}", pick.join(" ")));
            }
        }
        if parts.is_empty() {
            "no drops".into()
        } else {
            parts.join("; ")
        }
    }

    /// NET_RX softirqs per CPU, e.g. `12/3400`.
    pub fn net_rx(&self) -> String {
        self.softirqs
            .get("NET_RX")
            .map(|v| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default()
    }
}

/// Drops the long prefixes of the veth counter names.
fn short(k: &str) -> String {
    k.replace("rx_queue_0_", "rxq0_")
        .replace("tx_queue_0_", "txq0_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_only_what_moved() {
        let mut a = IfSnapshot::default();
        a.qdisc.insert("qdisc_drops".into(), 5);
        a.qdisc.insert("qdisc_backlog".into(), 0);
        a.ethtool.insert("rx_queue_0_xdp_tx_errors".into(), 1);
        let mut b = a.clone();
        b.qdisc.insert("qdisc_drops".into(), 9);
        b.qdisc.insert("qdisc_backlog".into(), 3000);
        let before = Snapshot {
            ifs: vec![("A x".into(), a)],
            softirqs: [("NET_RX".to_owned(), vec![1, 2])].into(),
        };
        let after = Snapshot {
            ifs: vec![("A x".into(), b)],
            softirqs: [("NET_RX".to_owned(), vec![4, 2])].into(),
        };
        let w = after.since(&before);
        let c = &w.interfaces["A x"];
        assert_eq!(c.get("qdisc_drops"), Some(&4));
        assert_eq!(c.get("qdisc_backlog_at_end"), Some(&3000));
        assert!(!c.contains_key("rx_queue_0_xdp_tx_errors"));
        assert_eq!(w.net_rx(), "3/0");
        assert!(w.loss_summary().contains("qdisc_drops=4"));
    }
}
