//! bpffs pins of an announced restart: where they live, how they are made,
//! found, and removed.
//!
//! An agent that announces a restart pins the XDP program's links and every
//! map of its object under `<bpffs>/heartbeat/<cluster id>-<node id>/`
//! (one directory per node, so several agents on one machine never clash):
//! the maps under their own names, the links as `link-<interface>`. The
//! next agent adopts them and removes the pins (the objects then live as
//! long as its file descriptors, as usual); `heartbeat-agent detach`, a
//! SIGTERM or a start that finds them useless (window run out, another
//! configuration) removes them and detaches the links.
//!
//! The kernel fence of package addresses (issue #9) uses the same
//! directory and layout: when the node may run a package, the agent pins
//! its links (XDP, and TCX egress as `tcx-egress-<interface>`) and maps
//! right after attaching, so that a killed agent leaves the package
//! addresses dark rather than open; a graceful stop, `detach` or the next
//! agent removes them as above.
//!
//! The bpffs root is `/sys/fs/bpf` unless told otherwise; it is mounted if
//! nothing is mounted there. Note that `ip netns exec` gives the command a
//! fresh `/sys` without bpffs: agents run that way must share a bpffs
//! mounted elsewhere (`--bpffs DIR`), or each would mount its own, private
//! one, and the pins would vanish with the process.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use heartbeat_cluster::NodeId;
use thiserror::Error;

/// The default bpffs mount point.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Prefix of a pinned XDP link's file name: `xdp-native-<interface>` or
/// `xdp-generic-<interface>` (the attach mode, which the kernel does not
/// tell back).
pub const LINK_PREFIX: &str = "xdp-";
/// Prefix of a pinned TCX egress link's file name (`tcx-egress-<interface>`),
/// pinned for the kernel fence of package addresses (issue #9).
pub const TCX_PREFIX: &str = "tcx-egress-";

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

#[derive(Debug, Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a bpffs and mounting one there failed: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The pin directory of node `node` of cluster `cluster_id` under `bpffs`.
pub fn node_dir(bpffs: &Path, cluster_id: u32, node: NodeId) -> PathBuf {
    bpffs.join("heartbeat").join(format!("{cluster_id}-{node}"))
}

/// The pin path of the XDP link on `interface` attached in `mode`
/// ("native" or "generic").
pub fn link_pin(dir: &Path, mode: &str, interface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{mode}-{interface}"))
}

/// The pin path of the TCX egress link on `interface`.
pub fn tcx_pin(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("{TCX_PREFIX}{interface}"))
}

/// (mode, interface) of a pinned link's file name.
pub fn parse_link_pin(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(LINK_PREFIX)?;
    ["native", "generic"].into_iter().find_map(|m| {
        rest.strip_prefix(m)
            .and_then(|r| r.strip_prefix('-'))
            .filter(|i| !i.is_empty())
            .map(|i| (m, i))
    })
}

/// Whether `path` is the root of a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(name) = cstr(path) else { return false };
    // SAFETY: an all-zero statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a live out-buffer.
    let rc = unsafe { libc::statfs(name.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure a bpffs is mounted at `bpffs` (mounting one if not).
pub fn ensure_bpffs(bpffs: &Path) -> Result<(), PinError> {
    if is_bpffs(bpffs) {
        return Ok(());
    }
    fs::create_dir_all(bpffs).map_err(io_err(bpffs))?;
    let target = cstr(bpffs)?;
    // SAFETY: every pointer is a NUL-terminated string living across the
    // call; no mount data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            path: bpffs.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn cstr(path: &Path) -> Result<CString, PinError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| PinError::Io {
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// `union bpf_attr` for BPF_OBJ_PIN / BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<i64> {
    // SAFETY: `attr` points at a live, initialised attribute struct of
    // `size` bytes whose layout matches `cmd`'s part of `union bpf_attr`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Pins the BPF object (map, link) behind `fd` at `path`.
pub fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<(), PinError> {
    let name = cstr(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    bpf(
        BPF_OBJ_PIN,
        (&raw mut attr).cast(),
        std::mem::size_of::<ObjAttr>(),
    )
    .map(|_| ())
    .map_err(io_err(path))
}

/// Opens the BPF object pinned at `path`.
pub fn open_pin(path: &Path) -> Result<OwnedFd, PinError> {
    let name = cstr(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        ..ObjAttr::default()
    };
    let fd = bpf(
        BPF_OBJ_GET,
        (&raw mut attr).cast(),
        std::mem::size_of::<ObjAttr>(),
    )
    .map_err(io_err(path))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches the link behind `fd` at once, whoever else holds it
/// (BPF_LINK_DETACH): the program stops running on that hook.
pub fn detach_link(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct DetachAttr {
        link_fd: u32,
        _pad: u32,
    }
    let mut attr = DetachAttr {
        link_fd: fd.as_raw_fd() as u32,
        _pad: 0,
    };
    bpf(
        BPF_LINK_DETACH,
        (&raw mut attr).cast(),
        std::mem::size_of::<DetachAttr>(),
    )
    .map(|_| ())
}

/// The file names in a pin directory (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// (mode, interface) of every pinned XDP link in `dir`.
pub fn pinned_links(dir: &Path) -> Vec<(String, String)> {
    list(dir)
        .iter()
        .filter_map(|n| parse_link_pin(n).map(|(m, i)| (m.to_owned(), i.to_owned())))
        .collect()
}

/// What [`remove`] did.
#[derive(Debug, Default)]
pub struct Removed {
    /// Interfaces whose pinned XDP link was detached.
    pub detached: Vec<String>,
    /// Pins removed (links and maps).
    pub unpinned: usize,
}

/// Removes the node's pin directory: with `detach`, detaches every pinned
/// link first (the program stops answering at once; without, the links
/// live on as long as someone holds them), then removes every pin and the
/// directory. A directory that does not exist is nothing to do.
pub fn remove(dir: &Path, detach: bool) -> Result<Removed, PinError> {
    let mut out = Removed::default();
    if !dir.exists() {
        return Ok(out);
    }
    for name in list(dir) {
        let path = dir.join(&name);
        if detach && name.starts_with(TCX_PREFIX) {
            // The fence's egress links: detached as well, not reported.
            if let Ok(fd) = open_pin(&path)
                && let Err(e) = detach_link(std::os::fd::AsFd::as_fd(&fd))
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot detach a pinned link");
            }
        }
        if let Some((_, iface)) = parse_link_pin(&name).filter(|_| detach) {
            match open_pin(&path) {
                Ok(fd) => match detach_link(std::os::fd::AsFd::as_fd(&fd)) {
                    Ok(()) => out.detached.push(iface.to_owned()),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot detach a pinned link")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot open a pinned link"),
            }
        }
        fs::remove_file(&path).map_err(io_err(&path))?;
        out.unpinned += 1;
    }
    fs::remove_dir(dir).map_err(io_err(dir))?;
    // The parent `heartbeat` directory goes too once no node uses it.
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let d = node_dir(Path::new("/sys/fs/bpf"), 7, NodeId(2));
        assert_eq!(d, Path::new("/sys/fs/bpf/heartbeat/7-2"));
        assert_eq!(link_pin(&d, "native", "eth-0"), d.join("xdp-native-eth-0"));
        assert_eq!(
            parse_link_pin("xdp-native-eth-0"),
            Some(("native", "eth-0"))
        );
        assert_eq!(parse_link_pin("xdp-generic-x"), Some(("generic", "x")));
        assert_eq!(parse_link_pin("xdp-other-x"), None);
        assert_eq!(parse_link_pin("xdp-native-"), None);
        assert_eq!(parse_link_pin("LINKS"), None);
        assert_eq!(tcx_pin(&d, "eth1"), d.join("tcx-egress-eth1"));
        assert_eq!(parse_link_pin("tcx-egress-eth1"), None);
        assert_eq!(std::mem::size_of::<ObjAttr>(), 24);
    }
}
