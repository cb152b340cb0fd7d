//! The serial line's round trip (issue #11): two pseudo-terminal pairs
//! joined by a relay that plays a null-modem cable at the configured baud
//! rate (a pty has no baud rate of its own: the relay delivers each chunk
//! only after its bytes would have crossed the line, 10 bits per byte for
//! 8N1, one direction at a time per wire), the frame codec of
//! `heartbeat_cluster::serial` at both ends. End B answers every frame of
//! end A at once with a frame of its own; end A measures from writing its
//! frame to decoding B's answer.
//!
//! What it shows: the line time (2 × 62 bytes × 10 bits / baud: 10.8 ms
//! at 115200 baud for a heartbeat frame each way) plus the codec, pty and
//! scheduling overhead. It does not run the agent (whose frames are not
//! answered but sent every interval; its detection time is
//! `serial.timeout`). The threads run SCHED_FIFO when allowed (root), as
//! the agent's do.

use std::{
    io::{Read as _, Write as _},
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use heartbeat_cluster::{
    NodeId, NodeSet,
    serial::{Decoder, Encoder, Kind, Status, TEST_KEY},
    wire::Keys,
};
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    pty::openpty,
    sys::termios::{SetArg, SpecialCharacterIndices, cfmakeraw, tcgetattr, tcsetattr},
};
use serde::Serialize;

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct SerialRow {
    pub baud: u32,
    pub samples: usize,
    pub lost: usize,
    pub frame_bytes: usize,
    /// 2 × frame bytes × 10 bits / baud.
    pub line_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

const KEYS: Keys = Keys {
    current: TEST_KEY,
    next: None,
};

/// A pty pair: the master (non-blocking, for the relay) and the slave as a
/// file (raw; reads return after at most 0.1 s).
pub(crate) fn pty() -> anyhow::Result<(OwnedFd, std::fs::File)> {
    let p = openpty(None, None).context("openpty")?;
    let mut t = tcgetattr(&p.slave).context("tcgetattr")?;
    cfmakeraw(&mut t);
    t.control_chars[SpecialCharacterIndices::VMIN as usize] = 0;
    t.control_chars[SpecialCharacterIndices::VTIME as usize] = 1;
    tcsetattr(&p.slave, SetArg::TCSANOW, &t).context("tcsetattr")?;
    let fl = fcntl(&p.master, FcntlArg::F_GETFL).context("getfl")?;
    fcntl(
        &p.master,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
    )
    .context("setfl")?;
    Ok((p.master, std::fs::File::from(p.slave)))
}

/// Runs the calling thread SCHED_FIFO when allowed, as the agent runs its
/// own: the figure is the line's, not the machine's load (best effort).
fn realtime() {
    let p = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid
    // sched_param; failure (not root) only leaves the policy as it was.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const p) };
}

/// One wire of the cable: bytes from `from`'s master to `to`'s master,
/// each chunk delivered when its last bit would have arrived.
pub(crate) fn wire(from: Arc<OwnedFd>, to: Arc<OwnedFd>, baud: u32, stop: Arc<AtomicBool>) {
    realtime();
    let ns_per_byte = 10_000_000_000u64 / u64::from(baud);
    let mut buf = [0u8; 4096];
    let mut free_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let n = match nix::unistd::read(&*from, &mut buf) {
            Ok(n) if n > 0 => n,
            _ => {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
        };
        let start = free_at.max(Instant::now());
        let done = start + Duration::from_nanos(ns_per_byte * n as u64);
        free_at = done;
        let now = Instant::now();
        if done > now {
            std::thread::sleep(done - now);
        }
        let _ = nix::unistd::write(&*to, &buf[..n]);
    }
}

/// Reads `port` until `decoder` yields a frame or `deadline`.
fn next_frame(
    port: &mut std::fs::File,
    decoder: &mut Decoder,
    deadline: Instant,
) -> Option<heartbeat_cluster::serial::Frame> {
    let mut buf = [0u8; 512];
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let n = port.read(&mut buf).unwrap_or(0);
        decoder.push(&buf[..n], &mut out);
        if let Some(f) = out.pop() {
            return Some(f);
        }
    }
    None
}

/// `samples` round trips at `baud`, one every `interval`.
pub fn measure(baud: u32, samples: usize, interval: Duration) -> anyhow::Result<SerialRow> {
    let (ma, mut a) = pty()?;
    let (mb, mut b) = pty()?;
    let (ma, mb) = (Arc::new(ma), Arc::new(mb));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (from, to) in [(ma.clone(), mb.clone()), (mb.clone(), ma.clone())] {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || wire(from, to, baud, stop)));
    }
    // End B: answers every frame at once.
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            realtime();
            let mut enc = Encoder::new(7, NodeId(2), 1);
            let mut dec = Decoder::new(KEYS, 7, NodeSet::single(NodeId(1)));
            while !stop.load(Ordering::Relaxed) {
                let deadline = Instant::now() + Duration::from_millis(100);
                if next_frame(&mut b, &mut dec, deadline).is_some()
                    && let Some(f) = enc.encode(Kind::Heartbeat, &Status::default(), &[], TEST_KEY)
                {
                    let _ = b.write_all(&f);
                }
            }
        }));
    }
    realtime();
    let mut enc = Encoder::new(7, NodeId(1), 1);
    let mut dec = Decoder::new(KEYS, 7, NodeSet::single(NodeId(2)));
    let mut rtts = Vec::with_capacity(samples);
    let mut lost = 0;
    let mut frame_bytes = 0;
    for _ in 0..samples {
        crate::check_interrupt()?;
        let f = enc
            .encode(Kind::Heartbeat, &Status::default(), &[], TEST_KEY)
            .context("encoding")?;
        frame_bytes = f.len();
        let t0 = Instant::now();
        a.write_all(&f).context("writing to the pty")?;
        match next_frame(&mut a, &mut dec, t0 + Duration::from_secs(1)) {
            Some(_) => rtts.push(t0.elapsed().as_secs_f64() * 1e3),
            None => lost += 1,
        }
        std::thread::sleep(interval);
    }
    let normal = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in `realtime`: back to the default policy for this thread.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &raw const normal) };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(SerialRow {
        baud,
        samples: rtts.len(),
        lost,
        frame_bytes,
        line_ms: 2.0 * frame_bytes as f64 * 10.0 / f64::from(baud) * 1e3,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: rtts.last().copied().unwrap_or(f64::NAN),
    })
}

/// The table printed after a run.
pub fn table(r: &SerialRow) -> String {
    format!(
        "serial round trip over a pty pair at {} baud (relay paced at the baud rate; {}-byte frames, line time {:.2} ms): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} samples, {} lost",
        r.baud, r.frame_bytes, r.line_ms, r.p50_ms, r.p99_ms, r.max_ms, r.samples, r.lost
    )
}
