//! The network manager's Prometheus metrics, encoded on scrape from what the
//! netif task publishes: card state and role, switches by cause, poll
//! round trips, polls sent and lost; and every heartbeat interface's
//! lifecycle (present, deleted, recreated: issue #12 row 3).

use heartbeat_api::status::{InterfaceStatus, NicStatus};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use tokio::sync::watch;

/// The collector (registered by `metrics::registry`).
#[derive(Debug)]
pub struct NicCollector {
    nics: watch::Receiver<Vec<NicStatus>>,
    interfaces: watch::Receiver<Vec<InterfaceStatus>>,
}

impl NicCollector {
    pub fn new(
        nics: watch::Receiver<Vec<NicStatus>>,
        interfaces: watch::Receiver<Vec<InterfaceStatus>>,
    ) -> Self {
        Self { nics, interfaces }
    }

    fn encode_interfaces(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ifaces = self.interfaces.borrow().clone();
        if ifaces.is_empty() {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_interface_present",
            "1 while the heartbeat interface exists, 0 while it is deleted",
            None,
            MetricType::Gauge,
        )?;
        for i in &ifaces {
            ConstGauge::new(i64::from(i.index.is_some()))
                .encode(m.encode_family(&[("interface", i.name.as_str())])?)?;
        }
        for (name, help, get) in [
            (
                "heartbeat_interface_deleted",
                "Times the heartbeat interface was deleted",
                (|i: &InterfaceStatus| i.deleted) as fn(&InterfaceStatus) -> u64,
            ),
            (
                "heartbeat_interface_recreated",
                "Times the heartbeat interface came back under a new index (XDP re-attached, socket re-bound)",
                |i: &InterfaceStatus| i.recreated,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for i in &ifaces {
                ConstCounter::new(get(i))
                    .encode(m.encode_family(&[("interface", i.name.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// (card role label, interface, state, active) of both cards of `n`.
fn cards(n: &NicStatus) -> [(&'static str, &str, &str, bool); 2] {
    [
        (
            "primary",
            n.primary.as_str(),
            n.primary_state.as_str(),
            n.active == n.primary,
        ),
        (
            "standby",
            n.standby.as_str(),
            n.standby_state.as_str(),
            n.active == n.standby,
        ),
    ]
}

impl Collector for NicCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_interfaces(&mut enc)?;
        let nics = self.nics.borrow().clone();
        if nics.is_empty() {
            return Ok(());
        }
        let labels = |n: &NicStatus, card: &str, iface: &str| {
            vec![
                ("link", n.link.to_string()),
                ("card", card.to_owned()),
                ("interface", iface.to_owned()),
            ]
        };
        let mut m = enc.encode_descriptor(
            "heartbeat_nic_state",
            "1 while the card of a link with a standby is healthy, 0 while it is failed",
            None,
            MetricType::Gauge,
        )?;
        for n in &nics {
            for (card, iface, state, _) in cards(n) {
                ConstGauge::new(i64::from(state == "up"))
                    .encode(m.encode_family(&labels(n, card, iface))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_nic_role",
            "1 for the card carrying the link now, 0 for the other",
            None,
            MetricType::Gauge,
        )?;
        for n in &nics {
            for (card, iface, _, active) in cards(n) {
                ConstGauge::new(i64::from(active))
                    .encode(m.encode_family(&labels(n, card, iface))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_nic_switches",
            "Moves of a link to its other card, by cause (carrier, poll_in, poll_out, failback, recovered)",
            None,
            MetricType::Counter,
        )?;
        for n in &nics {
            for (cause, v) in &n.switches_by_cause {
                ConstCounter::new(*v).encode(
                    m.encode_family(&[("link", n.link.to_string()), ("cause", cause.clone())])?,
                )?;
            }
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_nic_poll_rtt_seconds",
            "Round trip of the last poll answered by the other card's XDP program",
            None,
            MetricType::Gauge,
        )?;
        for n in &nics {
            for (i, (card, iface, _, _)) in cards(n).into_iter().enumerate() {
                if let Some(us) = n.poll_rtt_us[i] {
                    ConstGauge::new(us / 1e6).encode(m.encode_family(&labels(n, card, iface))?)?;
                }
            }
        }
        for (name, help, get) in [
            (
                "heartbeat_nic_polls_sent",
                "Poll frames sent from the card to the link's other card",
                (|n: &NicStatus, i: usize| n.polls_sent[i]) as fn(&NicStatus, usize) -> u64,
            ),
            (
                "heartbeat_nic_polls_lost",
                "Poll frames from the card that were not answered within a polling interval",
                |n: &NicStatus, i: usize| n.polls_lost[i],
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for n in &nics {
                for (i, (card, iface, _, _)) in cards(n).into_iter().enumerate() {
                    ConstCounter::new(get(n, i))
                        .encode(m.encode_family(&labels(n, card, iface))?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn encodes_state_role_switches_and_polls() {
        let mut n = NicStatus {
            link: 0,
            primary: "eth1".into(),
            standby: "eth2".into(),
            active: "eth2".into(),
            primary_state: "failed:carrier".into(),
            standby_state: "up".into(),
            switches: 1,
            poll_rtt_us: [None, Some(12.5)],
            polls_sent: [3, 4],
            polls_lost: [1, 0],
            ..NicStatus::default()
        };
        n.switches_by_cause.insert("carrier".into(), 1);
        let (_tx, rx) = watch::channel(vec![n]);
        let iface = InterfaceStatus {
            name: "eth1".into(),
            index: None,
            deleted: 2,
            recreated: 1,
        };
        let (_itx, irx) = watch::channel(vec![iface]);
        let mut r = Registry::default();
        r.register_collector(Box::new(NicCollector::new(rx, irx)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for want in [
            "heartbeat_nic_state{link=\"0\",card=\"primary\",interface=\"eth1\"} 0",
            "heartbeat_nic_state{link=\"0\",card=\"standby\",interface=\"eth2\"} 1",
            "heartbeat_nic_role{link=\"0\",card=\"standby\",interface=\"eth2\"} 1",
            "heartbeat_nic_switches_total{link=\"0\",cause=\"carrier\"} 1",
            "heartbeat_nic_poll_rtt_seconds{link=\"0\",card=\"standby\",interface=\"eth2\"} 0.0000125",
            "heartbeat_nic_polls_lost_total{link=\"0\",card=\"primary\",interface=\"eth1\"} 1",
            "heartbeat_interface_present{interface=\"eth1\"} 0",
            "heartbeat_interface_deleted_total{interface=\"eth1\"} 2",
            "heartbeat_interface_recreated_total{interface=\"eth1\"} 1",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }
}
