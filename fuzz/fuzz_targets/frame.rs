//! The frame walk: `frame::parse` + `checksums_ok` on any bytes, and a
//! differential check against `xdpwalk::walk` (the XDP program's own walk,
//! compiled for the host) wherever the two must agree.
#![no_main]

use heartbeat_common::{
    frame::{self, Addrs, FrameError, IPV4_LEN, UDP_LEN},
    wire::{DEFAULT_PORT, HEADER_LEN, Header},
    xdpwalk::{self, SEGMENT_LEN, Walk},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = frame::parse(data);
    if let Ok(p) = &parsed {
        assert!(p.payload + p.payload_len <= data.len());
        assert_eq!(p.payload, p.udp + UDP_LEN);
        let _ = frame::checksums_ok(data, p);
    }
    let walked = xdpwalk::walk(data, DEFAULT_PORT);
    match (&walked, &parsed) {
        // The program takes it as a heartbeat: frame::parse must find the
        // same datagram, to our port, carrying that header.
        (Walk::Heartbeat(w), Ok(p)) => {
            assert_eq!((w.addrs, w.l3, w.udp), (p.addrs, p.l3, p.udp));
            assert_eq!(p.dst_port, DEFAULT_PORT);
            assert_eq!(p.payload_len, HEADER_LEN);
            let h = Header::decode(&data[p.payload..p.payload + HEADER_LEN]);
            assert_eq!(h, Ok(w.header));
        }
        (Walk::Heartbeat(_), Err(e)) => panic!("XDP walk accepts, frame::parse says {e:?}"),
        // Passed as not ours: frame::parse rejects it or it goes elsewhere.
        (Walk::NotHeartbeat, Ok(p)) => assert_ne!(p.dst_port, DEFAULT_PORT),
        (Walk::NotHeartbeat, Err(_)) => {}
        // To our port but not a heartbeat: the headers up to UDP were fine.
        (Walk::Membership | Walk::Malformed, Ok(p)) => {
            assert_eq!(p.dst_port, DEFAULT_PORT);
            if walked == Walk::Malformed {
                // frame::parse plus the length rules of the program would
                // have accepted it: then something else must be wrong.
                let ip_len_ok = match p.addrs {
                    Addrs::V4 { .. } => {
                        usize::from(u16::from_be_bytes([data[p.l3 + 2], data[p.l3 + 3]]))
                            == IPV4_LEN + SEGMENT_LEN
                    }
                    Addrs::V6 { .. } => {
                        usize::from(u16::from_be_bytes([data[p.l3 + 4], data[p.l3 + 5]]))
                            == SEGMENT_LEN
                    }
                };
                if ip_len_ok && p.payload_len == HEADER_LEN {
                    assert!(
                        Header::decode(&data[p.payload..p.payload + HEADER_LEN]).is_err(),
                        "XDP walk drops a frame frame::parse and Header::decode accept"
                    );
                }
            }
        }
        (Walk::Membership | Walk::Malformed, Err(e)) => {
            assert_eq!(*e, FrameError::BadLength, "walk {walked:?}")
        }
    }
});
