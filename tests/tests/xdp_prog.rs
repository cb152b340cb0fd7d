//! The XDP program run through `BPF_PROG_TEST_RUN`: crafted frames in,
//! action, rewritten frame, maps, counters and ring-buffer events checked.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN). Each test loads its own instance of
//! the program and its maps, so the tests run in parallel.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use heartbeat_common::{
    Config, Event, HEADER_LEN, Header, KeySlot, Kind, LinkState, LocalStatus, PeerConf, counter,
    event_kind,
    frame::{self, Addrs, ETH_LEN, FrameSpec, IPV4_LEN, MAX_FRAME, UDP_LEN},
    link_slot, names, node_state, rtt_bucket,
    siphash::SipKey,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLUSTER: u32 = 42;
const LOCAL: u16 = 1;
const PEER: u16 = 2;
const PORT: u16 = 6405;
const KEY0: SipKey = SipKey {
    k0: 0x0123_4567_89ab_cdef,
    k1: 0xfedc_ba98_7654_3210,
};
const KEY1: SipKey = SipKey {
    k0: 0x1111_2222_3333_4444,
    k1: 0x5555_6666_7777_8888,
};
const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const V4: Addrs = Addrs::V4 {
    src: [10, 200, 0, 2],
    dst: [10, 200, 0, 1],
};
const V6: Addrs = Addrs::V6 {
    src: [0xfd, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02],
    dst: [0xfd, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
};
const GENERATION: u32 = 0xa1b2_c3d4;
const PACKAGES: u64 = 0x0102_0304_0506_0708;

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

fn key_slot(k: SipKey, active: bool) -> KeySlot {
    KeySlot {
        k0: k.k0,
        k1: k.k1,
        active: u32::from(active),
        _pad: 0,
    }
}

/// One loaded instance of the program with its maps filled for a two-node
/// cluster: we are node 1, node 2 is a peer on links 0 and 1.
struct Harness {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    config: Config,
}

impl Harness {
    fn new() -> Self {
        Self::with_timeouts(60_000_000_000, 60_000_000_000)
    }

    fn with_timeouts(node_timeout_ns: u64, agent_timeout_ns: u64) -> Self {
        let mut ebpf = Ebpf::load(heartbeat_agent::EBPF_OBJECT).expect("load object");
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .expect("program")
            .try_into()
            .expect("xdp program");
        prog.load().expect("verifier accepts the program");
        let events =
            RingBuf::try_from(ebpf.take_map(names::EVENTS).expect("EVENTS")).expect("ring buffer");
        let config = Config {
            heartbeat_interval_ns: 0,
            late_threshold_ns: 0,
            queue_threshold_ns: 0,
            grace_ns: 0,
            node_timeout_ns,
            agent_timeout_ns,
            cluster_id: CLUSTER,
            local_node: LOCAL,
            port: PORT,
            enabled: 1,
            _pad: 0,
        };
        let mut h = Self {
            ebpf,
            events,
            config,
        };
        h.set_config(config);
        h.set_keys(key_slot(KEY0, true), KeySlot::default());
        h.set_status(mono_ns());
        let mut peers: Array<_, PeerConf> =
            Array::try_from(h.ebpf.map_mut(names::PEERS).unwrap()).unwrap();
        peers
            .set(
                u32::from(PEER),
                PeerConf {
                    known: 1,
                    links: 0b11,
                },
                0,
            )
            .unwrap();
        peers
            .set(
                u32::from(LOCAL),
                PeerConf {
                    known: 1,
                    links: 0b11,
                },
                0,
            )
            .unwrap();
        h
    }

    fn set_config(&mut self, c: Config) {
        self.config = c;
        let mut m: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(names::CONFIG).unwrap()).unwrap();
        m.set(0, c, 0).unwrap();
    }

    fn set_keys(&mut self, current: KeySlot, next: KeySlot) {
        let mut m: Array<_, KeySlot> =
            Array::try_from(self.ebpf.map_mut(names::KEYS).unwrap()).unwrap();
        m.set(0, current, 0).unwrap();
        m.set(1, next, 0).unwrap();
    }

    fn set_agent_halt(&mut self, halted_at_ns: u64) {
        let mut m: Array<_, heartbeat_common::AgentWatch> =
            Array::try_from(self.ebpf.map_mut(names::AGENT).unwrap()).unwrap();
        m.set(
            0,
            heartbeat_common::AgentWatch {
                halted_at_ns,
                halts: 1,
                tgid: 1,
                sender_tid: 1,
            },
            0,
        )
        .unwrap();
    }

    fn set_status(&mut self, agent_stamp_ns: u64) {
        let mut m: Array<_, LocalStatus> =
            Array::try_from(self.ebpf.map_mut(names::STATUS).unwrap()).unwrap();
        m.set(
            0,
            LocalStatus {
                agent_stamp_ns,
                packages: PACKAGES,
                generation: GENERATION,
                node_state: node_state::RUNNING,
                _pad: [0; 3],
            },
            0,
        )
        .unwrap();
    }

    /// Runs the program once over `frame`: (action, frame after the program).
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &Xdp = self
            .ebpf
            .program(names::PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; 512];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(usize::try_from(res.data_size_out).unwrap());
        (res.return_value, out)
    }

    /// Every counter summed over the CPUs.
    fn counters(&self) -> Vec<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::COUNTERS).unwrap()).unwrap();
        (0..counter::COUNT)
            .map(|i| m.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    fn link(&self, peer: u16, link: u8) -> LinkState {
        let m: Array<_, LinkState> = Array::try_from(self.ebpf.map(names::LINKS).unwrap()).unwrap();
        m.get(&link_slot(peer, link).unwrap(), 0).unwrap()
    }

    /// Runs `frame` and checks the action and that exactly `RX_FRAMES` and
    /// `counter` moved, by one each. Returns the output frame.
    fn expect(&self, frame: &[u8], action: u32, counter: u32) -> Vec<u8> {
        self.expect_counters(frame, action, &[counter])
    }

    fn expect_counters(&self, frame: &[u8], action: u32, moved: &[u32]) -> Vec<u8> {
        let before = self.counters();
        let (act, out) = self.run(frame);
        let after = self.counters();
        assert_eq!(act, action, "action");
        for i in 0..counter::COUNT {
            let want = u64::from(i == counter::RX_FRAMES) + u64::from(moved.contains(&i));
            assert_eq!(
                after[i as usize] - before[i as usize],
                want,
                "counter {} ({:?})",
                i,
                counter::ALL[i as usize]
            );
        }
        out
    }

    /// Events currently in the ring buffer.
    fn drain_events(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(item) = self.events.next() {
            assert_eq!(item.len(), size_of::<Event>());
            // SAFETY: the record is exactly one Event (checked above), which
            // is a Pod made of integers; read_unaligned copies it out.
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
        v
    }
}

/// A request from PEER to LOCAL on `link`, sealed with `key`.
fn request(seq: u64, link: u8, key: SipKey) -> Header {
    let mut h = Header::request(CLUSTER, PEER, LOCAL, link);
    h.set_sequence(seq);
    h.set_tx_timestamp_ns(mono_ns());
    h.set_generation(7);
    h.node_state = node_state::STARTING;
    h.set_packages(0b101);
    h.seal(key);
    h
}

/// A reply from PEER to LOCAL on link 0, as PEER's XDP program makes it.
fn reply(seq: u64, tx_ns: u64) -> Header {
    let mut h = Header::request(CLUSTER, LOCAL, PEER, 0);
    h.set_sequence(seq);
    h.set_tx_timestamp_ns(tx_ns);
    h.make_reply();
    h.set_rx_timestamp_ns(tx_ns);
    h.set_generation(9);
    h.node_state = node_state::RUNNING;
    h.set_packages(0b11);
    h.seal(KEY0);
    h
}

fn frame_with(addrs: Addrs, vlan: Option<u16>, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME + 64];
    let n = frame::build(
        &FrameSpec {
            src_mac: PEER_MAC,
            dst_mac: LOCAL_MAC,
            vlan,
            addrs,
            src_port: PORT,
            dst_port,
            payload,
        },
        &mut buf,
    )
    .expect("frame fits");
    buf.truncate(n);
    buf
}

fn frame(addrs: Addrs, vlan: Option<u16>, h: &Header) -> Vec<u8> {
    frame_with(addrs, vlan, PORT, h.as_bytes())
}

fn swapped(a: Addrs) -> Addrs {
    match a {
        Addrs::V4 { src, dst } => Addrs::V4 { src: dst, dst: src },
        Addrs::V6 { src, dst } => Addrs::V6 { src: dst, dst: src },
    }
}

/// Checks that `out` is the correct reply to the request `req` sent in
/// `addrs`, answered between `t0` and `t1`.
fn check_reply(out: &[u8], addrs: Addrs, vlan: Option<u16>, req: &Header, t0: u64, t1: u64) {
    let p = frame::parse(out).expect("reply parses");
    assert_eq!(p.dst_mac, PEER_MAC);
    assert_eq!(p.src_mac, LOCAL_MAC);
    assert_eq!(p.vlan, vlan);
    assert_eq!(p.addrs, swapped(addrs));
    assert_eq!((p.src_port, p.dst_port), (PORT, PORT));
    assert_eq!(p.payload_len, HEADER_LEN);
    assert!(frame::checksums_ok(out, &p), "checksums");
    let h = Header::decode(&out[p.payload..p.payload + HEADER_LEN]).expect("header");
    assert_eq!(h.kind(), Some(Kind::Reply));
    assert_eq!(h.sender_id(), LOCAL);
    assert_eq!(h.target_id(), PEER);
    assert_eq!(h.cluster_id(), CLUSTER);
    assert_eq!(h.link_id, req.link_id);
    assert_eq!(h.sequence(), req.sequence());
    assert_eq!(h.tx_timestamp_ns(), req.tx_timestamp_ns());
    let rx = h.rx_timestamp_ns();
    assert!(
        t0 <= rx && rx <= t1,
        "rx timestamp {rx} not in [{t0}, {t1}]"
    );
    assert_eq!(h.generation(), GENERATION);
    assert_eq!(h.node_state, node_state::RUNNING);
    assert_eq!(h.packages(), PACKAGES);
    assert!(h.verify(KEY0), "reply sealed with the current key");
}

fn answered(h: &Harness, addrs: Addrs, vlan: Option<u16>, req: &Header) -> Vec<u8> {
    let f = frame(addrs, vlan, req);
    let t0 = mono_ns();
    let out = h.expect_counters(&f, XDP_TX, &[counter::RX_REQUEST, counter::TX_REPLY]);
    let t1 = mono_ns();
    assert_eq!(out.len(), f.len());
    check_reply(&out, addrs, vlan, req, t0, t1);
    out
}

#[test]
fn valid_requests_are_answered_in_place() {
    let mut h = Harness::new();
    let t0 = mono_ns();
    let req = request(10, 0, KEY0);
    answered(&h, V4, None, &req);
    let l = h.link(PEER, 0);
    assert_eq!(l.requests_rx, 1);
    assert_eq!(l.replies_tx, 1);
    assert_eq!(l.last_req_seq, 10);
    assert!(l.last_rx_ns >= t0 && l.last_rx_ns <= mono_ns());
    assert_eq!((l.up, l.up_events, l.timer_ready), (1, 1, 1));
    assert_eq!(l.last_up_ns, l.last_rx_ns);
    assert_eq!(l.peer_generation, 7);
    assert_eq!(l.peer_state, node_state::STARTING);
    assert_eq!(l.peer_packages, 0b101);
    let ev = h.drain_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, event_kind::LINK_UP);
    assert_eq!((ev[0].peer, ev[0].link), (PEER, 0));
    assert_eq!(ev[0].at_ns, l.last_rx_ns);

    // IPv6, and VLAN-tagged frames of both families on link 1.
    answered(&h, V6, None, &request(11, 0, KEY0));
    answered(&h, V4, Some(100), &request(1, 1, KEY0));
    answered(&h, V6, Some(4094), &request(2, 1, KEY0));
    let l = h.link(PEER, 0);
    assert_eq!((l.requests_rx, l.replies_tx, l.last_req_seq), (2, 2, 11));
    let l1 = h.link(PEER, 1);
    assert_eq!((l1.requests_rx, l1.replies_tx, l1.last_req_seq), (2, 2, 2));
    assert_eq!(l1.up_events, 1);
    let ev = h.drain_events();
    assert_eq!(ev.len(), 1, "only link 1 came up: {ev:?}");
    assert_eq!((ev[0].kind, ev[0].link), (event_kind::LINK_UP, 1));

    // 802.1ad (QinQ outer) tag.
    let req = request(3, 1, KEY0);
    let mut f = frame(V4, Some(7), &req);
    f[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    let out = h.expect_counters(&f, XDP_TX, &[counter::RX_REQUEST, counter::TX_REPLY]);
    assert_eq!(&out[12..14], &[0x88, 0xa8]);
    let mut as_q = out.clone();
    as_q[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    check_reply(&as_q, V4, Some(7), &req, 0, u64::MAX);
}

#[test]
fn rejected_heartbeats_are_dropped_and_counted() {
    let h = Harness::new();
    // Wrong key.
    let f = frame(V4, None, &request(1, 0, KEY1));
    h.expect(&f, XDP_DROP, counter::DROP_BAD_MAC);
    // A flipped bit after sealing.
    let mut r = request(1, 0, KEY0);
    r.set_packages(0b111);
    h.expect(&frame(V4, None, &r), XDP_DROP, counter::DROP_BAD_MAC);
    // Other cluster (sealed with the right key).
    let mut r = Header::request(CLUSTER + 1, PEER, LOCAL, 0);
    r.set_sequence(1);
    r.seal(KEY0);
    h.expect(&frame(V4, None, &r), XDP_DROP, counter::DROP_OTHER_CLUSTER);
    // Unknown sender, sender = ourselves, sender 0 and out of range,
    // unconfigured link, link out of range.
    for (sender, link) in [
        (3u16, 0u8),
        (LOCAL, 0),
        (0, 0),
        (64, 0),
        (200, 0),
        (PEER, 2),
        (PEER, 8),
        (PEER, 255),
    ] {
        let mut r = Header::request(CLUSTER, sender, LOCAL, link);
        r.set_sequence(1);
        r.seal(KEY0);
        h.expect(&frame(V4, None, &r), XDP_DROP, counter::DROP_UNKNOWN_NODE);
    }
    // Not for us.
    let mut r = Header::request(CLUSTER, PEER, 3, 0);
    r.set_sequence(1);
    r.seal(KEY0);
    h.expect(&frame(V4, None, &r), XDP_DROP, counter::DROP_NOT_FOR_US);
    // Bad magic, version, kind.
    for (at, v) in [(0usize, b'X'), (4, 2), (5, 0), (5, 4)] {
        let mut b = *request(1, 0, KEY0).as_bytes();
        b[at] = v;
        h.expect(
            &frame_with(V4, None, PORT, &b),
            XDP_DROP,
            counter::DROP_MALFORMED,
        );
    }
    // Nothing of the above touched the link.
    let l = h.link(PEER, 0);
    assert_eq!(l, LinkState::ZERO);
}

#[test]
fn replayed_request_is_dropped() {
    let h = Harness::new();
    let req = request(5, 0, KEY0);
    answered(&h, V4, None, &req);
    let f = frame(V4, None, &req);
    h.expect(&f, XDP_DROP, counter::DROP_REPLAY);
    // An older sequence too; a newer one is answered.
    h.expect(
        &frame(V4, None, &request(4, 0, KEY0)),
        XDP_DROP,
        counter::DROP_REPLAY,
    );
    answered(&h, V4, None, &request(6, 0, KEY0));
    let l = h.link(PEER, 0);
    assert_eq!((l.requests_rx, l.last_req_seq), (2, 6));
}

#[test]
fn truncated_or_padded_heartbeats_are_never_answered() {
    let h = Harness::new();
    let bytes = *request(1, 0, KEY0).as_bytes();
    for addrs in [V4, V6] {
        // Every shorter (and one longer) payload, with consistent lengths.
        for n in 0..HEADER_LEN {
            let f = frame_with(addrs, None, PORT, &bytes[..n]);
            h.expect(&f, XDP_DROP, counter::DROP_MALFORMED);
        }
        let mut long = bytes.to_vec();
        long.push(0);
        h.expect(
            &frame_with(addrs, None, PORT, &long),
            XDP_DROP,
            counter::DROP_MALFORMED,
        );
        // The full frame cut at every length (lengths now inconsistent).
        let full = frame(addrs, None, &request(1, 0, KEY0));
        for cut in ETH_LEN..full.len() {
            let (act, _) = h.run(&full[..cut]);
            assert!(
                act == XDP_DROP || act == XDP_PASS,
                "cut {cut}: action {act}"
            );
        }
    }
    // UDP length field inconsistent with the packet.
    let mut f = frame(V4, None, &request(1, 0, KEY0));
    let udp = ETH_LEN + IPV4_LEN;
    f[udp + 4..udp + 6].copy_from_slice(&((UDP_LEN + HEADER_LEN + 1) as u16).to_be_bytes());
    h.expect(&f, XDP_DROP, counter::DROP_MALFORMED);
    let mut f = frame(V4, None, &request(1, 0, KEY0));
    f[udp + 4..udp + 6].copy_from_slice(&((UDP_LEN + HEADER_LEN - 1) as u16).to_be_bytes());
    h.expect(&f, XDP_DROP, counter::DROP_MALFORMED);
    // IPv4 total length inconsistent.
    let mut f = frame(V4, None, &request(1, 0, KEY0));
    f[ETH_LEN + 3] += 1;
    h.expect(&f, XDP_DROP, counter::DROP_MALFORMED);
    assert_eq!(h.counters()[counter::TX_REPLY as usize], 0);
    assert_eq!(h.link(PEER, 0), LinkState::ZERO);
}

#[test]
fn other_traffic_passes_untouched() {
    let h = Harness::new();
    let req = request(1, 0, KEY0);
    let pass = |f: &[u8]| {
        let out = h.expect(f, XDP_PASS, counter::PASS_NOT_HEARTBEAT);
        assert_eq!(out, f, "frame untouched");
    };
    // UDP to another port, on both families.
    pass(&frame_with(V4, None, PORT + 1, req.as_bytes()));
    pass(&frame_with(V6, Some(5), 53, req.as_bytes()));
    // TCP.
    let mut f = frame(V4, None, &req);
    f[ETH_LEN + 9] = 6;
    pass(&f);
    let mut f = frame(V6, None, &req);
    f[ETH_LEN + 6] = 6;
    pass(&f);
    // IPv6 with an extension header (hop-by-hop) first.
    let mut f = frame(V6, None, &req);
    f[ETH_LEN + 6] = 0;
    pass(&f);
    // IPv4 with options, and a fragment.
    let mut f = frame(V4, None, &req);
    f[ETH_LEN] = 0x46;
    pass(&f);
    let mut f = frame(V4, None, &req);
    f[ETH_LEN + 6] = 0x20; // more fragments
    pass(&f);
    // Two VLAN tags.
    let mut f = frame(V4, Some(3), &req);
    f.splice(16..16, [0x81, 0x00, 0x00, 0x04]);
    pass(&f);
    // ARP request.
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&PEER_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&PEER_MAC);
    arp.extend_from_slice(&[10, 200, 0, 2, 0, 0, 0, 0, 0, 0, 10, 200, 0, 1]);
    arp.resize(60, 0);
    pass(&arp);
    // A bare Ethernet header.
    pass(&arp[..ETH_LEN]);
}

#[test]
fn membership_messages_are_passed_up_untouched() {
    let h = Harness::new();
    // Any length: the agent authenticates and decodes membership messages.
    for len in [heartbeat_common::PREFIX_LEN, 40, 100] {
        let mut payload = vec![0x5au8; len];
        payload[..4].copy_from_slice(&heartbeat_common::MAGIC);
        payload[4] = heartbeat_common::VERSION;
        payload[5] = heartbeat_common::KIND_MEMBERSHIP;
        let f = frame_with(V4, None, PORT, &payload);
        let out = h.expect(&f, XDP_PASS, counter::PASS_MEMBERSHIP);
        assert_eq!(out, f, "len {len}");
    }
    // A heartbeat-sized datagram with kind 3 is a membership message too,
    // never answered as a request.
    let mut req = request(1, 0, KEY0);
    req.kind = heartbeat_common::KIND_MEMBERSHIP;
    let f = frame(V4, None, &req);
    h.expect(&f, XDP_PASS, counter::PASS_MEMBERSHIP);
}

#[test]
fn disabled_program_passes_heartbeats() {
    let mut h = Harness::new();
    let mut c = h.config;
    c.enabled = 0;
    h.set_config(c);
    let f = frame(V4, None, &request(1, 0, KEY0));
    let out = h.expect(&f, XDP_PASS, counter::PASS_DISABLED);
    assert_eq!(out, f);
    c.enabled = 1;
    h.set_config(c);
    answered(&h, V4, None, &request(1, 0, KEY0));
}

#[test]
fn next_key_accepted_only_while_active() {
    let mut h = Harness::new();
    let f = frame(V4, None, &request(1, 0, KEY1));
    h.expect(&f, XDP_DROP, counter::DROP_BAD_MAC);
    h.set_keys(key_slot(KEY0, true), key_slot(KEY1, true));
    let req = request(2, 0, KEY1);
    let f = frame(V4, None, &req);
    let t0 = mono_ns();
    let out = h.expect_counters(
        &f,
        XDP_TX,
        &[counter::RX_REQUEST, counter::TX_REPLY, counter::KEY_NEXT],
    );
    // The reply is sealed with the current key.
    check_reply(&out, V4, None, &req, t0, mono_ns());
    // The current key still works and does not count as next.
    answered(&h, V4, None, &request(3, 0, KEY0));
    // Next key present but inactive: rejected again.
    h.set_keys(key_slot(KEY0, true), key_slot(KEY1, false));
    h.expect(
        &frame(V4, None, &request(4, 0, KEY1)),
        XDP_DROP,
        counter::DROP_BAD_MAC,
    );
    // An inactive current slot is not used even if its key matches.
    h.set_keys(key_slot(KEY0, false), key_slot(KEY1, true));
    h.expect(
        &frame(V4, None, &request(5, 0, KEY0)),
        XDP_DROP,
        counter::DROP_BAD_MAC,
    );
}

#[test]
fn dead_man_gate_drops_requests_while_agent_is_stale() {
    let mut h = Harness::with_timeouts(60_000_000_000, 50_000_000);
    let stale = mono_ns().saturating_sub(1_000_000_000);
    h.set_status(stale);
    let f = frame(V4, None, &request(1, 0, KEY0));
    h.expect_counters(
        &f,
        XDP_DROP,
        &[counter::RX_REQUEST, counter::DROP_AGENT_STALE],
    );
    h.expect_counters(
        &frame(V4, None, &request(2, 0, KEY0)),
        XDP_DROP,
        &[counter::RX_REQUEST, counter::DROP_AGENT_STALE],
    );
    // The link itself is alive: requests arrive.
    let l = h.link(PEER, 0);
    assert_eq!((l.requests_rx, l.replies_tx, l.up), (2, 0, 1));
    let ev = h.drain_events();
    let stale_events: Vec<_> = ev
        .iter()
        .filter(|e| e.kind == event_kind::AGENT_STALE)
        .collect();
    assert_eq!(stale_events.len(), 1, "one event per gate closing: {ev:?}");
    assert_eq!(stale_events[0].last_rx_ns, stale);
    assert!(stale_events[0].at_ns > stale);
    // Fresh stamp: answered again; stale again: a new event.
    h.set_status(mono_ns());
    answered(&h, V4, None, &request(3, 0, KEY0));
    h.set_status(stale);
    h.expect_counters(
        &frame(V4, None, &request(4, 0, KEY0)),
        XDP_DROP,
        &[counter::RX_REQUEST, counter::DROP_AGENT_STALE],
    );
    let ev = h.drain_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, event_kind::AGENT_STALE);
}

#[test]
fn kernel_seen_halt_closes_the_gate_until_a_newer_stamp() {
    // agent_timeout is long: only the halt recorded in AGENT can close the gate.
    let mut h = Harness::with_timeouts(60_000_000_000, 60_000_000_000);
    let stamp = mono_ns();
    h.set_status(stamp);
    answered(&h, V4, None, &request(1, 0, KEY0));
    h.set_agent_halt(stamp + 1);
    h.expect_counters(
        &frame(V4, None, &request(2, 0, KEY0)),
        XDP_DROP,
        &[counter::RX_REQUEST, counter::DROP_AGENT_STALE],
    );
    // The sender runs again (SIGCONT): a stamp newer than the halt reopens it.
    h.set_status(mono_ns());
    answered(&h, V4, None, &request(3, 0, KEY0));
}

/// An announced restart (RESTART[0]) keeps the gate open while its
/// deadline lies ahead, whatever the stamp and the kernel-seen exit say,
/// with RESTARTING (and the quorum bit) in the replies; once the deadline
/// has passed the gate is closed even with a fresh stamp, until the window
/// is cleared.
#[test]
fn an_announced_restart_window_keeps_the_gate_open_until_its_deadline() {
    let mut h = Harness::with_timeouts(60_000_000_000, 50_000_000);
    let set_restart = |h: &mut Harness, until_ns: u64| {
        let mut m: Array<_, heartbeat_common::RestartWindow> =
            Array::try_from(h.ebpf.map_mut(names::RESTART).unwrap()).unwrap();
        m.set(
            0,
            heartbeat_common::RestartWindow {
                until_ns,
                announced_ns: mono_ns(),
            },
            0,
        )
        .unwrap();
    };
    let stamp = mono_ns();
    h.set_status(stamp);
    // The sender exited (kernel-seen halt) and the stamp goes stale.
    h.set_agent_halt(stamp + 1);
    set_restart(&mut h, mono_ns() + 60_000_000_000);
    std::thread::sleep(Duration::from_millis(60));
    let f = frame(V4, None, &request(1, 0, KEY0));
    let out = h.expect_counters(&f, XDP_TX, &[counter::RX_REQUEST, counter::TX_REPLY]);
    let p = frame::parse(&out).expect("reply parses");
    let r = Header::decode(&out[p.payload..p.payload + HEADER_LEN]).expect("header");
    assert_eq!(r.kind(), Some(Kind::Reply));
    assert_eq!(r.node_state & node_state::MASK, node_state::RESTARTING);
    assert!(r.verify(KEY0));
    // The window ran out: closed, even with a fresh stamp.
    set_restart(&mut h, mono_ns().saturating_sub(1));
    h.set_status(mono_ns());
    h.expect_counters(
        &frame(V4, None, &request(2, 0, KEY0)),
        XDP_DROP,
        &[counter::RX_REQUEST, counter::DROP_AGENT_STALE],
    );
    assert!(
        h.drain_events()
            .iter()
            .any(|e| e.kind == event_kind::AGENT_STALE)
    );
    // The new agent cleared the window and stamps: answered as RUNNING.
    set_restart(&mut h, 0);
    h.set_status(mono_ns());
    answered(&h, V4, None, &request(3, 0, KEY0));
}

#[test]
fn agent_watch_tracepoints_load() {
    let mut ebpf = Ebpf::load(heartbeat_agent::EBPF_OBJECT).expect("load object");
    for name in [names::AGENT_EXIT, names::AGENT_STOP] {
        let prog: &mut aya::programs::RawTracePoint =
            ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("{name} rejected: {e}"));
    }
}

#[test]
fn replies_update_rtt_and_are_consumed() {
    let mut h = Harness::new();
    let now = mono_ns();
    let f = frame(V4, None, &reply(5, now - 1_000));
    let out = h.expect(&f, XDP_DROP, counter::RX_REPLY);
    assert_eq!(out, f, "no reply to a reply");
    let l = h.link(PEER, 0);
    let rtt = l.rtt_last_ns;
    assert!((1_000..10_000_000_000).contains(&rtt), "rtt {rtt}");
    assert_eq!(
        (
            l.rtt_min_ns,
            l.rtt_max_ns,
            l.rtt_ewma_ns,
            l.rtt_sum_ns,
            l.rtt_count
        ),
        (rtt, rtt, rtt, rtt, 1)
    );
    assert_eq!(l.rtt_hist[rtt_bucket(rtt)], 1);
    assert_eq!(l.rtt_hist.iter().sum::<u64>(), 1);
    assert_eq!((l.replies_rx, l.last_reply_seq, l.requests_rx), (1, 5, 0));
    // Our own send time, echoed back: what a lease renewal is anchored at.
    assert_eq!(l.last_reply_tx_ns, now - 1_000);
    assert_eq!(
        (l.peer_generation, l.peer_state, l.peer_packages),
        (9, node_state::RUNNING, 0b11)
    );
    assert_eq!((l.up, l.up_events), (1, 1));
    assert_eq!(h.drain_events().len(), 1);

    // A slower second sample.
    let f = frame(V6, None, &reply(6, mono_ns() - 50_000_000));
    h.expect(&f, XDP_DROP, counter::RX_REPLY);
    let l2 = h.link(PEER, 0);
    let rtt2 = l2.rtt_last_ns;
    assert!(rtt2 >= 50_000_000);
    assert_eq!(l2.rtt_min_ns, rtt);
    assert_eq!(l2.rtt_max_ns, rtt2);
    assert_eq!(l2.rtt_ewma_ns, rtt - rtt / 8 + rtt2 / 8);
    assert_eq!((l2.rtt_count, l2.rtt_sum_ns), (2, rtt + rtt2));
    assert_eq!(
        l2.rtt_hist[rtt_bucket(rtt2)],
        1 + u64::from(rtt_bucket(rtt2) == rtt_bucket(rtt))
    );
    assert_eq!(l2.last_reply_seq, 6);
    // An older send time answered later never moves the anchor back.
    assert_eq!(l2.last_reply_tx_ns, now - 1_000);

    // Replayed reply; reply stamped in the future.
    h.expect(&f, XDP_DROP, counter::DROP_REPLAY);
    let f = frame(V4, None, &reply(7, mono_ns() + 10_000_000_000));
    h.expect(&f, XDP_DROP, counter::DROP_BAD_TIMESTAMP);
    let l3 = h.link(PEER, 0);
    assert_eq!((l3.rtt_count, l3.last_reply_seq, l3.replies_rx), (2, 6, 2));
}

#[test]
fn deadline_timer_raises_link_down() {
    const TIMEOUT: u64 = 2_000_000;
    let mut h = Harness::with_timeouts(TIMEOUT, 60_000_000_000);
    answered(&h, V4, None, &request(1, 0, KEY0));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && !seen.iter().any(|e: &Event| e.kind == event_kind::LINK_DOWN)
    {
        seen.extend(h.drain_events());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (up, down) = (seen[0], seen[1]);
    assert_eq!((up.kind, up.peer, up.link), (event_kind::LINK_UP, PEER, 0));
    assert_eq!(
        (down.kind, down.peer, down.link),
        (event_kind::LINK_DOWN, PEER, 0)
    );
    assert_eq!(down.last_rx_ns, up.at_ns);
    assert!(
        down.at_ns - down.last_rx_ns >= TIMEOUT,
        "fired {} ns after the last packet",
        down.at_ns - down.last_rx_ns
    );
    let l = h.link(PEER, 0);
    assert_eq!((l.up, l.down_events, l.up_events), (0, 1, 1));
    assert_eq!(l.last_down_ns, down.at_ns);
    assert_eq!(h.counters()[counter::TIMER_EXPIRED as usize], 1);
    // The next packet brings it up again.
    answered(&h, V4, None, &request(2, 0, KEY0));
    let l = h.link(PEER, 0);
    assert_eq!((l.up, l.up_events), (1, 2));
}

// --- The detector that knows when it was blind (deadline.rs, egress.rs) ---

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1

impl Harness {
    /// Changes the configuration through `f`.
    fn configure(&mut self, f: impl FnOnce(&mut Config)) {
        let mut c = self.config;
        f(&mut c);
        self.set_config(c);
    }

    /// Loads the tc egress program (once).
    fn load_egress(&mut self) {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::EGRESS_STAMP)
            .expect("egress program")
            .try_into()
            .expect("classifier");
        prog.load().expect("verifier accepts the egress program");
    }

    /// Runs the egress program once over `frame`; returns its verdict.
    fn run_egress(&self, frame: &[u8]) -> u32 {
        self.run_egress_with_priority(frame, 6)
    }

    /// Runs the egress program over `frame` sent with skb `priority`.
    fn run_egress_with_priority(&self, frame: &[u8], priority: u32) -> u32 {
        let prog: &SchedClassifier = self
            .ebpf
            .program(names::EGRESS_STAMP)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; 512];
        // The start of a `struct __sk_buff` up to `priority` (offset 32):
        // the kernel takes mark and priority from it, the rest must be 0.
        let mut ctx = [0u8; 36];
        ctx[32..36].copy_from_slice(&priority.to_ne_bytes());
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN (tc)")
        .return_value
    }

    /// Drains events until one of `kind` arrives (or `timeout`); returns
    /// everything drained.
    fn events_until(&mut self, kind: u32, timeout: Duration) -> Vec<Event> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !seen.iter().any(|e: &Event| e.kind == kind) {
            seen.extend(self.drain_events());
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    }
}

/// One of our own requests (LOCAL to `target` on `link`), as the agent's
/// sender puts it on the wire.
fn own_request(seq: u64, target: u16, link: u8) -> Vec<u8> {
    let mut h = Header::request(CLUSTER, LOCAL, target, link);
    h.set_sequence(seq);
    h.set_tx_timestamp_ns(mono_ns());
    h.seal(KEY0);
    frame(swapped(V4), None, &h)
}

/// A request from PEER on link 0 whose transmit stamp is `tx_ns` (the
/// peer's clock), with generation `generation`.
fn request_sent_at(seq: u64, tx_ns: u64, generation: u32) -> Header {
    let mut h = Header::request(CLUSTER, PEER, LOCAL, 0);
    h.set_sequence(seq);
    h.set_tx_timestamp_ns(tx_ns);
    h.set_generation(generation);
    h.seal(KEY0);
    h
}

fn kinds(ev: &[Event]) -> Vec<u32> {
    ev.iter().map(|e| e.kind).collect()
}

#[test]
fn one_way_delay_is_relative_to_the_minimum_seen() {
    const MS: u64 = 1_000_000;
    let h = Harness::new();
    // The peer's clock runs 1000 s ahead of ours: raw delays are "negative"
    // (they wrap); only differences to the minimum mean anything.
    let offset = 1_000_000 * MS;
    let send = |seq: u64, delay: u64, generation: u32| {
        let req = request_sent_at(seq, mono_ns() + offset - delay, generation);
        h.expect_counters(
            &frame(V4, None, &req),
            XDP_TX,
            &[counter::RX_REQUEST, counter::TX_REPLY],
        );
        h.link(PEER, 0)
    };
    let l = send(1, MS, 7);
    assert_eq!((l.owd_count, l.owd_last_ns, l.owd_rising), (1, 0, 0));
    // 5 ms more delay than the first: rising, about 5 ms above the base.
    let l = send(2, 6 * MS, 7);
    assert_eq!(l.owd_count, 2);
    assert!(
        (4 * MS..6 * MS).contains(&l.owd_last_ns),
        "relative delay {}",
        l.owd_last_ns
    );
    assert_eq!(l.owd_rising, 1);
    assert_eq!(l.owd_max_ns, l.owd_last_ns);
    assert_eq!(l.owd_ewma_ns, l.owd_last_ns / 8);
    let max = l.owd_max_ns;
    // Back to the first delay: not rising, near the base.
    let l = send(3, MS, 7);
    assert!(l.owd_last_ns < MS, "relative delay {}", l.owd_last_ns);
    assert_eq!((l.owd_rising, l.owd_max_ns), (0, max));
    // Faster than ever: a new base.
    let before = l.owd_base_raw;
    let l = send(4, 0, 7);
    assert_eq!(l.owd_last_ns, 0);
    assert!(
        (before.wrapping_sub(l.owd_base_raw) as i64) > 0,
        "base moved down"
    );
    // A restarted peer (new generation) starts a new base.
    let l = send(5, 50 * MS, 8);
    assert_eq!((l.owd_count, l.owd_last_ns), (1, 0));
    // Replies carry the peer's transmit time in rx_timestamp (its XDP stamp).
    let mut r = reply(1, mono_ns());
    r.set_generation(8);
    r.set_rx_timestamp_ns(mono_ns() + offset - 60 * MS);
    r.seal(KEY0);
    h.expect(&frame(V4, None, &r), XDP_DROP, counter::RX_REPLY);
    let l = h.link(PEER, 0);
    assert_eq!(l.owd_count, 2);
    assert!(
        (9 * MS..11 * MS).contains(&l.owd_last_ns),
        "reply's relative delay {}",
        l.owd_last_ns
    );
}

#[test]
fn late_timer_defers_once_then_declares_down() {
    const TIMEOUT: u64 = 20_000_000;
    let mut h = Harness::with_timeouts(TIMEOUT, 60_000_000_000);
    // Every expiry counts as late: the deferral path is taken for sure.
    h.configure(|c| {
        c.late_threshold_ns = 1;
        c.grace_ns = 10 * TIMEOUT; // capped at node_timeout by the kernel
    });
    answered(&h, V4, None, &request(1, 0, KEY0));
    let armed = h.link(PEER, 0);
    assert_eq!(armed.deadline_ns, armed.last_rx_ns + TIMEOUT);
    let seen = h.events_until(event_kind::LINK_DOWN, Duration::from_secs(2));
    assert_eq!(
        kinds(&seen),
        [
            event_kind::LINK_UP,
            event_kind::DEFERRED_LATE_TIMER,
            event_kind::LINK_DOWN
        ],
        "{seen:?}"
    );
    let (deferred, down) = (seen[1], seen[2]);
    assert!(deferred.at_ns - deferred.last_rx_ns >= TIMEOUT);
    // The grace is one node_timeout, not ten.
    let silence = down.at_ns - down.last_rx_ns;
    assert!(silence >= 2 * TIMEOUT, "down after {silence} ns");
    assert!(
        silence < 2 * TIMEOUT + 1_000_000_000,
        "down after {silence} ns"
    );
    let l = h.link(PEER, 0);
    assert_eq!((l.up, l.down_events, l.expiries), (0, 1, 2));
    assert_eq!((l.deferrals, l.deferrals_confirmed, l.deferred), (1, 1, 0));
    assert_eq!(l.defer_cause, heartbeat_common::defer_cause::LATE_TIMER);
    assert_eq!(l.expiry_late_last_ns, down.at_ns - l.deadline_ns);
    assert!(l.expiry_late_max_ns >= l.expiry_late_last_ns);
    let c = h.counters();
    assert_eq!(c[counter::DEFER_LATE_TIMER as usize], 1);
    assert_eq!(c[counter::DEFER_CONFIRMED as usize], 1);
    assert_eq!(c[counter::TIMER_EXPIRED as usize], 2);
}

#[test]
fn a_packet_in_the_grace_rescues_the_link_and_every_silence_gets_one_deferral() {
    const TIMEOUT: u64 = 20_000_000;
    let mut h = Harness::with_timeouts(TIMEOUT, 60_000_000_000);
    h.configure(|c| {
        c.late_threshold_ns = 1;
        c.grace_ns = TIMEOUT;
    });
    answered(&h, V4, None, &request(1, 0, KEY0));
    let seen = h.events_until(event_kind::DEFERRED_LATE_TIMER, Duration::from_secs(2));
    assert_eq!(
        kinds(&seen),
        [event_kind::LINK_UP, event_kind::DEFERRED_LATE_TIMER]
    );
    assert_eq!(h.link(PEER, 0).deferred, 1);
    // Fresh evidence inside the grace: no down, no new up.
    h.expect_counters(
        &frame(V4, None, &request(2, 0, KEY0)),
        XDP_TX,
        &[
            counter::RX_REQUEST,
            counter::TX_REPLY,
            counter::DEFER_RESCUED,
        ],
    );
    let l = h.link(PEER, 0);
    assert_eq!((l.up, l.deferred, l.down_events, l.up_events), (1, 0, 0, 1));
    // The next silence is deferred once again, then judged.
    let seen = h.events_until(event_kind::LINK_DOWN, Duration::from_secs(2));
    assert_eq!(
        kinds(&seen),
        [event_kind::DEFERRED_LATE_TIMER, event_kind::LINK_DOWN],
        "{seen:?}"
    );
    let l = h.link(PEER, 0);
    assert_eq!(
        (l.deferrals, l.deferrals_confirmed, l.down_events),
        (2, 1, 1)
    );
}

#[test]
fn egress_program_stamps_only_our_own_requests() {
    let mut h = Harness::new();
    h.load_egress();
    h.configure(|c| c.heartbeat_interval_ns = 1_000_000);
    let own = |h: &Harness, f: &[u8], counted: bool| {
        let before = h.counters()[counter::EGRESS_OWN_REQUEST as usize];
        assert_eq!(h.run_egress(f), TC_ACT_UNSPEC, "the program only observes");
        let after = h.counters()[counter::EGRESS_OWN_REQUEST as usize];
        assert_eq!(after - before, u64::from(counted));
    };
    let t0 = mono_ns();
    own(&h, &own_request(1, PEER, 1), true);
    let l = h.link(PEER, 1);
    assert_eq!(l.own_tx_count, 1);
    assert!(l.own_tx_last_ns >= t0 && l.own_tx_last_ns <= mono_ns());
    assert_eq!(h.link(PEER, 0).own_tx_count, 0, "per link");
    // Not ours: the peer's request, a reply, an unknown target, an
    // unconfigured link, another port, another cluster, VLAN-tagged and
    // IPv6 own requests are ours.
    own(&h, &frame(V4, None, &request(1, 0, KEY0)), false);
    let mut r = Header::request(CLUSTER, LOCAL, PEER, 0);
    r.make_reply();
    r.make_reply(); // sender LOCAL again, but kind Reply
    own(&h, &frame(V4, None, &r), false);
    own(&h, &own_request(1, 3, 0), false);
    own(&h, &own_request(1, PEER, 2), false);
    let mut other = Header::request(CLUSTER, LOCAL, PEER, 0);
    own(
        &h,
        &frame_with(swapped(V4), None, PORT + 1, other.as_bytes()),
        false,
    );
    other.cluster_id = (CLUSTER + 1).to_be_bytes();
    own(&h, &frame(swapped(V4), None, &other), false);
    let mine = Header::request(CLUSTER, LOCAL, PEER, 0);
    own(&h, &frame(swapped(V4), Some(12), &mine), true);
    own(&h, &frame(swapped(V6), None, &mine), true);
    // Garbage never trips it.
    // (BPF_PROG_TEST_RUN wants a whole IPv4 header.)
    let full = own_request(2, PEER, 0);
    for cut in ETH_LEN + IPV4_LEN..full.len() {
        own(&h, &full[..cut], false);
    }
    // Leaving without the marking that keeps it ahead of data (skb
    // priority 6 = band 0, DSCP CS6) is counted.
    let off = |h: &Harness| h.counters()[counter::EGRESS_OFF_PRIORITY as usize];
    let before = off(&h);
    h.run_egress_with_priority(&own_request(10, PEER, 0), 0);
    assert_eq!(off(&h) - before, 1, "priority 0");
    let mut f = own_request(11, PEER, 0);
    f[ETH_LEN + 1] = 0; // TOS: best effort (IPv4 checksum not rechecked)
    h.run_egress(&f);
    assert_eq!(off(&h) - before, 2, "DSCP 0");
    h.run_egress(&own_request(12, PEER, 0));
    assert_eq!(off(&h) - before, 2, "priority 6 + CS6");
    // A gap longer than two intervals is a local stall, recorded.
    std::thread::sleep(Duration::from_millis(5));
    own(&h, &own_request(3, PEER, 1), true);
    let l = h.link(PEER, 1);
    assert_eq!(l.own_tx_count, 2);
    assert_eq!(off(&h) - before, 2, "{l:?}");
    assert_eq!(l.own_stall_end_ns, l.own_tx_last_ns);
    assert!(l.own_stall_ns >= 5_000_000, "stall {}", l.own_stall_ns);
}

#[test]
fn a_stalled_local_sender_defers_the_verdict() {
    const TIMEOUT: u64 = 30_000_000;
    let mut h = Harness::with_timeouts(TIMEOUT, 60_000_000_000);
    h.load_egress();
    h.configure(|c| {
        c.heartbeat_interval_ns = 1_000_000;
        c.grace_ns = TIMEOUT;
    });
    // We sent once, then stopped (the sender stalled); the peer's last
    // packet came after.
    assert_eq!(h.run_egress(&own_request(1, PEER, 0)), TC_ACT_UNSPEC);
    answered(&h, V4, None, &request(1, 0, KEY0));
    let seen = h.events_until(event_kind::LINK_DOWN, Duration::from_secs(2));
    assert_eq!(
        kinds(&seen),
        [
            event_kind::LINK_UP,
            event_kind::DEFERRED_LOCAL_STALL,
            event_kind::LINK_DOWN
        ],
        "{seen:?}"
    );
    let l = h.link(PEER, 0);
    assert_eq!(l.defer_cause, heartbeat_common::defer_cause::LOCAL_STALL);
    assert_eq!(h.counters()[counter::DEFER_LOCAL_STALL as usize], 1);
}

#[test]
fn a_sender_on_schedule_does_not_defer() {
    const TIMEOUT: u64 = 30_000_000;
    const INTERVAL: u64 = 5_000_000;
    let mut h = Harness::with_timeouts(TIMEOUT, 60_000_000_000);
    h.load_egress();
    h.configure(|c| {
        c.heartbeat_interval_ns = INTERVAL;
        c.grace_ns = TIMEOUT;
    });
    h.run_egress(&own_request(1, PEER, 0));
    answered(&h, V4, None, &request(1, 0, KEY0));
    // Keep "sending" every millisecond until the link goes down.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seq = 2;
    while Instant::now() < deadline && !seen.iter().any(|e: &Event| e.kind == event_kind::LINK_DOWN)
    {
        h.run_egress(&own_request(seq, PEER, 0));
        seq += 1;
        seen.extend(h.drain_events());
        std::thread::sleep(Duration::from_millis(1));
    }
    let l = h.link(PEER, 0);
    if l.own_stall_end_ns > l.last_rx_ns {
        // This test process itself stalled for two intervals: the kernel
        // was right to defer.
        eprintln!(
            "test sender stalled {} ns; deferral expected",
            l.own_stall_ns
        );
        return;
    }
    assert_eq!(
        kinds(&seen),
        [event_kind::LINK_UP, event_kind::LINK_DOWN],
        "{seen:?}"
    );
    assert_eq!(l.deferrals, 0);
    assert!(seen[1].at_ns - seen[1].last_rx_ns < 2 * TIMEOUT);
}

#[test]
fn a_peer_behind_a_queue_defers_the_verdict() {
    const MS: u64 = 1_000_000;
    const TIMEOUT: u64 = 30 * MS;
    let mut h = Harness::with_timeouts(TIMEOUT, 60_000_000_000);
    h.configure(|c| {
        c.queue_threshold_ns = 5 * MS;
        c.grace_ns = TIMEOUT;
    });
    // A small rise: no deferral.
    let send = |h: &Harness, seq: u64, delay: u64| {
        let req = request_sent_at(seq, mono_ns() - delay, 7);
        h.expect_counters(
            &frame(V4, None, &req),
            XDP_TX,
            &[counter::RX_REQUEST, counter::TX_REPLY],
        );
    };
    send(&h, 1, 0);
    send(&h, 2, MS);
    let seen = h.events_until(event_kind::LINK_DOWN, Duration::from_secs(2));
    assert_eq!(
        kinds(&seen),
        [event_kind::LINK_UP, event_kind::LINK_DOWN],
        "{seen:?}"
    );
    // Rising to 20 ms above the base: behind a queue.
    send(&h, 3, 0);
    send(&h, 4, 20 * MS);
    let seen = h.events_until(event_kind::LINK_DOWN, Duration::from_secs(2));
    assert_eq!(
        kinds(&seen),
        [
            event_kind::LINK_UP,
            event_kind::DEFERRED_PEER_QUEUED,
            event_kind::LINK_DOWN
        ],
        "{seen:?}"
    );
    let l = h.link(PEER, 0);
    assert_eq!(l.defer_cause, heartbeat_common::defer_cause::PEER_QUEUED);
    assert!(l.owd_last_ns >= 19 * MS, "{}", l.owd_last_ns);
    assert_eq!(h.counters()[counter::DEFER_PEER_QUEUED as usize], 1);
}

/// An ARP request (IPv4 over Ethernet) from `sha`/`spa` for `tpa`.
fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

#[test]
fn the_fence_drops_frames_to_and_from_addresses_whose_lease_ran_out() {
    use heartbeat_common::{LeaseEntry, LeaseKey};
    const TC_ACT_SHOT: u32 = 2;
    let mut h = Harness::new();
    h.load_egress();
    let Addrs::V4 {
        src: peer4,
        dst: local4,
    } = V4
    else {
        unreachable!()
    };
    let Addrs::V6 { dst: local6, .. } = V6 else {
        unreachable!()
    };
    let set = |h: &mut Harness, key: LeaseKey, until_ns: u64| {
        let mut m: aya::maps::HashMap<_, LeaseKey, LeaseEntry> =
            aya::maps::HashMap::try_from(h.ebpf.map_mut(names::LEASES).unwrap()).unwrap();
        let entry = LeaseEntry {
            until_ns,
            package: 3,
            _pad: [0; 6],
        };
        m.insert(key, entry, 0).unwrap();
        let mut on: Array<_, u32> =
            Array::try_from(h.ebpf.map_mut(names::FENCE_ON).unwrap()).unwrap();
        on.set(0, 1, 0).unwrap();
    };
    let egress = |h: &Harness, f: &[u8]| {
        let before = h.counters()[counter::FENCED_OUT as usize];
        let act = h.run_egress(f);
        (act, h.counters()[counter::FENCED_OUT as usize] - before)
    };
    let data_in = |a: Addrs, vlan: Option<u16>| frame_with(a, vlan, 9999, b"data");
    let data_out = |a: Addrs, vlan: Option<u16>| frame_with(swapped(a), vlan, 9999, b"data");

    // A valid lease: unchanged behaviour, both ways, heartbeats answered.
    set(&mut h, LeaseKey::v4(local4), mono_ns() + 60_000_000_000);
    set(&mut h, LeaseKey::v6(local6), mono_ns() + 60_000_000_000);
    h.expect(&data_in(V4, None), XDP_PASS, counter::PASS_NOT_HEARTBEAT);
    h.expect(&data_in(V6, Some(7)), XDP_PASS, counter::PASS_NOT_HEARTBEAT);
    h.expect_counters(
        &frame(V4, None, &request(1, 0, KEY0)),
        XDP_TX,
        &[counter::RX_REQUEST, counter::TX_REPLY],
    );
    assert_eq!(egress(&h, &data_out(V4, None)), (TC_ACT_UNSPEC, 0));

    // Run out (and 0, fenced): dropped and counted, through a VLAN tag too,
    // heartbeats included.
    set(&mut h, LeaseKey::v4(local4), mono_ns());
    set(&mut h, LeaseKey::v6(local6), 0);
    for f in [
        data_in(V4, None),
        data_in(V4, Some(7)),
        data_in(V6, None),
        data_in(V6, Some(7)),
        frame(V4, None, &request(2, 0, KEY0)),
        arp_request(PEER_MAC, peer4, local4),
    ] {
        h.expect(&f, XDP_DROP, counter::FENCED_IN);
    }
    for f in [
        data_out(V4, None),
        data_out(V4, Some(7)),
        data_out(V6, None),
        arp_request(LOCAL_MAC, local4, peer4),
    ] {
        assert_eq!(egress(&h, &f), (TC_ACT_SHOT, 1));
    }
    // A new owner's announcement (gratuitous ARP: sender = target) passes.
    h.expect(
        &arp_request(PEER_MAC, local4, local4),
        XDP_PASS,
        counter::PASS_NOT_HEARTBEAT,
    );
    // Addresses not in the map pass: to the peer's address, from it, and
    // ARP asking for it.
    h.expect(
        &data_in(swapped(V4), None),
        XDP_PASS,
        counter::PASS_NOT_HEARTBEAT,
    );
    h.expect(
        &arp_request(LOCAL_MAC, local4, peer4),
        XDP_PASS,
        counter::PASS_NOT_HEARTBEAT,
    );
    assert_eq!(egress(&h, &data_in(V4, None)), (TC_ACT_UNSPEC, 0));
}
