//! One store, two faces: how a stored value (MessagePack) reads over RESP, and how a
//! value written over RESP is stored.
//!
//! Redis values are byte strings; the store's are MessagePack, as each client encoded
//! them. The mapping keeps the common cases plain both ways:
//!
//! | written over RESP | stored as (MessagePack) | read in Rust as |
//! |---|---|---|
//! | an integer in Redis's canonical form (`-12`, `0`, `42`; no `+`, no leading zero, fits `i64`) | int | `i64`, `u64`, ... |
//! | other valid UTF-8 | str | `String` |
//! | anything else | bin | `Payload`, `serde_bytes::ByteBuf` |
//!
//! Read over RESP, a stored int is its decimal digits, a str or bin its bytes; any other
//! value (a map, an array, a float, a bool, nil) is its MessagePack bytes as they are.
//!
//! ```
//! # use yukicomm_hub::resp::value::{from_resp, to_resp};
//! assert_eq!(to_resp(&from_resp(b"42")).as_ref(), b"42");
//! assert_eq!(from_resp(b"42"), vec![42u8]); // MessagePack positive fixint
//! assert_eq!(to_resp(&from_resp(b"hi")).as_ref(), b"hi");
//! ```

use std::borrow::Cow;

/// Parses Redis's canonical integer form (what `INCR` accepts): optional `-`, no `+`,
/// no leading zero, no spaces, within `i64`.
pub fn parse_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || neg) {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    s.parse::<i64>().ok()
}

/// The MessagePack form of a value written over RESP.
pub fn from_resp(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 5);
    append_from_resp(&mut out, b);
    out
}

/// [`from_resp`] into `out`, replacing what it held (its memory is reused).
pub fn from_resp_into(out: &mut Vec<u8>, b: &[u8]) {
    out.clear();
    append_from_resp(out, b);
}

/// Appends the MessagePack form of a value written over RESP to `out`.
pub fn append_from_resp(out: &mut Vec<u8>, b: &[u8]) {
    if let Some(n) = parse_int(b) {
        write_int(out, n);
    } else {
        // Lengths beyond u32 cannot reach here: bulk strings are far smaller.
        let len = b.len() as u32;
        let utf8 = std::str::from_utf8(b).is_ok();
        match (utf8, len) {
            (true, 0..=31) => out.push(0xa0 | len as u8),
            (true, 32..=0xff) => out.extend_from_slice(&[0xd9, len as u8]),
            (true, 0x100..=0xffff) => {
                out.push(0xda);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (true, _) => {
                out.push(0xdb);
                out.extend_from_slice(&len.to_be_bytes());
            }
            (false, 0..=0xff) => out.extend_from_slice(&[0xc4, len as u8]),
            (false, 0x100..=0xffff) => {
                out.push(0xc5);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (false, _) => {
                out.push(0xc6);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(b);
    }
}

/// A stored value as an integer, as `INCR` reads it: a MessagePack int within `i64`,
/// or a str or bin holding Redis's canonical integer form.
/// Any other value is read as its MessagePack bytes, as `GET` shows it.
pub fn as_int(v: &[u8]) -> Option<i64> {
    match plain(v) {
        Some(Plain::Int(n)) => Some(n),
        Some(Plain::UInt(n)) => i64::try_from(n).ok(),
        Some(Plain::Bytes(b)) => parse_int(b),
        None => parse_int(v),
    }
}

/// Appends `n` as the shortest MessagePack int (as `rmp_serde` writes an `i64`).
pub fn write_int(out: &mut Vec<u8>, n: i64) {
    match n {
        0..=127 => out.push(n as u8),
        -32..=-1 => out.push(n as i8 as u8),
        128..=0xff => out.extend_from_slice(&[0xcc, n as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        -128..=-33 => out.extend_from_slice(&[0xd0, n as i8 as u8]),
        -32768..=-129 => {
            out.push(0xd1);
            out.extend_from_slice(&(n as i16).to_be_bytes());
        }
        -2_147_483_648..=-32769 => {
            out.push(0xd2);
            out.extend_from_slice(&(n as i32).to_be_bytes());
        }
        _ if n > 0 => {
            out.push(0xcf);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        _ => {
            out.push(0xd3);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// What a stored value reads as over RESP: an int's digits, a str's or bin's bytes, or
/// else the MessagePack bytes themselves.
pub fn to_resp(v: &[u8]) -> Cow<'_, [u8]> {
    match plain(v) {
        Some(Plain::Bytes(b)) => Cow::Borrowed(b),
        Some(Plain::Int(n)) => Cow::Owned(n.to_string().into_bytes()),
        Some(Plain::UInt(n)) => Cow::Owned(n.to_string().into_bytes()),
        None => Cow::Borrowed(v),
    }
}

/// A stored value that has a plain RESP form.
enum Plain<'a> {
    Bytes(&'a [u8]),
    Int(i64),
    UInt(u64),
}

/// Reads `v` as exactly one MessagePack int, str or bin.
fn plain(v: &[u8]) -> Option<Plain<'_>> {
    let (&m, rest) = v.split_first()?;
    let be = |n: usize| -> Option<u64> {
        (rest.len() == n).then(|| rest.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    };
    let sized = |n: usize| -> Option<&[u8]> {
        let len = rest
            .get(..n)?
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        let body = &rest[n..];
        (body.len() == len).then_some(body)
    };
    Some(match m {
        0x00..=0x7f if rest.is_empty() => Plain::Int(i64::from(m)),
        0xe0..=0xff if rest.is_empty() => Plain::Int(i64::from(m as i8)),
        0xcc => Plain::UInt(be(1)?),
        0xcd => Plain::UInt(be(2)?),
        0xce => Plain::UInt(be(4)?),
        0xcf => Plain::UInt(be(8)?),
        0xd0 => Plain::Int(i64::from(be(1)? as u8 as i8)),
        0xd1 => Plain::Int(i64::from(be(2)? as u16 as i16)),
        0xd2 => Plain::Int(i64::from(be(4)? as u32 as i32)),
        0xd3 => Plain::Int(be(8)? as i64),
        0xa0..=0xbf => {
            let len = usize::from(m & 0x1f);
            (rest.len() == len).then_some(Plain::Bytes(rest))?
        }
        0xd9 | 0xc4 => Plain::Bytes(sized(1)?),
        0xda | 0xc5 => Plain::Bytes(sized(2)?),
        0xdb | 0xc6 => Plain::Bytes(sized(4)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_integers_only() {
        for (s, n) in [("0", Some(0)), ("-1", Some(-1)), ("42", Some(42))] {
            assert_eq!(parse_int(s.as_bytes()), n);
        }
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for s in [
            "",
            "-",
            "+1",
            "01",
            "-0",
            " 1",
            "1 ",
            "1.0",
            "9223372036854775808",
            "abc",
        ] {
            assert_eq!(parse_int(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn round_trips_and_rust_types() {
        for s in [&b"42"[..], b"-7", b"hello", b"", b"007", b"\xff\x00bin"] {
            assert_eq!(to_resp(&from_resp(s)).as_ref(), s);
        }
        let n: i64 = rmp_serde::from_slice(&from_resp(b"-300")).unwrap();
        assert_eq!(n, -300);
        let s: String = rmp_serde::from_slice(&from_resp(b"hi there")).unwrap();
        assert_eq!(s, "hi there");
        let b: serde_bytes::ByteBuf = rmp_serde::from_slice(&from_resp(b"\xff\xfe")).unwrap();
        assert_eq!(b.as_ref(), b"\xff\xfe");
        // Rust's encodings read plainly.
        for n in [0i64, 5, -5, 200, -200, 70_000, -70_000, i64::MAX, i64::MIN] {
            let v = rmp_serde::to_vec(&n).unwrap();
            assert_eq!(to_resp(&v).as_ref(), n.to_string().as_bytes());
        }
        for n in [
            0i64,
            5,
            -5,
            200,
            -200,
            70_000,
            -70_000,
            1 << 40,
            i64::MAX,
            i64::MIN,
        ] {
            let mut ours = Vec::new();
            write_int(&mut ours, n);
            assert_eq!(ours, rmp_serde::to_vec(&n).unwrap(), "{n}");
        }
        let v = rmp_serde::to_vec(&u64::MAX).unwrap();
        assert_eq!(to_resp(&v).as_ref(), u64::MAX.to_string().as_bytes());
        let long = "x".repeat(70_000);
        assert_eq!(
            to_resp(&rmp_serde::to_vec(&long).unwrap()).as_ref(),
            long.as_bytes()
        );
        // Anything else is its MessagePack bytes.
        let v = rmp_serde::to_vec(&(1, 2)).unwrap();
        assert_eq!(to_resp(&v).as_ref(), &v[..]);
        let v = rmp_serde::to_vec(&1.5f64).unwrap();
        assert_eq!(to_resp(&v).as_ref(), &v[..]);
        // Truncated or trailing bytes are not plain.
        assert_eq!(to_resp(&[0xa3, b'a']).as_ref(), &[0xa3, b'a']);
        assert_eq!(to_resp(&[0x01, 0x02]).as_ref(), &[0x01, 0x02]);
    }
}
