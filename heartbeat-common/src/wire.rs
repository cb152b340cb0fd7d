//! The heartbeat header carried in a UDP datagram.
//!
//! Every multi-byte field is stored as a byte array in network order and read
//! through getters, so byte order cannot go wrong on either side. The header
//! has a fixed size; a datagram whose payload is not exactly [`HEADER_LEN`]
//! bytes is not a heartbeat.

use crate::siphash::{SipKey, ct_eq, siphash24};

/// `"HBT1"`: the first four bytes of every heartbeat.
pub const MAGIC: [u8; 4] = *b"HBT1";
/// Wire format version this build speaks.
pub const VERSION: u8 = 1;
/// Size of the heartbeat header (the whole UDP payload).
pub const HEADER_LEN: usize = 64;
/// Bytes covered by the MAC: everything before it.
pub const MAC_OFFSET: usize = 56;
/// Default UDP port.
pub const DEFAULT_PORT: u16 = 6405;
/// Kind byte of a membership message. Membership messages share the
/// heartbeats' port and their first [`PREFIX_LEN`] bytes (magic, version,
/// kind) but have a layout and length of their own (defined by the agent's
/// `cluster::wire`); the XDP program passes them up to the agent untouched
/// and never answers them.
pub const KIND_MEMBERSHIP: u8 = 3;
/// Bytes every datagram on the heartbeat port starts with: magic, version, kind.
pub const PREFIX_LEN: usize = 6;

/// What a heartbeat asks for.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sent by an agent; answered in place by the peer's XDP program.
    Request = 1,
    /// The XDP program's answer; consumed by the requester's XDP program.
    Reply = 2,
}

impl Kind {
    #[inline(always)]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Request),
            2 => Some(Self::Reply),
            _ => None,
        }
    }
}

/// Node state advertised in every request and reply (`node_state` byte):
/// the agent's state in the low 7 bits, [`node_state::QUORATE`] on top.
pub mod node_state {
    pub const UNKNOWN: u8 = 0;
    pub const STARTING: u8 = 1;
    pub const RUNNING: u8 = 2;
    /// Leaving gracefully (`node halt`, or stopping).
    pub const HALTING: u8 = 3;
    /// Within an announced restart window: the kernel keeps answering.
    pub const RESTARTING: u8 = 4;
    /// The agent's tasks stopped checking in: its kernel no longer answers
    /// and its membership must not count it.
    pub const STALE: u8 = 5;
    /// Set while the node is a member of a quorate view.
    pub const QUORATE: u8 = 0x80;
    /// In a reply: the replier counts the requester as a member of its
    /// view (`GRANTS`), so the reply may anchor the requester's package
    /// leases. Set only by the XDP program.
    pub const GRANT: u8 = 0x40;
    /// The state without the quorum and grant bits.
    pub const MASK: u8 = 0x3f;
}

/// The 64-byte heartbeat header.
///
/// ```text
///  0 magic[4]      4 version  5 kind  6 link_id  7 flags
///  8 cluster_id[4] 12 sender_id[2]    14 target_id[2]
/// 16 sequence[8]   24 tx_timestamp_ns[8]  32 rx_timestamp_ns[8]
/// 40 generation[4] 44 node_state 45 reserved[3] 48 packages[8]
/// 56 mac[8]        (SipHash-2-4 over bytes 0..56)
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 4],
    pub version: u8,
    pub kind: u8,
    pub link_id: u8,
    pub flags: u8,
    pub cluster_id: [u8; 4],
    pub sender_id: [u8; 2],
    pub target_id: [u8; 2],
    pub sequence: [u8; 8],
    pub tx_timestamp_ns: [u8; 8],
    pub rx_timestamp_ns: [u8; 8],
    pub generation: [u8; 4],
    pub node_state: u8,
    pub reserved: [u8; 3],
    pub packages: [u8; 8],
    pub mac: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_LEN);

/// Why bytes are not an acceptable heartbeat header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer or more bytes than [`HEADER_LEN`].
    Length,
    /// Wrong magic: not a heartbeat at all.
    Magic,
    /// A version this build does not speak.
    Version,
    /// Unknown kind byte.
    Kind,
}

impl Header {
    /// A zeroed request with magic and version filled in.
    pub const fn request(cluster_id: u32, sender: u16, target: u16, link: u8) -> Self {
        Self {
            magic: MAGIC,
            version: VERSION,
            kind: Kind::Request as u8,
            link_id: link,
            flags: 0,
            cluster_id: cluster_id.to_be_bytes(),
            sender_id: sender.to_be_bytes(),
            target_id: target.to_be_bytes(),
            sequence: [0; 8],
            tx_timestamp_ns: [0; 8],
            rx_timestamp_ns: [0; 8],
            generation: [0; 4],
            node_state: 0,
            reserved: [0; 3],
            packages: [0; 8],
            mac: [0; 8],
        }
    }

    /// Reads a header from exactly [`HEADER_LEN`] bytes and checks the
    /// fields that need no key: magic, version and kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let arr: &[u8; HEADER_LEN] = bytes.try_into().map_err(|_| HeaderError::Length)?;
        let h = Self::from_bytes(arr);
        h.check()?;
        Ok(h)
    }

    /// Checks magic, version and kind.
    #[inline(always)]
    pub fn check(&self) -> Result<(), HeaderError> {
        if self.magic != MAGIC {
            return Err(HeaderError::Magic);
        }
        if self.version != VERSION {
            return Err(HeaderError::Version);
        }
        if Kind::from_u8(self.kind).is_none() {
            return Err(HeaderError::Kind);
        }
        Ok(())
    }

    /// Reinterprets 64 bytes as a header (every bit pattern is a valid `Header`).
    #[inline(always)]
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        // SAFETY: Header is repr(C), 64 bytes, made only of u8 and byte arrays,
        // so it has alignment 1, no padding and every bit pattern is valid.
        unsafe { core::mem::transmute_copy(b) }
    }

    /// The header as its 64 wire bytes.
    #[inline(always)]
    pub fn as_bytes(&self) -> &[u8; HEADER_LEN] {
        // SAFETY: as in `from_bytes`; the reference keeps `self` borrowed.
        unsafe { &*(self as *const Self).cast::<[u8; HEADER_LEN]>() }
    }

    #[inline(always)]
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind)
    }
    #[inline(always)]
    pub fn cluster_id(&self) -> u32 {
        u32::from_be_bytes(self.cluster_id)
    }
    #[inline(always)]
    pub fn sender_id(&self) -> u16 {
        u16::from_be_bytes(self.sender_id)
    }
    #[inline(always)]
    pub fn target_id(&self) -> u16 {
        u16::from_be_bytes(self.target_id)
    }
    #[inline(always)]
    pub fn sequence(&self) -> u64 {
        u64::from_be_bytes(self.sequence)
    }
    #[inline(always)]
    pub fn set_sequence(&mut self, v: u64) {
        self.sequence = v.to_be_bytes();
    }
    #[inline(always)]
    pub fn tx_timestamp_ns(&self) -> u64 {
        u64::from_be_bytes(self.tx_timestamp_ns)
    }
    #[inline(always)]
    pub fn set_tx_timestamp_ns(&mut self, v: u64) {
        self.tx_timestamp_ns = v.to_be_bytes();
    }
    #[inline(always)]
    pub fn rx_timestamp_ns(&self) -> u64 {
        u64::from_be_bytes(self.rx_timestamp_ns)
    }
    #[inline(always)]
    pub fn set_rx_timestamp_ns(&mut self, v: u64) {
        self.rx_timestamp_ns = v.to_be_bytes();
    }
    #[inline(always)]
    pub fn generation(&self) -> u32 {
        u32::from_be_bytes(self.generation)
    }
    #[inline(always)]
    pub fn set_generation(&mut self, v: u32) {
        self.generation = v.to_be_bytes();
    }
    #[inline(always)]
    pub fn packages(&self) -> u64 {
        u64::from_be_bytes(self.packages)
    }
    #[inline(always)]
    pub fn set_packages(&mut self, v: u64) {
        self.packages = v.to_be_bytes();
    }

    /// Turns a request into the matching reply: kind, sender and target
    /// swapped; the caller fills the timestamps and status, then seals it.
    #[inline(always)]
    pub fn make_reply(&mut self) {
        self.kind = Kind::Reply as u8;
        core::mem::swap(&mut self.sender_id, &mut self.target_id);
    }

    /// The MAC of this header under `key` (bytes 0..56).
    #[inline(always)]
    pub fn compute_mac(&self, key: SipKey) -> [u8; 8] {
        let b = self.as_bytes();
        let (covered, _) = b.split_at(MAC_OFFSET);
        siphash24(key, covered).to_le_bytes()
    }

    /// Computes and stores the MAC.
    #[inline(always)]
    pub fn seal(&mut self, key: SipKey) {
        self.mac = self.compute_mac(key);
    }

    /// Whether the stored MAC is right under `key` (constant-time compare).
    #[inline(always)]
    pub fn verify(&self, key: SipKey) -> bool {
        ct_eq(&self.compute_mac(key), &self.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SipKey {
        SipKey {
            k0: 0x1111_2222_3333_4444,
            k1: 0x5555_6666_7777_8888,
        }
    }

    fn sample() -> Header {
        let mut h = Header::request(0xdead_beef, 3, 7, 2);
        h.set_sequence(0x0102_0304_0506_0708);
        h.set_tx_timestamp_ns(123_456_789);
        h.set_generation(42);
        h.node_state = node_state::RUNNING;
        h.set_packages(0b1011);
        h.seal(key());
        h
    }

    #[test]
    fn encode_decode_round_trip() {
        let h = sample();
        let bytes = *h.as_bytes();
        let back = Header::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.cluster_id(), 0xdead_beef);
        assert_eq!(back.sender_id(), 3);
        assert_eq!(back.target_id(), 7);
        assert_eq!(back.link_id, 2);
        assert_eq!(back.sequence(), 0x0102_0304_0506_0708);
        assert_eq!(back.tx_timestamp_ns(), 123_456_789);
        assert_eq!(back.generation(), 42);
        assert_eq!(back.packages(), 0b1011);
        assert_eq!(back.kind(), Some(Kind::Request));
        assert!(back.verify(key()));
        // Network byte order on the wire.
        assert_eq!(&bytes[8..12], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&bytes[12..14], &[0, 3]);
        assert_eq!(&bytes[0..4], b"HBT1");
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = *sample().as_bytes();
        for n in 0..HEADER_LEN {
            assert_eq!(
                Header::decode(&bytes[..n]),
                Err(HeaderError::Length),
                "len {n}"
            );
        }
        let mut long = [0u8; HEADER_LEN + 1];
        long[..HEADER_LEN].copy_from_slice(&bytes);
        assert_eq!(Header::decode(&long), Err(HeaderError::Length));
    }

    #[test]
    fn bad_magic_version_kind_rejected() {
        let mut b = *sample().as_bytes();
        b[0] = b'X';
        assert_eq!(Header::decode(&b), Err(HeaderError::Magic));
        let mut b = *sample().as_bytes();
        b[4] = 9;
        assert_eq!(Header::decode(&b), Err(HeaderError::Version));
        let mut b = *sample().as_bytes();
        b[5] = 0;
        assert_eq!(Header::decode(&b), Err(HeaderError::Kind));
    }

    #[test]
    fn any_flipped_bit_fails_the_mac() {
        let h = sample();
        for byte in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut b = *h.as_bytes();
                b[byte] ^= 1 << bit;
                let x = Header::from_bytes(&b);
                assert!(!x.verify(key()), "byte {byte} bit {bit}");
            }
        }
        let other = SipKey { k0: 1, k1: 2 };
        assert!(!h.verify(other));
    }

    #[test]
    fn reply_swaps_ids() {
        let mut h = sample();
        h.make_reply();
        assert_eq!(h.kind(), Some(Kind::Reply));
        assert_eq!(h.sender_id(), 7);
        assert_eq!(h.target_id(), 3);
        assert!(!h.verify(key()));
        h.seal(key());
        assert!(h.verify(key()));
    }
}
