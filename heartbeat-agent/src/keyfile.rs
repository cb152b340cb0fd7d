//! Cluster key files: generation (`keygen`), reading and permission checks.
//!
//! A key file is text: `#` comment lines and blank lines are ignored, the
//! first remaining line holds the current 128-bit SipHash key as 32 hex
//! digits, an optional second line holds the next key (for rotation). A `#`
//! after a key starts a comment too. The file must not be readable by group
//! or other (mode `& 0o077 == 0`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Length of one key in bytes (SipHash-2-4 uses 128-bit keys).
pub const KEY_LEN: usize = 16;

/// Largest key file accepted; a real one is under 200 bytes.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// The keys of a cluster: the current one and, during a rotation, the next.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    pub current: [u8; KEY_LEN],
    pub next: Option<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for ClusterKeys {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("current", &"<redacted>")
            .field("next", &self.next.map(|_| "<redacted>"))
            .finish()
    }
}

/// What can go wrong with a key file. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {}: not found", path.display())]
    NotFound { path: PathBuf },
    /// `error` is shown in the message and deliberately not a `source`, so
    /// that a chain printer does not repeat it.
    #[error("key file {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("key file {}: already exists; refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error(
        "key file {}: mode {mode:04o} lets group/other read it; chmod 600 {}",
        path.display(),
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("key file {}: line {line}: {problem}", path.display())]
    Format {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("key file {}: no key found (expected a line of 32 hex digits)", path.display())]
    Empty { path: PathBuf },
    #[error("key file {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot get random bytes for a new key: {0}")]
    Random(#[source] io::Error),
}

/// Makes a new current key from the kernel's random source (no next key).
pub fn generate() -> Result<ClusterKeys, KeyError> {
    let mut current = [0u8; KEY_LEN];
    fill_random(&mut current).map_err(KeyError::Random)?;
    Ok(ClusterKeys {
        current,
        next: None,
    })
}

/// Fills `buf` with getrandom(2), falling back to /dev/urandom on kernels
/// without the system call.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for
        // the duration of the call; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) => {
                    return File::open("/dev/urandom")?.read_exact(&mut buf[done..]);
                }
                _ => return Err(err),
            }
        }
        // `n` is non-negative and at most `rest.len()` here.
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

/// Generates a key and writes it to a new file `path` with mode 0600.
/// Refuses to overwrite an existing file; removes a half-written file.
pub fn write_new(path: &Path) -> Result<(), KeyError> {
    let keys = generate()?;
    let io_err = |error| KeyError::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io_err(e)
            }
        })?;
    let text = format!(
        "# heartbeat cluster key, made by `heartbeat-agent keygen`.\n\
         # Copy it to every node of the cluster; keep it mode 0600.\n{}",
        format(&keys)
    );
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // Best effort: do not leave a truncated key behind.
        let _ = std::fs::remove_file(path);
        return Err(io_err(e));
    }
    Ok(())
}

/// Reads and checks a key file: it must exist, be a regular file not
/// readable by group/other, and hold one or two keys of 32 hex digits.
///
/// The file's type is checked before it is opened (opening a FIFO for
/// reading would block until a writer appears), it is opened non-blocking
/// all the same, and checked again through the open descriptor so that a
/// swap between the two checks is caught.
pub fn read(path: &Path) -> Result<ClusterKeys, KeyError> {
    let io_err = |error| KeyError::Io {
        path: path.to_owned(),
        error,
    };
    let not_found_or = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            KeyError::NotFound {
                path: path.to_owned(),
            }
        } else {
            io_err(e)
        }
    };
    let before = std::fs::metadata(path).map_err(not_found_or)?;
    if !before.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(not_found_or)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() || meta.ino() != before.ino() || meta.dev() != before.dev() {
        return Err(KeyError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    parse(&text).map_err(|e| match e {
        ParseError::Empty => KeyError::Empty {
            path: path.to_owned(),
        },
        ParseError::Line { line, problem } => KeyError::Format {
            path: path.to_owned(),
            line,
            problem,
        },
    })
}

enum ParseError {
    Empty,
    Line { line: usize, problem: String },
}

/// Parses the text of a key file.
fn parse(text: &str) -> Result<ClusterKeys, ParseError> {
    let mut keys: Vec<[u8; KEY_LEN]> = Vec::with_capacity(2);
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if keys.len() == 2 {
            return Err(ParseError::Line {
                line,
                problem: "a key file holds at most two keys (current, then next)".to_owned(),
            });
        }
        let key = parse_key(content).map_err(|problem| ParseError::Line { line, problem })?;
        keys.push(key);
    }
    match keys.as_slice() {
        [] => Err(ParseError::Empty),
        [current] => Ok(ClusterKeys {
            current: *current,
            next: None,
        }),
        [current, next, ..] => Ok(ClusterKeys {
            current: *current,
            next: Some(*next),
        }),
    }
}

/// Parses one key of exactly 32 hex digits. The message never echoes the text.
fn parse_key(s: &str) -> Result<[u8; KEY_LEN], String> {
    const EXPECTED: &str = "expected 32 hex digits (128 bits)";
    if let Some((pos, _)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        let column = s[..pos].chars().count() + 1;
        return Err(format!(
            "{EXPECTED}, found a character that is not a hex digit at position {column}"
        ));
    }
    // Only ASCII hex digits are left, so bytes == characters.
    if s.len() != 2 * KEY_LEN {
        return Err(format!("{EXPECTED}, found {}", s.len()));
    }
    let mut key = [0u8; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    if key == [0u8; KEY_LEN] {
        return Err("the all-zero key is not allowed; run `heartbeat-agent keygen`".to_owned());
    }
    Ok(key)
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// The key lines of a key file: 32 lowercase hex digits per key, the current
/// key first, each line ending in a newline.
pub fn format(keys: &ClusterKeys) -> String {
    let mut out = String::with_capacity(2 * (2 * KEY_LEN + 1));
    for key in std::iter::once(&keys.current).chain(keys.next.as_ref()) {
        for b in key {
            out.push_str(&std::format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("heartbeat-keyfile-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).expect("create temp dir");
            Self(dir)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const K1: &str = "00112233445566778899aabbccddeeff";
    const K2: &str = "ffeeddccbbaa99887766554433221100";

    #[test]
    fn generate_is_random() {
        let a = generate().expect("generate");
        let b = generate().expect("generate");
        assert_ne!(a.current, b.current);
        assert_ne!(a.current, [0; KEY_LEN]);
        assert_eq!(a.next, None);
    }

    #[test]
    fn write_new_then_read_round_trips() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        write_new(&path).expect("write_new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        let keys = read(&path).expect("read");
        let text = std::fs::read_to_string(&path).expect("read text");
        assert!(text.ends_with(&format(&keys)), "{text}");
        // Never overwrites.
        let err = write_new(&path).expect_err("second write_new");
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(read(&path).expect("read again"), keys);
    }

    #[test]
    fn format_parse_round_trip_with_next() {
        let keys = ClusterKeys {
            current: [0xab; KEY_LEN],
            next: Some([0x01; KEY_LEN]),
        };
        let text = format(&keys);
        assert_eq!(
            text,
            "abababababababababababababababab\n01010101010101010101010101010101\n"
        );
        assert!(parse(&text).ok() == Some(keys));
    }

    #[test]
    fn comments_blank_lines_and_upper_case() {
        let text = format!(
            "# comment\n\n   {}  # trailing\n# next:\n{K2}\n",
            K1.to_uppercase()
        );
        let keys = parse(&text).ok().expect("parses");
        assert_eq!(keys.current[0], 0x00);
        assert_eq!(keys.current[15], 0xff);
        assert_eq!(keys.next.map(|k| k[0]), Some(0xff));
    }

    #[test]
    fn bad_lengths_and_characters() {
        let dir = TempDir::new();
        for (text, line, wanted) in [
            ("0011", 1, "expected 32 hex digits (128 bits), found 4"),
            (
                "# c\n00112233445566778899aabbccddeeff00\n",
                2,
                "expected 32 hex digits (128 bits), found 34",
            ),
            (
                "00112233445566778899aabbccddeefg",
                1,
                "not a hex digit at position 32",
            ),
            (
                "0011 2233445566778899aabbccddeeff",
                1,
                "not a hex digit at position 5",
            ),
            ("00000000000000000000000000000000", 1, "all-zero key"),
        ] {
            let path = dir.write("k", text, 0o600);
            let err = read(&path).expect_err(text);
            let msg = err.to_string();
            assert!(
                matches!(err, KeyError::Format { line: l, .. } if l == line),
                "{msg}"
            );
            assert!(msg.contains(wanted), "{msg}");
            assert!(
                msg.starts_with(&format!("key file {}: line {line}: ", path.display())),
                "{msg}"
            );
        }
        let path = dir.write("k3", &format!("{K1}\n{K2}\n{K1}\n"), 0o600);
        let msg = read(&path).expect_err("three keys").to_string();
        assert!(
            msg.contains("line 3: a key file holds at most two keys"),
            "{msg}"
        );
        let path = dir.write("empty", "# nothing\n\n", 0o600);
        let msg = read(&path).expect_err("empty").to_string();
        assert!(msg.contains("no key found"), "{msg}");
    }

    #[test]
    fn mode_check() {
        let dir = TempDir::new();
        let path = dir.write("k", K1, 0o644);
        let err = read(&path).expect_err("0644");
        assert_eq!(
            err.to_string(),
            format!(
                "key file {0}: mode 0644 lets group/other read it; chmod 600 {0}",
                path.display()
            )
        );
        let path = dir.write("k2", K1, 0o604);
        assert!(matches!(
            read(&path),
            Err(KeyError::Mode { mode: 0o604, .. })
        ));
        let path = dir.write("k3", K1, 0o400);
        assert!(read(&path).is_ok());
    }

    #[test]
    fn missing_file_and_directory() {
        let dir = TempDir::new();
        let path = dir.0.join("absent.key");
        let err = read(&path).expect_err("missing");
        assert_eq!(
            err.to_string(),
            format!("key file {}: not found", path.display())
        );
        let sub = dir.0.join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(matches!(read(&sub), Err(KeyError::NotAFile { .. })));
    }

    /// A FIFO is refused before it is opened: opening it for reading would
    /// block until a writer appears (this test hung before the fix).
    #[test]
    fn fifo_is_not_a_regular_file_and_never_blocks() {
        let dir = TempDir::new();
        let path = dir.0.join("fifo.key");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read(&p).map(|_| ()).map_err(|e| e.to_string()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("read() of a FIFO blocked");
        assert_eq!(
            result,
            Err(format!("key file {}: not a regular file", path.display()))
        );
    }

    #[test]
    fn io_errors_are_shown_once() {
        let dir = TempDir::new();
        let file = dir.write("plain", "x", 0o600);
        // A path below a regular file: ENOTDIR.
        let err = read(&file.join("k")).expect_err("below a file");
        assert!(matches!(err, KeyError::Io { .. }), "{err}");
        assert!(std::error::Error::source(&err).is_none(), "{err}");
        assert_eq!(err.to_string().matches("os error").count(), 1, "{err}");
    }

    #[test]
    fn debug_redacts() {
        let keys = ClusterKeys {
            current: [0xab; KEY_LEN],
            next: None,
        };
        assert!(!format!("{keys:?}").contains("ab, "));
        assert!(!format!("{keys:?}").contains("171"));
    }
}
