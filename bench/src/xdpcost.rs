//! The XDP program's own cost per packet, from `BPF_PROG_TEST_RUN`: the
//! heartbeat program (the agent's embedded object, loaded with aya and its
//! maps filled as the agent would) against an empty XDP program
//! (`mov r0, XDP_PASS; exit`, loaded with the raw `bpf(2)` syscall).
//!
//! A non-heartbeat frame leaves the frame and the maps unchanged, so it is
//! run with `repeat` = 1 000 000 in one call. A heartbeat request is
//! rewritten into a reply in place and its sequence number must grow, so
//! each request is a fresh frame run once; the per-call overhead is taken
//! out by measuring the empty program the same way.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use heartbeat_common::{
    Config, KeySlot, LocalStatus, PeerConf,
    frame::{self, Addrs, FrameSpec},
    names,
    siphash::SipKey,
    wire::Header,
};

const CLUSTER: u32 = 4242;
const LOCAL: u16 = 2;
const PEER: u16 = 1;
const PORT: u16 = 6405;
const KEY: [u8; 16] = *b"bench-key-16byte";
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Measured costs (ns per packet).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct XdpCost {
    pub repeat: u32,
    pub single_runs: u32,
    /// Empty program, `repeat` runs in one call.
    pub empty_ns: f64,
    /// Heartbeat program, UDP datagram to another port.
    pub non_heartbeat_udp_ns: f64,
    /// Heartbeat program, TCP segment.
    pub non_heartbeat_tcp_ns: f64,
    /// Empty program, one run per call (includes the per-call timer cost).
    pub empty_single_ns: f64,
    /// Heartbeat program, a valid request answered with XDP_TX, one per call.
    pub request_single_ns: f64,
    /// `non_heartbeat_udp_ns - empty_ns`.
    pub non_heartbeat_udp_extra_ns: f64,
    /// `non_heartbeat_tcp_ns - empty_ns`.
    pub non_heartbeat_tcp_extra_ns: f64,
    /// `request_single_ns - empty_single_ns`.
    pub request_extra_ns: f64,
}

fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn eth_spec(payload: &[u8], dst_port: u16) -> FrameSpec<'_> {
    FrameSpec {
        src_mac: [0x02, 0, 0, 0, 0, 1],
        dst_mac: [0x02, 0, 0, 0, 0, 2],
        vlan: None,
        addrs: Addrs::V4 {
            src: [10, 200, 10, 1],
            dst: [10, 200, 10, 2],
        },
        src_port: PORT,
        dst_port,
        payload,
    }
}

/// A UDP data frame (1400-byte payload) to port 5201.
fn udp_frame() -> Vec<u8> {
    let payload = vec![0x5a; 1400];
    let mut out = vec![0u8; 1600];
    let n = frame::build(&eth_spec(&payload, 5201), &mut out).unwrap_or(0);
    out.truncate(n);
    out
}

/// The same frame marked as TCP (the program looks at the protocol byte
/// only, so the rest need not be a valid TCP segment).
fn tcp_frame() -> Vec<u8> {
    let mut f = udp_frame();
    if f.len() > 23 {
        f[23] = 6;
    }
    f
}

fn request_frame(seq: u64) -> Vec<u8> {
    let mut h = Header::request(CLUSTER, PEER, LOCAL, 0);
    h.set_sequence(seq);
    h.set_tx_timestamp_ns(mono_ns());
    h.seal(SipKey::from_bytes(&KEY));
    let mut out = vec![0u8; frame::MAX_FRAME];
    let n = frame::build(&eth_spec(h.as_bytes(), PORT), &mut out).unwrap_or(0);
    out.truncate(n);
    out
}

/// The empty XDP program, loaded with the raw syscall.
struct EmptyProg {
    fd: std::os::fd::OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-padded bpf_attr of 128 bytes that lives for
    // the call; the kernel reads and writes only within the size given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn put32(a: &mut [u8; 128], at: usize, v: u32) {
    a[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put64(a: &mut [u8; 128], at: usize, v: u64) {
    a[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
fn get32(a: &[u8; 128], at: usize) -> u32 {
    u32::from_ne_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]])
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;

impl EmptyProg {
    fn load() -> anyhow::Result<Self> {
        // mov r0, 2 (XDP_PASS); exit
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, BPF_PROG_TYPE_XDP);
        put32(&mut attr, 4, 2);
        put64(&mut attr, 8, insns.as_ptr() as u64);
        put64(&mut attr, 16, license.as_ptr() as u64);
        attr[48..53].copy_from_slice(b"empty");
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of the empty program")?;
        // SAFETY: the syscall returned a new fd that we now own.
        let fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) };
        Ok(EmptyProg { fd })
    }

    /// (return value, ns per run) of `repeat` runs on `data`.
    fn run(&self, data: &[u8], repeat: u32) -> anyhow::Result<(u32, u32)> {
        let mut out = vec![0u8; data.len() + 256];
        let mut attr = [0u8; 128];
        put32(
            &mut attr,
            0,
            std::os::fd::AsRawFd::as_raw_fd(&self.fd) as u32,
        );
        put32(&mut attr, 8, data.len() as u32);
        put32(&mut attr, 12, out.len() as u32);
        put64(&mut attr, 16, data.as_ptr() as u64);
        put64(&mut attr, 24, out.as_mut_ptr() as u64);
        put32(&mut attr, 32, repeat);
        bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN (empty)")?;
        Ok((get32(&attr, 4), get32(&attr, 36)))
    }
}

/// The heartbeat program with its maps filled like an agent's that is
/// node 2 with peer 1 on link 0.
struct HeartbeatProg {
    ebpf: Ebpf,
}

impl HeartbeatProg {
    fn load(object: &[u8]) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(object).context("loading the heartbeat object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .context("no heartbeat program in the object")?
            .try_into()?;
        prog.load().context("loading the XDP program")?;
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(ebpf.map_mut(names::CONFIG).context("CONFIG")?)?;
        config.set(
            0,
            Config {
                node_timeout_ns: 5_000_000,
                // No gate closing during the measurement.
                agent_timeout_ns: 3_600_000_000_000,
                cluster_id: CLUSTER,
                local_node: LOCAL,
                port: PORT,
                enabled: 1,
                _pad: 0,
                ..Config::default()
            },
            0,
        )?;
        let mut keys: Array<&mut MapData, KeySlot> =
            Array::try_from(ebpf.map_mut(names::KEYS).context("KEYS")?)?;
        let k = SipKey::from_bytes(&KEY);
        keys.set(
            0,
            KeySlot {
                k0: k.k0,
                k1: k.k1,
                active: 1,
                _pad: 0,
            },
            0,
        )?;
        let mut status: Array<&mut MapData, LocalStatus> =
            Array::try_from(ebpf.map_mut(names::STATUS).context("STATUS")?)?;
        status.set(
            0,
            LocalStatus {
                agent_stamp_ns: mono_ns(),
                generation: 1,
                node_state: 2,
                ..LocalStatus::default()
            },
            0,
        )?;
        let mut peers: Array<&mut MapData, PeerConf> =
            Array::try_from(ebpf.map_mut(names::PEERS).context("PEERS")?)?;
        peers.set(u32::from(PEER), PeerConf { known: 1, links: 1 }, 0)?;
        Ok(HeartbeatProg { ebpf })
    }

    fn run(&mut self, data: &[u8], repeat: u32) -> anyhow::Result<(u32, Duration)> {
        let prog: &Xdp = self
            .ebpf
            .program(names::PROGRAM)
            .context("no heartbeat program")?
            .try_into()?;
        let mut out = vec![0u8; data.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN (heartbeat)")?;
        Ok((r.return_value, r.duration))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Measures everything; `single_runs` requests are run one per call.
pub fn measure(object_path: &Path, repeat: u32, single_runs: u32) -> anyhow::Result<XdpCost> {
    let object =
        std::fs::read(object_path).with_context(|| format!("reading {}", object_path.display()))?;
    let empty = EmptyProg::load()?;
    let mut hb = HeartbeatProg::load(&object)?;
    let udp = udp_frame();
    let tcp = tcp_frame();
    let rounds = 5;
    let mut e = Vec::new();
    let mut u = Vec::new();
    let mut t = Vec::new();
    for _ in 0..rounds {
        let (rv, ns) = empty.run(&udp, repeat)?;
        if rv != XDP_PASS {
            bail!("empty program returned {rv}");
        }
        e.push(f64::from(ns));
        let (rv, d) = hb.run(&udp, repeat)?;
        if rv != XDP_PASS {
            bail!("heartbeat program returned {rv} for a UDP data frame");
        }
        u.push(d.as_nanos() as f64);
        let (rv, d) = hb.run(&tcp, repeat)?;
        if rv != XDP_PASS {
            bail!("heartbeat program returned {rv} for a TCP frame");
        }
        t.push(d.as_nanos() as f64);
    }
    let mut empty_sum = 0u64;
    let mut req_sum = 0u64;
    let mut not_tx = 0u32;
    for seq in 1..=u64::from(single_runs) {
        let f = request_frame(seq);
        let (_, ns) = empty.run(&f, 1)?;
        empty_sum += u64::from(ns);
        let (rv, d) = hb.run(&f, 1)?;
        if rv != XDP_TX {
            not_tx += 1;
        }
        req_sum += d.as_nanos() as u64;
    }
    if not_tx > single_runs / 100 {
        bail!("{not_tx} of {single_runs} heartbeat requests were not answered with XDP_TX");
    }
    let n = f64::from(single_runs.max(1));
    let mut c = XdpCost {
        repeat,
        single_runs,
        empty_ns: median(e),
        non_heartbeat_udp_ns: median(u),
        non_heartbeat_tcp_ns: median(t),
        empty_single_ns: empty_sum as f64 / n,
        request_single_ns: req_sum as f64 / n,
        ..XdpCost::default()
    };
    c.non_heartbeat_udp_extra_ns = c.non_heartbeat_udp_ns - c.empty_ns;
    c.non_heartbeat_tcp_extra_ns = c.non_heartbeat_tcp_ns - c.empty_ns;
    c.request_extra_ns = c.request_single_ns - c.empty_single_ns;
    Ok(c)
}
