//! The cards' ARP replies: Linux answers an ARP request on any card for any
//! of the host's addresses (the weak host model), so an idle standby on the
//! active card's segment would answer for the active card's address with
//! its own MAC, and peers would send their heartbeats to the wrong card.
//! The task sets `net.ipv4.conf.<card>.arp_ignore = 1` (answer only for
//! addresses configured on the receiving card) on both cards of every link
//! with a standby while it runs, and puts the previous values back when it
//! stops. The effective value is the larger of `all` and the card's, so
//! this works whatever `all` says, and never lowers it.
//!
//! `arp_announce` is left alone: it chooses the source address of the ARP
//! requests a card sends, and a card only sends them for the addresses it
//! carries (the standby has none until a switch moves them there).

use std::{fs, io, path::PathBuf};

/// The value that makes a card answer only for its own addresses.
const ARP_IGNORE: &str = "1";

fn path(card: &str) -> PathBuf {
    // Card names come from the validated configuration: no '/', and the
    // kernel refuses "." and "..".
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{card}/arp_ignore"))
}

fn read(card: &str) -> io::Result<String> {
    Ok(fs::read_to_string(path(card))?.trim().to_owned())
}

/// The values the task changed, to be put back.
#[derive(Debug, Default)]
pub struct ArpIgnore {
    /// (card, its value before the task changed it).
    saved: Vec<(String, String)>,
}

impl ArpIgnore {
    /// Makes `card` answer ARP only for its own addresses (when it does
    /// not already); remembers the first value it had.
    pub fn apply(&mut self, card: &str) -> io::Result<()> {
        let before = read(card)?;
        if before.parse::<u32>().is_ok_and(|v| v >= 1) {
            return Ok(());
        }
        fs::write(path(card), ARP_IGNORE)?;
        if !self.saved.iter().any(|(c, _)| c == card) {
            self.saved.push((card.to_owned(), before));
        }
        Ok(())
    }

    /// Puts the previous values back (on cards that still exist).
    pub fn restore(&mut self) {
        for (card, before) in self.saved.drain(..) {
            if let Err(e) = fs::write(path(&card), &before)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(card = %card, error = %e, "cannot restore arp_ignore");
            }
        }
    }
}

impl Drop for ArpIgnore {
    fn drop(&mut self) {
        self.restore();
    }
}
