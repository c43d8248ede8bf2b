//! Keys, values and time: the 16-byte keys, the 64-byte values (and the payload that
//! yukicomm stores as 64 bytes), checking a value read back, the monotonic clock every
//! process shares, and a process's resident memory.

use std::fmt::Write as _;
use std::path::PathBuf;

use yukicomm::Payload;

use crate::support::{io, other};
use crate::Result;

/// Bytes of a value as stored (and of a published message).
pub const VALUE: usize = 64;
/// Bytes of the yukicomm payload whose MessagePack encoding is `VALUE` bytes.
pub const PAYLOAD: usize = VALUE - 2;
/// Bytes of a key.
pub const KEY: usize = 16;

/// `prefix` (4 bytes) and `n` in 12 digits: 16 bytes.
pub fn key_into(buf: &mut String, prefix: &str, n: u64) {
    buf.clear();
    let _ = write!(buf, "{prefix}{n:012}");
    debug_assert_eq!(buf.len(), KEY);
}

/// Key `n` under `prefix`, as a new string.
pub fn key(prefix: &str, n: u64) -> String {
    let mut k = String::with_capacity(KEY);
    key_into(&mut k, prefix, n);
    k
}

/// The value of key (or message) `n`: `n` in its first 8 bytes, then a pattern.
pub fn value(n: u64) -> [u8; VALUE] {
    let mut v = [0u8; VALUE];
    v[..8].copy_from_slice(&n.to_le_bytes());
    for (j, b) in v[8..].iter_mut().enumerate() {
        *b = (n as u8).wrapping_add(j as u8) ^ 0x5A;
    }
    v
}

/// The yukicomm payload of key (or message) `n`: its value's first `PAYLOAD` bytes.
pub fn payload(n: u64) -> Payload {
    Payload::from(value(n)[..PAYLOAD].to_vec())
}

/// Checks that `got`, read back from `key`, is the first `len` bytes of value `n`.
pub fn check_value(key: &str, n: u64, got: Option<&[u8]>, len: usize) -> Result<()> {
    match got {
        Some(b) if b == &value(n)[..len] => Ok(()),
        Some(b) => Err(other(format!(
            "GET {key}: wrong value read back ({} bytes)",
            b.len()
        ))),
        None => Err(other(format!("GET {key}: the key is missing"))),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Resident set size of this process (`None`) or of `pid`, in bytes.
pub fn rss(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        None => PathBuf::from("/proc/self/status"),
        Some(p) => PathBuf::from(format!("/proc/{p}/status")),
    };
    let status = std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| other(format!("no VmRSS in {}", path.display())))
}
