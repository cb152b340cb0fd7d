//! Checks of a configuration against the local host, for one node: what the
//! host must provide (interfaces, the key file) and what `check-config
//! --node` can check without side effects (the metrics port can be bound,
//! the journal, state file and control socket paths can be used). Nothing
//! here creates, opens for writing or deletes a file.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use nix::unistd::{AccessFlags, access};

use super::{ClusterConfig, ConfigError, MAX_SHOWN_LEN, MAX_SOCKET_PATH, NodeConfig, shorten_to};

/// A path in a message, cut to a readable length.
fn shown(path: &Path) -> String {
    shorten_to(&path.to_string_lossy(), 2 * MAX_SHOWN_LEN).into_owned()
}
use crate::keyfile;

impl ClusterConfig {
    /// Checks what this host must provide for `local`: its interfaces
    /// exist, and the key file exists, is a private regular file and well
    /// formed.
    pub fn check_system(&self, local: &NodeConfig) -> Result<(), ConfigError> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.id == local.id)
            .unwrap_or(0);
        for (j, link) in local.links.iter().enumerate() {
            let key = format!("node[{index}].link[{j}].interface");
            self.check_interface(&key, &link.interface)?;
            if let Some(standby) = &link.standby {
                let key = format!("node[{index}].link[{j}].standby");
                self.check_interface(&key, standby)?;
                self.check_standby_idle(&key, standby, local)?;
            }
        }
        keyfile::read(&self.cluster.key_file).map_err(|error| ConfigError::KeyFile {
            place: self.place_of("cluster.key_file"),
            key: "cluster.key_file".to_owned(),
            error,
        })?;
        Ok(())
    }

    /// Checks, without side effects, what `local`'s agent will use: the
    /// metrics address can be bound now (bound and released at once), the
    /// control socket path is free or an existing socket (the agent never
    /// deletes a file it did not create), the journal and state file are
    /// not directories (nor FIFOs, which would block the agent) and their
    /// directories exist or can be created, and are writable.
    pub fn check_resources(&self, local: &NodeConfig) -> Result<(), ConfigError> {
        let paths = self.local_paths(local);
        if let Some(m) = &self.metrics
            && let Err(e) = TcpListener::bind(m.listen)
        {
            let why = match e.kind() {
                io::ErrorKind::AddrInUse => format!(
                    "cannot listen on {}: the port is in use (by another program, or by this \
                     node's agent when it is running)",
                    m.listen
                ),
                io::ErrorKind::AddrNotAvailable => format!(
                    "cannot listen on {}: the address is not one of this host's",
                    m.listen
                ),
                _ => format!("cannot listen on {}: {e}", m.listen),
            };
            return Err(self.invalid_at("metrics.listen", why));
        }

        let socket = &paths.control_socket;
        let key = "control.socket";
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(self.invalid_at(
                key,
                format!(
                    "the socket path {} is {len} bytes long for node {}; Unix sockets allow at most {MAX_SOCKET_PATH}",
                    shown(socket),
                    local.name
                ),
            ));
        }
        match std::fs::symlink_metadata(socket) {
            Ok(m) if m.file_type().is_socket() => {}
            Ok(m) => {
                return Err(self.invalid_at(
                    key,
                    format!(
                        "{} exists and is {}, not a socket; the agent never deletes a file it did \
                         not create: remove it or choose another path",
                        shown(socket),
                        kind(&m)
                    ),
                ));
            }
            Err(e) if absent(&e) => {
                usable_dir(socket).map_err(|m| self.invalid_at(key, m))?;
            }
            Err(e) => {
                return Err(self.invalid_at(key, format!("cannot inspect {}: {e}", shown(socket))));
            }
        }

        if let Some(events) = &paths.events_file {
            check_file(events).map_err(|m| self.invalid_at("cluster.events_file", m))?;
        }
        check_file(&paths.state_file).map_err(|m| self.invalid_at("cluster.state_file", m))?;
        if let Some(device) = self.watchdog_device(local) {
            check_watchdog(&device).map_err(|m| self.watchdog_device_error(m))?;
        }
        Ok(())
    }

    /// A standby card has no address of its own: none but link-local ones
    /// and the ones the agent moves to it (the node's link and package
    /// addresses: an agent restarted while the standby carries its link
    /// finds them there).
    fn check_standby_idle(
        &self,
        key: &str,
        standby: &str,
        local: &NodeConfig,
    ) -> Result<(), ConfigError> {
        let ours = |ip: std::net::IpAddr| {
            local.links.iter().any(|l| l.address == ip)
                || self
                    .packages
                    .iter()
                    .any(|p| p.addresses.iter().any(|a| a.addr() == ip))
        };
        let addrs = match nix::ifaddrs::getifaddrs() {
            Ok(a) => a,
            Err(e) => {
                return Err(self.invalid_at(
                    key,
                    format!("cannot list the addresses of `{standby}`: {}", e.desc()),
                ));
            }
        };
        for a in addrs.filter(|a| a.interface_name == standby) {
            let Some(addr) = a.address else { continue };
            let ip: std::net::IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
                v4.ip().into()
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                if ip.is_unicast_link_local() {
                    continue;
                }
                ip.into()
            } else {
                continue;
            };
            if !ours(ip) {
                return Err(self.invalid_at(
                    key,
                    format!(
                        "the standby card `{standby}` has the address {ip}; a standby card must have no address of its own (the agent moves the link's addresses to it)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_interface(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        match nix::net::if_::if_nametoindex(name) {
            Ok(_) => Ok(()),
            Err(e) => {
                let message = if e == nix::errno::Errno::ENODEV {
                    format!("interface `{name}` does not exist on this host")
                } else {
                    format!("cannot look up interface `{name}`: {}", e.desc())
                };
                Err(self.invalid_at(key, message))
            }
        }
    }
}

/// The path does not exist (or a component of it is not a directory, which
/// [`usable_dir`] then names).
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// What a non-regular file is, for messages.
fn kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// A file the agent writes (journal, state file): when it exists it must be
/// a writable regular file (or a character device such as /dev/null);
/// otherwise its directory must be usable.
fn check_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_char_device() => access(path, AccessFlags::W_OK)
            .map_err(|e| format!("{} is not writable: {}", shown(path), e.desc())),
        Ok(m) if m.file_type().is_fifo() => Err(format!(
            "{} is a FIFO; opening it would block the agent until a reader appears: \
             choose a regular file",
            shown(path)
        )),
        Ok(m) => Err(format!(
            "{} is {}, not a regular file",
            shown(path),
            kind(&m)
        )),
        Err(e) if absent(&e) => usable_dir(path),
        Err(e) => Err(format!("cannot inspect {}: {e}", shown(path))),
    }
}

/// The directory of `path` exists and is writable, or can be created: its
/// nearest existing ancestor is a writable directory.
fn usable_dir(path: &Path) -> Result<(), String> {
    let mut dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    while let Some(d) = dir {
        match std::fs::metadata(d) {
            Ok(m) if m.is_dir() => {
                return access(d, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
                    format!(
                        "cannot create {}: directory {} is not writable: {}",
                        shown(path),
                        shown(d),
                        e.desc()
                    )
                });
            }
            Ok(m) => {
                return Err(format!(
                    "cannot create {}: {} is {}, not a directory",
                    shown(path),
                    shown(d),
                    kind(&m)
                ));
            }
            Err(e) if absent(&e) => dir = d.parent(),
            Err(e) => {
                return Err(format!("cannot inspect {}: {e}", shown(d)));
            }
        }
    }
    Ok(())
}

/// The watchdog device exists and is a character device (a real watchdog,
/// e.g. /dev/watchdog or softdog's). A FIFO or a regular file is accepted
/// too, as a stand-in for tests: the agent then warns that the timeout
/// cannot be set, and what it writes shows its feeding.
fn check_watchdog(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_fifo() || m.is_file() => {
            access(path, AccessFlags::W_OK)
                .map_err(|e| format!("{} is not writable: {}", shown(path), e.desc()))
        }
        Ok(m) => Err(format!(
            "{} is {}; expected a watchdog character device such as /dev/watchdog (a FIFO or regular file is accepted as a stand-in for tests)",
            shown(path),
            kind(&m)
        )),
        Err(e) if absent(&e) => Err(format!(
            "{} does not exist; load the watchdog driver (e.g. `modprobe softdog`) or name the right device",
            shown(path)
        )),
        Err(e) => Err(format!("cannot inspect {}: {e}", shown(path))),
    }
}
