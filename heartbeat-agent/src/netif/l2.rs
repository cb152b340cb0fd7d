//! Layer-2 frames the network manager sends from a card: poll requests to
//! the link's other card, and the announcements of a moved address
//! (gratuitous ARP and unsolicited neighbour advertisements, built by
//! `packages::addresses`).

use heartbeat_common::nic_poll::{ETH_LEN, ETHERTYPE, FRAME_LEN, HDR_LEN, KIND_REQUEST, MAGIC};

pub use crate::packages::addresses::{PacketSocket, announcement};

/// What a poll request carries.
#[derive(Clone, Copy, Debug)]
pub struct Poll {
    pub cluster_id: u32,
    pub node: u16,
    pub from: (u32, [u8; 6]),
    pub to: (u32, [u8; 6]),
    pub seq: u32,
    pub tx_ns: u64,
}

/// A poll request frame from card `from` to card `to`.
pub fn poll_frame(p: &Poll) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&p.to.1);
    f[6..12].copy_from_slice(&p.from.1);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let h = &mut f[ETH_LEN..ETH_LEN + HDR_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&p.cluster_id.to_le_bytes());
    h[8..10].copy_from_slice(&p.node.to_le_bytes());
    h[10] = KIND_REQUEST;
    h[12..16].copy_from_slice(&p.from.0.to_le_bytes());
    h[16..20].copy_from_slice(&p.to.0.to_le_bytes());
    h[20..24].copy_from_slice(&p.seq.to_le_bytes());
    h[24..32].copy_from_slice(&p.tx_ns.to_le_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_common::nic_poll::PollHdr;

    #[test]
    fn poll_frames_have_the_program_s_layout() {
        let f = poll_frame(&Poll {
            cluster_id: 7,
            node: 3,
            from: (11, [2, 0, 0, 0, 0, 1]),
            to: (12, [2, 0, 0, 0, 0, 2]),
            seq: 5,
            tx_ns: 99,
        });
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        // SAFETY: PollHdr has alignment 1 and the slice holds HDR_LEN bytes.
        let h: PollHdr = unsafe { core::ptr::read_unaligned(f[ETH_LEN..].as_ptr().cast()) };
        assert_eq!(h.magic, MAGIC);
        assert_eq!(u32::from_le_bytes(h.cluster_id), 7);
        assert_eq!(u16::from_le_bytes(h.node), 3);
        assert_eq!(h.kind, KIND_REQUEST);
        assert_eq!(u32::from_le_bytes(h.from_ifindex), 11);
        assert_eq!(u32::from_le_bytes(h.to_ifindex), 12);
        assert_eq!(u64::from_le_bytes(h.tx_ns), 99);
        assert_eq!(u64::from_le_bytes(h.answer_ns), 0);
    }
}
