//! The agent's persisted state (`cluster.state_file`): the highest
//! membership epoch this node promised, and its incarnation (a start
//! counter raised at every agent start). Both must survive restarts: epochs
//! never go back, and membership messages of an older incarnation are
//! replays.
//!
//! The file is three `key = value` lines, written atomically (a temporary
//! file in the same directory, fsync, rename, fsync of the directory) so a
//! crash leaves the old or the new state, never a torn one. A missing file
//! is a fresh node (epoch 0, incarnation 0); an unreadable or malformed one
//! is an error naming the file, never silently reset (resetting the epoch
//! could let this node accept an old view).
//!
//! **Reserved epochs.** A durable write costs 0.5–1 ms here (more under
//! I/O load), and the membership round needs the coordinator's before it
//! proposes and each member's before it acks: two in a row on the path
//! from a failure to the agreed view. So the file holds `reserved`, an
//! upper bound of every epoch promised: a promise at or below it needs no
//! write; one above it writes `reserved = epoch + RESERVE`. A start reads
//! the bound as its promise (epochs never go back; after a crash the next
//! view's epoch jumps by up to `RESERVE`), and a clean stop (also an
//! announced restart) writes the exact epoch back, so that the next agent
//! can adopt its peers' view within the restart window (like the block
//! allocation of sequence numbers in Chubby-style lock services).
//!
//! The reservation is refilled ahead of need: once less than half of it is
//! left, the cluster task writes a new one ([`StateFile::refill`]) after a
//! round has ended, while nothing waits on it, so that a promise inside a
//! round writes only when an epoch jumps by more than half a reservation
//! at once (measured: the write on the path cost a 2.4–2.8 ms slow round in
//! one trial of ~30 of the membership bench).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use heartbeat_cluster::Epoch;
use thiserror::Error;

/// What is persisted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The highest epoch promised (read back: the reservation).
    pub epoch: Epoch,
    pub incarnation: u32,
}

/// Epochs reserved by one durable write.
pub const RESERVE: u64 = 64;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state_file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state_file {path}: line {line}: {what} (fix or remove the file; removing it restarts the epoch count at 0)"
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        what: String,
    },
}

/// The state file of this node. Dropping it writes the exact epoch back
/// (a clean stop).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    current: Persisted,
    /// What the file holds as the bound of promised epochs.
    reserved: Epoch,
}

/// Longest state file read (it is two short lines).
const MAX_LEN: u64 = 4096;

fn parse(path: &Path, text: &str) -> Result<Persisted, StateError> {
    let bad = |line: usize, what: &str| StateError::Malformed {
        path: path.to_owned(),
        line,
        what: what.to_owned(),
    };
    let mut p = Persisted::default();
    let mut reserved = Epoch(0);
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| bad(i + 1, "expected `key = value`"))?;
        match k.trim() {
            "epoch" => {
                p.epoch = Epoch(
                    v.trim()
                        .parse()
                        .map_err(|_| bad(i + 1, "epoch is not a number"))?,
                );
            }
            "reserved" => {
                reserved = Epoch(
                    v.trim()
                        .parse()
                        .map_err(|_| bad(i + 1, "reserved is not a number"))?,
                );
            }
            "incarnation" => {
                p.incarnation = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(i + 1, "incarnation is not a number"))?;
            }
            _ => {
                return Err(bad(
                    i + 1,
                    "unknown key (expected epoch, reserved or incarnation)",
                ));
            }
        }
    }
    // Any epoch up to the reservation may have been promised.
    p.epoch = p.epoch.max(reserved);
    Ok(p)
}

impl StateFile {
    /// Reads the state (a missing file is a fresh node).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let current = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(io(e)),
            Ok(m) if !m.is_file() => {
                return Err(io(std::io::Error::other("not a regular file")));
            }
            Ok(m) if m.len() > MAX_LEN => {
                return Err(io(std::io::Error::other("larger than 4 KiB")));
            }
            Ok(_) => parse(path, &fs::read_to_string(path).map_err(io)?)?,
        };
        Ok(Self {
            path: path.to_owned(),
            current,
            reserved: current.epoch,
        })
    }

    pub fn current(&self) -> Persisted {
        self.current
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raises the incarnation for this start and persists it.
    pub fn next_incarnation(&mut self) -> Result<u32, StateError> {
        let mut p = self.current;
        p.incarnation = p.incarnation.wrapping_add(1).max(1);
        self.write(p, self.reserved)?;
        Ok(p.incarnation)
    }

    /// Makes `epoch` durable as promised (never lower than before): a
    /// write only when it is above the reservation.
    pub fn save_epoch(&mut self, epoch: Epoch) -> Result<(), StateError> {
        if epoch <= self.current.epoch {
            return Ok(());
        }
        if epoch <= self.reserved {
            self.current.epoch = epoch;
            return Ok(());
        }
        let mut p = self.current;
        p.epoch = epoch;
        self.write(p, Epoch(epoch.0.saturating_add(RESERVE)))
    }

    /// Whether less than half of the reservation is left above the
    /// promised epoch (a [`StateFile::refill`] is due).
    pub fn running_low(&self) -> bool {
        self.reserved.0.saturating_sub(self.current.epoch.0) < RESERVE / 2
    }

    /// Writes a fresh reservation, `RESERVE` above the promised epoch (the
    /// bound only grows: every promise stays covered).
    pub fn refill(&mut self) -> Result<(), StateError> {
        let reserved = Epoch(self.current.epoch.0.saturating_add(RESERVE)).max(self.reserved);
        self.write(self.current, reserved)
    }

    /// Writes the exact epoch back (a clean stop), if the file holds more.
    pub fn settle(&mut self) -> Result<(), StateError> {
        if self.reserved == self.current.epoch {
            return Ok(());
        }
        self.write(self.current, self.current.epoch)
    }

    fn write(&mut self, p: Persisted, reserved: Epoch) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        // The directory was made at open; never recreate it later (a
        // removed directory is an error, not something to bring back).
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        {
            let mut f = fs::File::create(&tmp).map_err(io)?;
            write!(
                f,
                "# heartbeat-agent state: do not edit while the agent runs\nepoch = {}\nreserved = {}\nincarnation = {}\n",
                p.epoch.0, reserved.0, p.incarnation
            )
            .map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(e)
        })?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        self.current = p;
        self.reserved = reserved;
        Ok(())
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::warn!(error = %e, "cannot write the exact epoch back at stop; the next start assumes the reserved one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hb-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d.join("node.state")
    }

    #[test]
    fn incarnation_rises_and_epoch_never_goes_back_across_reopen() {
        let p = tmp("rise");
        let mut s = StateFile::open(&p).unwrap();
        assert_eq!(s.current(), Persisted::default());
        assert_eq!(s.next_incarnation().unwrap(), 1);
        s.save_epoch(Epoch(5)).unwrap();
        s.save_epoch(Epoch(3)).unwrap();
        drop(s);
        let mut s = StateFile::open(&p).unwrap();
        assert_eq!(s.current().epoch, Epoch(5));
        assert_eq!(s.next_incarnation().unwrap(), 2);
        assert_eq!(StateFile::open(&p).unwrap().current().incarnation, 2);
        let _ = fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn malformed_files_are_errors_naming_the_line() {
        let p = tmp("bad");
        fs::write(&p, "epoch = 3\nincarnation = x\n").unwrap();
        let e = StateFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("incarnation"), "{e}");
        fs::write(&p, "what = 1\n").unwrap();
        assert!(StateFile::open(&p).is_err());
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        assert!(
            StateFile::open(&p)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        let _ = fs::remove_dir_all(p.parent().unwrap());
    }

    fn file_epochs(p: &Path) -> String {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("epoch") || l.starts_with("reserved"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn epochs_are_reserved_in_blocks_and_settled_at_a_clean_stop() {
        let p = tmp("reserve");
        let mut s = StateFile::open(&p).unwrap();
        s.save_epoch(Epoch(5)).unwrap();
        assert_eq!(file_epochs(&p), "epoch = 5,reserved = 69");
        // Promises inside the reservation write nothing.
        s.save_epoch(Epoch(60)).unwrap();
        assert_eq!(file_epochs(&p), "epoch = 5,reserved = 69");
        assert_eq!(s.current().epoch, Epoch(60));
        // A crash: the next start assumes everything reserved was promised.
        let crashed = std::mem::ManuallyDrop::new(s);
        assert_eq!(StateFile::open(&p).unwrap().current().epoch, Epoch(69));
        // (that open settled nothing: it promised nothing new)
        assert_eq!(file_epochs(&p), "epoch = 5,reserved = 69");
        // A clean stop writes the exact epoch back.
        let mut s = std::mem::ManuallyDrop::into_inner(crashed);
        s.save_epoch(Epoch(70)).unwrap();
        assert_eq!(file_epochs(&p), "epoch = 70,reserved = 134");
        drop(s);
        assert_eq!(file_epochs(&p), "epoch = 70,reserved = 70");
        assert_eq!(StateFile::open(&p).unwrap().current().epoch, Epoch(70));
        // A file of an older agent (no reservation) reads as before.
        fs::write(&p, "epoch = 9\nincarnation = 3\n").unwrap();
        let s = StateFile::open(&p).unwrap();
        assert_eq!(s.current().epoch, Epoch(9));
        drop(s);
        let _ = fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn the_reservation_is_refilled_ahead_of_need_and_only_grows() {
        let p = tmp("refill");
        let mut s = StateFile::open(&p).unwrap();
        s.save_epoch(Epoch(5)).unwrap();
        assert!(!s.running_low());
        // Past half of the reservation: a refill is due.
        s.save_epoch(Epoch(40)).unwrap();
        assert!(s.running_low());
        s.refill().unwrap();
        assert_eq!(file_epochs(&p), "epoch = 40,reserved = 104");
        assert!(!s.running_low());
        // The next promises up to the new bound write nothing.
        s.save_epoch(Epoch(100)).unwrap();
        assert_eq!(file_epochs(&p), "epoch = 40,reserved = 104");
        // A crash after a refill: the start assumes the whole bound.
        let crashed = std::mem::ManuallyDrop::new(s);
        assert_eq!(StateFile::open(&p).unwrap().current().epoch, Epoch(104));
        let s = std::mem::ManuallyDrop::into_inner(crashed);
        drop(s);
        assert_eq!(file_epochs(&p), "epoch = 100,reserved = 100");
        let _ = fs::remove_dir_all(p.parent().unwrap());
    }
}
