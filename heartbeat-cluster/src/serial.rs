//! The serial heartbeat's frames: the protocol of the RS-232 null-modem
//! line between the two nodes of a two-node cluster (issue #11).
//!
//! One frame on the line is `0x00`, the COBS encoding (`cobs` crate) of the
//! frame bytes below, `0x00`: zero never occurs inside a COBS encoding, so
//! a reader that lost its place (noise, a cable plugged in mid-frame)
//! resynchronises at the next zero.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 2 | magic `"HS"` |
//! | 2 | 1 | version ([`VERSION`]) |
//! | 3 | 1 | frame type ([`Kind`]: 1 heartbeat, 2 membership) |
//! | 4 | 4 | cluster id |
//! | 8 | 2 | sender node id |
//! | 10 | 4 | sender incarnation (persisted start counter) |
//! | 14 | 8 | sequence, strictly increasing within an incarnation |
//! | 22 | 8 | sender's membership epoch |
//! | 30 | 1 | sender's node state byte (`heartbeat_common::node_state`) |
//! | 31 | 1 | flags ([`flags`]) |
//! | 32 | 8 | package ownership: bit `i` = package `i` runs on the sender |
//! | 40 | 1 | network view: bit `l` = network link `l` is up on the sender |
//! | 41 | 4 | network view: bit `t` = configured ping target `t` answers |
//! | 45 | 2 | payload length `n` |
//! | 47 | n | payload (membership: one sealed membership datagram, opaque) |
//! | 47+n | 8 | SipHash-2-4 MAC (cluster key) over bytes `0..47+n` |
//! | 55+n | 4 | CRC-32 (ISO-HDLC, `crc` crate) over bytes `0..55+n` |
//!
//! Multi-byte fields are big-endian. The CRC tells line noise
//! ([`Reject::Crc`]) from forgery ([`Reject::BadMac`]); the MAC is checked
//! with the current key, then the next one (key rotation, as
//! [`crate::wire`]).
//!
//! **Forward error correction** (optional, `serial.fec`; [`fec`]): the
//! frame bytes above are cut in blocks of at most [`fec::DATA`] bytes, each
//! followed by [`fec::ECC`] Reed-Solomon parity bytes (`reed-solomon`
//! crate: up to `ECC / 2` corrupted bytes per block are repaired), and the
//! whole is whitened (XOR with a fixed sequence) so that zero bytes, and
//! with them COBS code bytes, are rare: a corrupted COBS code byte spoils
//! the rest of its frame, so the fewer the better. A reader tries every
//! frame as a plain one first, then as a protected one, so the two ends
//! need not agree on the setting. At a 10 % byte error rate about two
//! frames in three get through (the losses: a stray zero made by noise,
//! which cuts the frame, or a corrupted code byte or delimiter), where a
//! plain 62-byte frame almost never does. A protected heartbeat takes 95
//! bytes on the line (8.2 ms at 115200 baud).
//!
//! [`Decoder`] is a pure function of the bytes it is fed (and of its own
//! state: the partial frame, the replay guard, the counters): it never
//! panics and never allocates more than [`MAX_ENCODED`] bytes for a frame.
//! Garbage, partial, corrupted, oversized and replayed frames are counted
//! by [`Reject`] reason and skipped; reading resumes at the next delimiter.

use std::collections::BTreeMap;

use heartbeat_common::siphash::{SipKey, ct_eq, siphash24};

use crate::ids::{Epoch, NodeId, NodeSet};
use crate::wire::Keys;

/// Magic at the start of every frame.
pub const MAGIC: [u8; 2] = *b"HS";
/// Frame format version.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 47;
/// Bytes after the payload: MAC and CRC.
pub const TRAILER_LEN: usize = 12;
/// Smallest frame (a heartbeat).
pub const MIN_FRAME: usize = HEADER_LEN + TRAILER_LEN;
/// Largest payload: one membership datagram.
pub const MAX_PAYLOAD: usize = crate::wire::MAX_LEN;
/// Largest frame before COBS.
pub const MAX_FRAME: usize = MIN_FRAME + MAX_PAYLOAD;
/// Largest COBS-encoded frame (without delimiters; a protected one, the
/// larger): more bytes without a delimiter are an oversized frame, dropped
/// up to the next delimiter.
pub const MAX_ENCODED: usize =
    fec::protected_len(MAX_FRAME) + fec::protected_len(MAX_FRAME) / 254 + 1;

/// Bytes a heartbeat frame takes on the line: the frame, one byte of COBS
/// overhead and two delimiters.
pub const HEARTBEAT_LINE_LEN: usize = MIN_FRAME + 3;

/// Bytes a heartbeat frame takes on the line, protected ([`fec`]) or not
/// (a protected one: about two bytes of COBS overhead, the whitened bytes
/// holding a zero now and then).
pub const fn heartbeat_line_len(fec: bool) -> usize {
    if fec {
        fec::protected_len(MIN_FRAME) + 4
    } else {
        HEARTBEAT_LINE_LEN
    }
}

/// The frame delimiter.
pub const DELIMITER: u8 = 0;

/// Forward error correction of a frame (see the module doc).
pub mod fec {
    /// Frame bytes per block, at most.
    pub const DATA: usize = 64;
    /// Parity bytes per block: `ECC / 2` corrupted bytes are repaired.
    pub const ECC: usize = 32;
    const BLOCK: usize = DATA + ECC;

    /// The length of a protected frame of `n` bytes.
    pub const fn protected_len(n: usize) -> usize {
        n + n.div_ceil(DATA) * ECC
    }

    /// The whitening byte at `i` (xorshift, fixed seed): no run of zeros.
    fn whitening(len: usize) -> impl Iterator<Item = u8> {
        let mut x: u32 = 0x2545_f491;
        (0..len).map(move |_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
    }

    /// `frame` protected: blocks of data and parity, whitened.
    pub fn protect(frame: &[u8]) -> Vec<u8> {
        let enc = reed_solomon::Encoder::new(ECC);
        let mut out = Vec::with_capacity(protected_len(frame.len()));
        for chunk in frame.chunks(DATA) {
            out.extend_from_slice(&enc.encode(chunk));
        }
        for (b, w) in out.iter_mut().zip(whitening(usize::MAX)) {
            *b ^= w;
        }
        out
    }

    /// The frame inside protected bytes, and how many bytes were repaired;
    /// `None` when a block cannot be repaired or the length fits no
    /// protected frame. Never panics.
    pub fn recover(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
        let last = bytes.len() % BLOCK;
        if bytes.is_empty() || (last != 0 && last <= ECC) {
            return None;
        }
        let plain: Vec<u8> = bytes
            .iter()
            .zip(whitening(usize::MAX))
            .map(|(b, w)| b ^ w)
            .collect();
        let dec = reed_solomon::Decoder::new(ECC);
        let mut out = Vec::with_capacity(bytes.len());
        let mut fixed = 0;
        for block in plain.chunks(BLOCK) {
            // (Every block is longer than ECC and at most BLOCK bytes:
            // within what the decoder takes.)
            let (b, n) = dec.correct_err_count(block, None).ok()?;
            out.extend_from_slice(b.data());
            fixed += n;
        }
        Some((out, fixed))
    }
}

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Flag bits of a frame.
pub mod flags {
    /// The sender has stopped every package it was asked to give up (the
    /// survivor rule's loser confirms its stop with it).
    pub const STOPPED: u8 = 1;
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The periodic heartbeat: status only.
    Heartbeat = 1,
    /// Status plus one sealed membership datagram (`crate::wire`) as its
    /// payload, carried opaque: the receiver hands it to the same decoder
    /// as a datagram from the network.
    Membership = 2,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Heartbeat),
            2 => Some(Self::Membership),
            _ => None,
        }
    }
}

/// Which networks a node still reaches: its own network links whose
/// interface is up, and the configured ping targets that answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetworkView {
    /// Bit `l`: network link `l` is up on the node.
    pub links: u8,
    /// Bit `t`: ping target `t` (in configuration order) answers.
    pub targets: u32,
}

impl NetworkView {
    /// How good the view is: (ping targets reached, links up); larger is
    /// better, compared in that order.
    pub fn score(self) -> (u32, u32) {
        (self.targets.count_ones(), self.links.count_ones())
    }
}

/// What every frame says about its sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status {
    /// The sender's membership epoch.
    pub epoch: Epoch,
    /// The sender's node state byte.
    pub node_state: u8,
    /// [`flags`].
    pub flags: u8,
    /// Bit `i`: package `i` runs on the sender.
    pub packages: u64,
    /// The sender's network view.
    pub view: NetworkView,
}

/// One authenticated frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub cluster_id: u32,
    pub node: NodeId,
    pub incarnation: u32,
    pub seq: u64,
    pub status: Status,
    /// Empty for a heartbeat; a sealed membership datagram otherwise.
    pub payload: Vec<u8>,
}

/// Why bytes on the line were skipped; `as_str` is stable (metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Reject {
    /// Not a COBS encoding (noise, or a frame cut by a stray zero).
    #[error("not COBS (garbage)")]
    Garbage,
    /// Shorter than a frame, or the length field disagrees (a frame cut
    /// short: the line started or stopped mid-frame).
    #[error("partial frame")]
    Partial,
    /// More than [`MAX_ENCODED`] bytes without a delimiter.
    #[error("oversized frame")]
    Oversized,
    /// CRC-32 mismatch: corrupted on the line.
    #[error("bad CRC")]
    Crc,
    /// Magic, version or type unknown.
    #[error("unknown magic, version or type")]
    Version,
    /// Another cluster's id.
    #[error("other cluster")]
    OtherCluster,
    /// The MAC matches neither key.
    #[error("bad MAC")]
    BadMac,
    /// The sender is not a node expected on this line (or is this node:
    /// the line is looped back).
    #[error("unknown sender")]
    UnknownNode,
    /// (incarnation, sequence) not newer than already accepted.
    #[error("replayed")]
    Replayed,
    /// A heartbeat with a payload, or a payload over [`MAX_PAYLOAD`].
    #[error("malformed")]
    Malformed,
}

impl Reject {
    /// Every reason, for counters and metrics.
    pub const ALL: [Reject; 10] = [
        Self::Garbage,
        Self::Partial,
        Self::Oversized,
        Self::Crc,
        Self::Version,
        Self::OtherCluster,
        Self::BadMac,
        Self::UnknownNode,
        Self::Replayed,
        Self::Malformed,
    ];

    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Garbage => "garbage",
            Self::Partial => "partial",
            Self::Oversized => "oversized",
            Self::Crc => "crc",
            Self::Version => "version",
            Self::OtherCluster => "other_cluster",
            Self::BadMac => "bad_mac",
            Self::UnknownNode => "unknown_node",
            Self::Replayed => "replayed",
            Self::Malformed => "malformed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Frames accepted and skipped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames accepted.
    pub frames: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Frames accepted after forward error correction repaired them.
    pub corrected: u64,
    /// Frames skipped, indexed like [`Reject::ALL`].
    pub rejected: [u64; Reject::ALL.len()],
}

impl Counts {
    /// Skipped frames for `r`.
    pub fn get(&self, r: Reject) -> u64 {
        self.rejected[r.index()]
    }

    /// Skipped frames, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

fn mac(key: SipKey, b: &[u8]) -> [u8; 8] {
    siphash24(key, b).to_be_bytes()
}

/// Builds frames of one sender: numbers them and seals them.
#[derive(Clone, Debug)]
pub struct Encoder {
    cluster_id: u32,
    node: NodeId,
    incarnation: u32,
    seq: u64,
    fec: bool,
}

impl Encoder {
    /// The encoder of `node` in its `incarnation` (sequences restart at 1).
    pub fn new(cluster_id: u32, node: NodeId, incarnation: u32) -> Self {
        Self {
            cluster_id,
            node,
            incarnation,
            seq: 0,
            fec: false,
        }
    }

    /// Protects every frame with forward error correction ([`fec`]).
    pub fn with_fec(mut self, fec: bool) -> Self {
        self.fec = fec;
        self
    }

    /// The last sequence used.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The frame bytes (before COBS) of the next frame. A payload over
    /// [`MAX_PAYLOAD`] is refused (`None`).
    pub fn frame(
        &mut self,
        kind: Kind,
        status: &Status,
        payload: &[u8],
        key: SipKey,
    ) -> Option<Vec<u8>> {
        if payload.len() > MAX_PAYLOAD || (kind == Kind::Heartbeat && !payload.is_empty()) {
            return None;
        }
        self.seq += 1;
        let mut b = Vec::with_capacity(MIN_FRAME + payload.len());
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.push(kind as u8);
        b.extend_from_slice(&self.cluster_id.to_be_bytes());
        b.extend_from_slice(&self.node.0.to_be_bytes());
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&status.epoch.0.to_be_bytes());
        b.push(status.node_state);
        b.push(status.flags);
        b.extend_from_slice(&status.packages.to_be_bytes());
        b.push(status.view.links);
        b.extend_from_slice(&status.view.targets.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        b.extend_from_slice(payload);
        let m = mac(key, &b);
        b.extend_from_slice(&m);
        let crc = CRC32.checksum(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        Some(b)
    }

    /// The next frame as it goes on the line: delimiter, COBS, delimiter.
    pub fn encode(
        &mut self,
        kind: Kind,
        status: &Status,
        payload: &[u8],
        key: SipKey,
    ) -> Option<Vec<u8>> {
        let fec = self.fec;
        self.frame(kind, status, payload, key).map(|f| {
            if fec {
                stuff(&fec::protect(&f))
            } else {
                stuff(&f)
            }
        })
    }
}

/// `frame` as it goes on the line: delimiter, COBS encoding, delimiter.
pub fn stuff(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; cobs::max_encoding_length(frame.len()) + 2];
    let n = cobs::encode(frame, &mut out[1..]);
    out.truncate(n + 2);
    out[n + 1] = DELIMITER;
    out
}

/// Parses and authenticates one frame (COBS already removed). Pure; never
/// panics. Checks, in order: length, CRC, magic/version/type, length field,
/// cluster, MAC, payload. The sender and replay are checked by [`Decoder`].
pub fn parse(b: &[u8], keys: &Keys, cluster_id: u32) -> Result<Frame, Reject> {
    if b.len() < MIN_FRAME {
        return Err(Reject::Partial);
    }
    if b.len() > MAX_FRAME {
        return Err(Reject::Oversized);
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if CRC32.checksum(body).to_be_bytes() != crc {
        return Err(Reject::Crc);
    }
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(a)
    };
    if b[0..2] != MAGIC || b[2] != VERSION {
        return Err(Reject::Version);
    }
    let kind = Kind::from_u8(b[3]).ok_or(Reject::Version)?;
    let n = usize::from(u16_at(45));
    if HEADER_LEN + n + TRAILER_LEN != b.len() {
        return Err(Reject::Partial);
    }
    let cid = u32_at(4);
    if cid != cluster_id {
        return Err(Reject::OtherCluster);
    }
    let split = HEADER_LEN + n;
    let mut got = [0u8; 8];
    got.copy_from_slice(&b[split..split + 8]);
    let ok = ct_eq(&mac(keys.current, &b[..split]), &got)
        || keys.next.is_some_and(|k| ct_eq(&mac(k, &b[..split]), &got));
    if !ok {
        return Err(Reject::BadMac);
    }
    if kind == Kind::Heartbeat && n != 0 {
        return Err(Reject::Malformed);
    }
    Ok(Frame {
        kind,
        cluster_id: cid,
        node: NodeId(u16_at(8)),
        incarnation: u32_at(10),
        seq: u64_at(14),
        status: Status {
            epoch: Epoch(u64_at(22)),
            node_state: b[30],
            flags: b[31],
            packages: u64_at(32),
            view: NetworkView {
                links: b[40],
                targets: u32_at(41),
            },
        },
        payload: b[HEADER_LEN..split].to_vec(),
    })
}

/// The streaming reader of one line: feed it the bytes as they arrive, in
/// any chunks; it returns the frames that are complete, authentic, from an
/// expected sender and new, and counts the rest by reason.
#[derive(Clone, Debug)]
pub struct Decoder {
    keys: Keys,
    cluster_id: u32,
    /// Senders accepted on this line.
    known: NodeSet,
    /// Bytes since the last delimiter (at most [`MAX_ENCODED`]).
    buf: Vec<u8>,
    /// The current frame outgrew [`MAX_ENCODED`]: skip to the delimiter.
    skipping: bool,
    /// Newest (incarnation, sequence) accepted per sender.
    newest: BTreeMap<NodeId, (u32, u64)>,
    counts: Counts,
}

impl Decoder {
    /// A reader accepting frames of `cluster_id` from the nodes in `known`
    /// sealed with one of `keys`.
    pub fn new(keys: Keys, cluster_id: u32, known: NodeSet) -> Self {
        Self {
            keys,
            cluster_id,
            known,
            buf: Vec::with_capacity(MAX_ENCODED),
            skipping: false,
            newest: BTreeMap::new(),
            counts: Counts::default(),
        }
    }

    /// New keys (a reload); the replay guard is kept.
    pub fn set_keys(&mut self, keys: Keys) {
        self.keys = keys;
    }

    /// What was accepted and skipped so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Forgets a partial frame (the line was reopened).
    pub fn reset_partial(&mut self) {
        if !self.buf.is_empty() || self.skipping {
            self.reject(Reject::Partial);
        }
        self.buf.clear();
        self.skipping = false;
    }

    fn reject(&mut self, r: Reject) {
        self.counts.rejected[r.index()] += 1;
    }

    /// Feeds `bytes`; appends every accepted frame to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        self.counts.bytes += bytes.len() as u64;
        for &byte in bytes {
            if byte == DELIMITER {
                if self.skipping {
                    self.skipping = false;
                } else if !self.buf.is_empty() {
                    let raw = std::mem::take(&mut self.buf);
                    match self.one(&raw) {
                        Ok(f) => {
                            self.counts.frames += 1;
                            out.push(f);
                        }
                        Err(r) => self.reject(r),
                    }
                    self.buf = raw;
                    self.buf.clear();
                }
                continue;
            }
            if self.skipping {
                continue;
            }
            if self.buf.len() == MAX_ENCODED {
                self.reject(Reject::Oversized);
                self.buf.clear();
                self.skipping = true;
                continue;
            }
            self.buf.push(byte);
        }
    }

    /// One delimited run of bytes.
    fn one(&mut self, encoded: &[u8]) -> Result<Frame, Reject> {
        let mut dec = vec![0u8; encoded.len()];
        let n = match cobs::decode(encoded, &mut dec) {
            Ok(r) => r.frame_size(),
            Err(_) => return Err(Reject::Garbage),
        };
        let dec = &dec[..n.min(dec.len())];
        // A plain frame, else a protected one (module doc).
        let (f, repaired) = match parse(dec, &self.keys, self.cluster_id) {
            Ok(f) => (f, false),
            Err(plain) => match fec::recover(dec) {
                Some((frame, fixed)) => (
                    parse(&frame, &self.keys, self.cluster_id).map_err(|_| plain)?,
                    fixed > 0,
                ),
                None => return Err(plain),
            },
        };
        if !self.known.contains(f.node) {
            return Err(Reject::UnknownNode);
        }
        let newer = match self.newest.get(&f.node) {
            None => true,
            Some(&(inc, seq)) => (f.incarnation, f.seq) > (inc, seq),
        };
        if !newer {
            return Err(Reject::Replayed);
        }
        self.newest.insert(f.node, (f.incarnation, f.seq));
        if repaired {
            self.counts.corrected += 1;
        }
        Ok(f)
    }
}

/// The key the fuzz target and [`decode`] use.
pub const TEST_KEY: SipKey = SipKey {
    k0: 0x0706_0504_0302_0100,
    k1: 0x0f0e_0d0c_0b0a_0908,
};

/// Decodes a whole byte string with a fresh [`Decoder`] (cluster 7, nodes
/// 1 and 2, [`TEST_KEY`]): the fuzz target's entry point and a convenience
/// for tests. Pure; never panics.
pub fn decode(bytes: &[u8]) -> (Vec<Frame>, Counts) {
    let mut d = Decoder::new(
        Keys {
            current: TEST_KEY,
            next: None,
        },
        7,
        NodeSet::from_bits(0b110),
    );
    let mut out = Vec::new();
    d.push(bytes, &mut out);
    (out, *d.counts())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEYS: Keys = Keys {
        current: TEST_KEY,
        next: None,
    };

    fn status() -> Status {
        Status {
            epoch: Epoch(9),
            node_state: 0x81,
            flags: flags::STOPPED,
            packages: 0b101,
            view: NetworkView {
                links: 0b11,
                targets: 0b1,
            },
        }
    }

    fn enc() -> Encoder {
        Encoder::new(7, NodeId(1), 3)
    }

    fn dec() -> Decoder {
        Decoder::new(KEYS, 7, NodeSet::from_bits(0b110))
    }

    fn feed(d: &mut Decoder, b: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        d.push(b, &mut out);
        out
    }

    #[test]
    fn a_frame_round_trips_with_every_field() {
        let mut e = enc();
        let hb = e.encode(Kind::Heartbeat, &status(), &[], TEST_KEY).unwrap();
        let m = e
            .encode(Kind::Membership, &status(), &[1, 0, 2, 0, 0], TEST_KEY)
            .unwrap();
        assert_eq!(
            hb.len(),
            MIN_FRAME + 3,
            "COBS adds one byte, plus two zeros"
        );
        assert!(hb[1..hb.len() - 1].iter().all(|&b| b != 0));
        let mut d = dec();
        let out = feed(&mut d, &[hb, m].concat());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, Kind::Heartbeat);
        assert_eq!(out[0].node, NodeId(1));
        assert_eq!((out[0].incarnation, out[0].seq), (3, 1));
        assert_eq!(out[0].status, status());
        assert_eq!(out[1].kind, Kind::Membership);
        assert_eq!(out[1].payload, [1, 0, 2, 0, 0]);
        assert_eq!(d.counts().frames, 2);
        assert_eq!(d.counts().rejected_total(), 0);
    }

    #[test]
    fn every_reason_is_counted() {
        let mut e = enc();
        let st = status();
        let good = e.frame(Kind::Heartbeat, &st, &[], TEST_KEY).unwrap();
        let mut d = dec();
        // Garbage: a COBS code pointing past the end.
        feed(&mut d, &[0, 0x40, 1, 2, 0]);
        assert_eq!(d.counts().get(Reject::Garbage), 1);
        // Partial: the first half of a frame.
        feed(&mut d, &stuff(&good[..20]));
        assert_eq!(d.counts().get(Reject::Partial), 1);
        // Corrupted: one flipped bit.
        let mut bad = good.clone();
        bad[30] ^= 4;
        feed(&mut d, &stuff(&bad));
        assert_eq!(d.counts().get(Reject::Crc), 1);
        // Oversized: no delimiter for too long, then a good frame.
        let out = feed(&mut d, &vec![1u8; MAX_ENCODED + 10]);
        assert!(out.is_empty());
        let out = feed(&mut d, &stuff(&good));
        assert_eq!(d.counts().get(Reject::Oversized), 1);
        assert_eq!(out.len(), 1, "resynchronised at the delimiter");
        // Replayed.
        feed(&mut d, &stuff(&good));
        assert_eq!(d.counts().get(Reject::Replayed), 1);
        // Other key (CRC fixed up, MAC wrong).
        let other = Encoder::new(7, NodeId(2), 1)
            .frame(Kind::Heartbeat, &st, &[], SipKey { k0: 1, k1: 2 })
            .unwrap();
        feed(&mut d, &stuff(&other));
        assert_eq!(d.counts().get(Reject::BadMac), 1);
        // Other cluster.
        let other = Encoder::new(8, NodeId(2), 1)
            .frame(Kind::Heartbeat, &st, &[], TEST_KEY)
            .unwrap();
        feed(&mut d, &stuff(&other));
        assert_eq!(d.counts().get(Reject::OtherCluster), 1);
        // Unknown sender (node 3 is not on this line).
        let other = Encoder::new(7, NodeId(3), 1)
            .frame(Kind::Heartbeat, &st, &[], TEST_KEY)
            .unwrap();
        feed(&mut d, &stuff(&other));
        assert_eq!(d.counts().get(Reject::UnknownNode), 1);
        // Version.
        let mut v = e.frame(Kind::Heartbeat, &st, &[], TEST_KEY).unwrap();
        v[2] = 2;
        let n = v.len() - 4;
        let crc = CRC32.checksum(&v[..n]).to_be_bytes();
        v[n..].copy_from_slice(&crc);
        feed(&mut d, &stuff(&v));
        assert_eq!(d.counts().get(Reject::Version), 1);
        // A newer incarnation of the same sender is accepted.
        let next = Encoder::new(7, NodeId(1), 4)
            .frame(Kind::Heartbeat, &st, &[], TEST_KEY)
            .unwrap();
        assert_eq!(feed(&mut d, &stuff(&next)).len(), 1);
        assert_eq!(d.counts().frames, 2);
    }

    #[test]
    fn the_next_key_is_accepted() {
        let next = SipKey { k0: 5, k1: 6 };
        let f = enc().encode(Kind::Heartbeat, &status(), &[], next).unwrap();
        let mut d = Decoder::new(
            Keys {
                current: TEST_KEY,
                next: Some(next),
            },
            7,
            NodeSet::from_bits(0b110),
        );
        assert_eq!(feed(&mut d, &f).len(), 1);
    }

    #[test]
    fn oversized_payloads_are_refused_by_the_encoder() {
        let mut e = enc();
        assert!(
            e.encode(Kind::Membership, &status(), &[1; MAX_PAYLOAD + 1], TEST_KEY)
                .is_none()
        );
        assert!(
            e.encode(Kind::Heartbeat, &status(), &[1], TEST_KEY)
                .is_none()
        );
        let big = e
            .encode(Kind::Membership, &status(), &[0; MAX_PAYLOAD], TEST_KEY)
            .unwrap();
        assert!(big.len() - 2 <= MAX_ENCODED);
        assert_eq!(decode(&big).0.len(), 1);
    }

    #[test]
    fn the_survivor_view_scores_targets_first() {
        let a = NetworkView {
            links: 0b1,
            targets: 0b11,
        };
        let b = NetworkView {
            links: 0b111,
            targets: 0b1,
        };
        assert!(a.score() > b.score());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes: no panic, and every byte is accounted for by a frame
        /// or a counter.
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (frames, counts) = decode(&bytes);
            prop_assert_eq!(counts.bytes, bytes.len() as u64);
            prop_assert!(frames.len() as u64 == counts.frames);
        }

        /// Frames interleaved with noise in any chunking: every frame not
        /// hit by the noise gets through, in order, and nothing else.
        #[test]
        fn frames_survive_noise_and_chunking(
            noise in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..40), 1..8),
            cut in 1usize..64,
        ) {
            let mut e = enc();
            let mut line = Vec::new();
            let mut sent = Vec::new();
            for (i, n) in noise.iter().enumerate() {
                line.extend_from_slice(n);
                let f = e.encode(Kind::Heartbeat, &status(), &[], TEST_KEY).unwrap();
                sent.push(i as u64 + 1);
                line.extend_from_slice(&f);
            }
            let mut d = dec();
            let mut got = Vec::new();
            for chunk in line.chunks(cut) {
                got.extend(feed(&mut d, chunk).into_iter().map(|f| f.seq));
            }
            prop_assert_eq!(got, sent);
        }

        /// A frame with one bit flipped anywhere is never accepted as it
        /// was sent, and the frame after it always is.
        #[test]
        fn a_flipped_bit_costs_one_frame_at_most(bit in 0usize..(8 * (MIN_FRAME + 3))) {
            let mut e = enc();
            let mut a = e.encode(Kind::Heartbeat, &status(), &[], TEST_KEY).unwrap();
            let b = e.encode(Kind::Heartbeat, &status(), &[], TEST_KEY).unwrap();
            a[bit / 8] ^= 1 << (bit % 8);
            let mut d = dec();
            let got: Vec<u64> = feed(&mut d, &[a, b].concat()).iter().map(|f| f.seq).collect();
            prop_assert_eq!(got.last().copied(), Some(2));
            prop_assert!(got.len() <= 2);
            if got.len() == 2 {
                // Only a flip in a delimiter can leave frame 1 intact.
                prop_assert!(bit / 8 == 0 || bit / 8 == MIN_FRAME + 2);
            }
        }
    }

    /// One bit flipped in `rate_ppm` of the bytes (xorshift noise).
    fn noisy(bytes: &[u8], rate_ppm: u64, rng: &mut u64) -> Vec<u8> {
        bytes
            .iter()
            .map(|&b| {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                if *rng % 1_000_000 < rate_ppm {
                    b ^ 1 << ((*rng >> 32) % 8)
                } else {
                    b
                }
            })
            .collect()
    }

    /// Frames accepted out of 1000 heartbeats at a 10 % byte error rate.
    fn through_noise(fec: bool) -> (u64, Counts) {
        let mut e = enc().with_fec(fec);
        let mut d = dec();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::new();
        for _ in 0..1000 {
            let f = e.encode(Kind::Heartbeat, &status(), &[], TEST_KEY).unwrap();
            d.push(&noisy(&f, 100_000, &mut rng), &mut out);
        }
        (out.len() as u64, *d.counts())
    }

    #[test]
    fn forward_error_correction_gets_heartbeats_through_ten_percent_byte_errors() {
        let (plain, _) = through_noise(false);
        let (fec, counts) = through_noise(true);
        eprintln!(
            "10 % byte errors: plain {plain}/1000, protected {fec}/1000 through ({counts:?})"
        );
        assert!(plain < 20, "plain frames through: {plain}");
        assert!(fec > 500, "protected frames through: {fec} ({counts:?})");
        assert!(counts.corrected > 400, "{counts:?}");
        // A protected heartbeat on the line: its length as documented.
        let f = enc()
            .with_fec(true)
            .encode(Kind::Heartbeat, &status(), &[], TEST_KEY)
            .unwrap();
        assert!((94..=97).contains(&f.len()), "{}", f.len());
    }

    #[test]
    fn plain_and_protected_frames_mix_on_one_line() {
        let mut a = enc();
        let mut d = dec();
        let mut out = Vec::new();
        for i in 0..10u8 {
            let payload = vec![i; usize::from(i) * 40];
            let kind = if i == 0 {
                Kind::Heartbeat
            } else {
                Kind::Membership
            };
            let mut e = a.clone().with_fec(i % 2 == 1);
            let f = e.encode(kind, &status(), &payload, TEST_KEY).unwrap();
            a = e.with_fec(false);
            d.push(&f, &mut out);
        }
        assert_eq!(out.len(), 10, "{:?}", d.counts());
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, f)| f.payload.len() == i * 40)
        );
    }

    proptest! {
        #[test]
        fn protection_round_trips_and_repairs(
            frame in proptest::collection::vec(any::<u8>(), 1..600),
            hits in proptest::collection::vec((any::<usize>(), 1u8..), 0..8),
        ) {
            let mut p = fec::protect(&frame);
            prop_assert_eq!(p.len(), fec::protected_len(frame.len()));
            // Up to 8 corrupted bytes anywhere (at most 8 in a block of
            // 96: within the 16 a block repairs).
            for (at, x) in &hits {
                let n = p.len();
                p[at % n] ^= x;
            }
            let (back, _) = fec::recover(&p).expect("repaired");
            prop_assert_eq!(back, frame);
        }

        #[test]
        fn recovery_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = fec::recover(&bytes);
        }
    }
}
