//! RESP, the Redis serialization protocol: the parser of commands (multibulk and
//! inline) and the encoder of replies in RESP2 and RESP3.
//!
//! The parser is incremental and never panics: [`parse`] looks at what has arrived,
//! and returns a whole command, `None` (more bytes are needed), or a
//! [`ProtocolError`] carrying Redis's own message, after which the connection closes.
//! Every length is checked against [`Limits`] before anything is allocated for it.
//!
//! ```
//! # use yukicomm_hub::resp::proto::{parse, Limits};
//! let mut buf = bytes::BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n"[..]);
//! let limits = Limits::default();
//! let get = parse(&mut buf, &limits).unwrap().unwrap();
//! assert_eq!(get, vec![&b"GET"[..], &b"k"[..]]);
//! let ping = parse(&mut buf, &limits).unwrap().unwrap();
//! assert_eq!(ping, vec![&b"PING"[..]]);
//! assert!(parse(&mut buf, &limits).unwrap().is_none());
//! ```

use bytes::{Bytes, BytesMut};

/// Limits on what one command may be; checked before allocating.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest bulk string (one argument), in bytes.
    pub max_bulk: usize,
    /// Most arguments in one command (the command's name included).
    pub max_args: usize,
    /// Longest inline command line, in bytes (Redis: 64 KiB).
    pub max_inline: usize,
    /// Most bytes of one whole command (arguments and framing).
    pub max_command: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 2 << 20,
            max_args: 65_536,
            max_inline: 64 << 10,
            max_command: 64 << 20,
        }
    }
}

/// Input that is not RESP: Redis's message for it (without the `-ERR ` prefix). The
/// connection is closed after it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn perr<T>(m: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(m.into()))
}

/// Longest `*N` or `$N` header line looked at before giving up.
const MAX_HEADER: usize = 32;

/// Finds the line end at or after `from`: `Some(Ok(i))` with `i` the index of the
/// `\r` of `\r\n`, `Some(Err(()))` for a bare `\n`, `None` if there is none yet.
fn find_crlf(buf: &[u8], from: usize) -> Option<Result<usize, ()>> {
    let nl = from + memchr_nl(&buf[from..])?;
    Some(if nl > from && buf[nl - 1] == b'\r' {
        Ok(nl - 1)
    } else {
        Err(())
    })
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// The integer of a header line.
fn parse_len(digits: &[u8]) -> Option<i64> {
    if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        // The common case, without the general parser.
        return Some(
            digits
                .iter()
                .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')),
        );
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
}

/// Reads a header line `<prefix><int>\r\n` at `at`: the integer and the index after the
/// line, `None` if incomplete.
fn header(
    buf: &[u8],
    at: usize,
    (short, long): (&str, &str),
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let limit = buf.len().min(at + MAX_HEADER);
    let Some(found) = find_crlf(&buf[..limit], at + 1) else {
        if buf.len() - at >= MAX_HEADER {
            return perr(format!("too big {short} count string"));
        }
        return Ok(None);
    };
    let Ok(cr) = found else {
        return perr(format!("invalid {long} length"));
    };
    match parse_len(&buf[at + 1..cr]) {
        Some(n) => Ok(Some((n, cr + 2))),
        None => perr(format!("invalid {long} length")),
    }
}

/// Parses one command from the front of `buf`, removing its bytes: `Some(args)`, or
/// `None` when more bytes are needed (nothing is removed then, except empty commands,
/// which are skipped). Arguments share the buffer's memory.
///
/// # Errors
///
/// When the input is not RESP or passes a limit, with Redis's message.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let parsed = if first == b'*' {
            multibulk(buf, limits)?
        } else {
            inline(buf, limits)?
        };
        match parsed {
            Parsed::Incomplete => return Ok(None),
            Parsed::Empty(n) => {
                let _ = buf.split_to(n);
            }
            Parsed::Multibulk(n, count) => {
                let frozen = buf.split_to(n).freeze();
                return Ok(Some(slices(&frozen, count)));
            }
            Parsed::Inline(n, args) => {
                let _ = buf.split_to(n);
                return Ok(Some(args));
            }
        }
    }
}

/// The arguments of a multibulk command that [`multibulk`] has checked: `count` bulk
/// strings after the first line, each a slice of `cmd`.
fn slices(cmd: &Bytes, count: usize) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(count);
    let line_end = |from: usize| {
        memchr_nl(&cmd[from..])
            .map(|i| from + i)
            .unwrap_or(cmd.len())
    };
    let mut at = line_end(0) + 1;
    for _ in 0..count {
        let nl = line_end(at);
        // `$<len>\r\n`, checked by `multibulk`.
        let len = cmd
            .get(at + 1..nl.saturating_sub(1))
            .and_then(parse_len)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let start = (nl + 1).min(cmd.len());
        let end = (start + len).min(cmd.len());
        args.push(cmd.slice(start..end));
        at = end + 2;
    }
    args
}

enum Parsed {
    Incomplete,
    /// An empty command of that many bytes, to skip.
    Empty(usize),
    /// A multibulk command of that many bytes, with that many arguments.
    Multibulk(usize, usize),
    /// An inline command of that many bytes.
    Inline(usize, Vec<Bytes>),
}

fn multibulk(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let Some((n, mut at)) = header(buf, 0, ("mbulk", "multibulk"))? else {
        return Ok(Parsed::Incomplete);
    };
    if n <= 0 {
        // `*0` and `*-1` are skipped, as Redis does.
        return Ok(Parsed::Empty(at));
    }
    if n as u64 > limits.max_args as u64 {
        return perr("invalid multibulk length");
    }
    let n = n as usize;
    for _ in 0..n {
        let Some(&b) = buf.get(at) else {
            return Ok(Parsed::Incomplete);
        };
        if b != b'$' {
            return perr(format!("expected '$', got '{}'", b as char));
        }
        let Some((len, start)) = header(buf, at, ("bulk", "bulk"))? else {
            return Ok(Parsed::Incomplete);
        };
        if len < 0 || len as u64 > limits.max_bulk as u64 {
            return perr("invalid bulk length");
        }
        let end = start + len as usize;
        if end + 2 > limits.max_command {
            return perr("command too large");
        }
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return perr("expected CRLF after a bulk string");
        }
        at = end + 2;
    }
    Ok(Parsed::Multibulk(at, n))
}

fn inline(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let Some(nl) = memchr_nl(&buf[..buf.len().min(limits.max_inline + 1)]) else {
        if buf.len() > limits.max_inline {
            return perr("too big inline request");
        }
        return Ok(Parsed::Incomplete);
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args =
        split_args(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
    if args.is_empty() {
        return Ok(Parsed::Empty(nl + 1));
    }
    if args.len() > limits.max_args {
        return perr("invalid multibulk length");
    }
    Ok(Parsed::Inline(nl + 1, args))
}

/// Splits an inline command as Redis's `sdssplitargs` does: spaces separate arguments,
/// `"..."` takes escapes (`\n`, `\r`, `\t`, `\b`, `\a`, `\\`, `\"`, `\xHH`), `'...'`
/// takes `\'`; a closing quote must be followed by a space or the end. `None` when the
/// quotes are unbalanced.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut dq = false;
        let mut sq = false;
        loop {
            let c = line.get(i).copied();
            if dq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && line.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                            && line.get(i + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        let h = std::str::from_utf8(&line[i + 2..i + 4]).ok()?;
                        cur.push(u8::from_str_radix(h, 16).ok()?);
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(c) => cur.push(c),
                }
            } else if sq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(c) => cur.push(c),
                }
            } else {
                match c {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => dq = true,
                    Some(b'\'') => sq = true,
                    Some(c) => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(cur));
    }
}

/// The protocol version a connection speaks (`HELLO 2|3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3: maps, sets, nulls, booleans, doubles and out-of-band pushes.
    Resp3,
}

/// Writes replies into a buffer, in the connection's protocol version.
pub struct Encoder<'a> {
    /// Where the replies go.
    pub out: &'a mut Vec<u8>,
    /// The version they are written in.
    pub version: Version,
}

impl Encoder<'_> {
    fn line(&mut self, prefix: u8, n: impl std::fmt::Display) {
        use std::io::Write;
        self.out.push(prefix);
        // Writing to a Vec cannot fail.
        let _ = write!(self.out, "{n}\r\n");
    }

    fn resp3(&self) -> bool {
        self.version == Version::Resp3
    }

    /// `+OK`-style status.
    pub fn simple(&mut self, s: &str) {
        self.out.push(b'+');
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// An error: `msg` starts with its code (`ERR ...`, `WRONGTYPE ...`); line breaks
    /// in it are replaced by spaces.
    pub fn error(&mut self, msg: &str) {
        self.out.push(b'-');
        self.out.extend(
            msg.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.out.extend_from_slice(b"\r\n");
    }

    /// An integer.
    pub fn int(&mut self, n: i64) {
        self.line(b':', n);
    }

    /// A bulk string.
    pub fn bulk(&mut self, b: &[u8]) {
        self.line(b'$', b.len());
        self.out.extend_from_slice(b);
        self.out.extend_from_slice(b"\r\n");
    }

    /// A null (bulk) string: `$-1` in RESP2, `_` in RESP3.
    pub fn null(&mut self) {
        if self.resp3() {
            self.out.extend_from_slice(b"_\r\n");
        } else {
            self.out.extend_from_slice(b"$-1\r\n");
        }
    }

    /// A null array: `*-1` in RESP2, `_` in RESP3.
    pub fn null_array(&mut self) {
        if self.resp3() {
            self.out.extend_from_slice(b"_\r\n");
        } else {
            self.out.extend_from_slice(b"*-1\r\n");
        }
    }

    /// An array of `n` elements, which follow.
    pub fn array(&mut self, n: usize) {
        self.line(b'*', n);
    }

    /// A map of `n` pairs, which follow: `%` in RESP3, an array of `2n` in RESP2.
    pub fn map(&mut self, n: usize) {
        if self.resp3() {
            self.line(b'%', n);
        } else {
            self.line(b'*', 2 * n);
        }
    }

    /// A set of `n` elements: `~` in RESP3, an array in RESP2.
    pub fn set(&mut self, n: usize) {
        self.line(if self.resp3() { b'~' } else { b'*' }, n);
    }

    /// An out-of-band push of `n` elements: `>` in RESP3, an array in RESP2.
    pub fn push(&mut self, n: usize) {
        self.line(if self.resp3() { b'>' } else { b'*' }, n);
    }

    /// A verbatim text (`INFO`): `=` with format `txt` in RESP3, a bulk string in RESP2.
    pub fn verbatim(&mut self, text: &[u8]) {
        if self.resp3() {
            self.line(b'=', text.len() + 4);
            self.out.extend_from_slice(b"txt:");
            self.out.extend_from_slice(text);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut cmds = Vec::new();
        while let Some(c) = parse(&mut buf, &Limits::default())? {
            cmds.push(c);
        }
        Ok(cmds)
    }

    #[test]
    fn multibulk_pipelined_and_split_anywhere() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhe\r\no\r\n*1\r\n$4\r\nPING\r\n*0\r\n";
        let cmds = all(input).unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0][2], &b"he\r\no"[..]);
        // Fed a byte at a time: the same commands, none early.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(c) = parse(&mut buf, &Limits::default()).unwrap() {
                got.push(c);
            }
        }
        assert_eq!(got, cmds);
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_commands_with_quotes() {
        let cmds = all(b"SET k \"a b\\x41\\n\" 'it\\'s'\r\n\r\nPING\n").unwrap();
        assert_eq!(
            cmds,
            vec![
                vec![
                    Bytes::from("SET"),
                    Bytes::from("k"),
                    Bytes::from("a bA\n"),
                    Bytes::from("it's")
                ],
                vec![Bytes::from("PING")]
            ]
        );
        assert_eq!(
            all(b"SET k \"abc\r\n").unwrap_err().0,
            "unbalanced quotes in request"
        );
        assert_eq!(
            all(b"SET k \"abc\"x\r\n").unwrap_err().0,
            "unbalanced quotes in request"
        );
    }

    #[test]
    fn redis_errors_for_bad_input() {
        let e = |i: &[u8]| all(i).unwrap_err().0;
        assert_eq!(e(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*1\r\n+OK\r\n"), "expected '$', got '+'");
        assert_eq!(e(b"*1\r\n$-5\r\n"), "invalid bulk length");
        assert_eq!(e(b"*1\r\n$999999999999\r\n"), "invalid bulk length");
        assert_eq!(e(b"*99999999\r\n"), "invalid multibulk length");
        assert_eq!(e(&[b'*'; 100]), "too big mbulk count string");
        assert_eq!(e(b"*1\r\n$3\r\nabcde"), "expected CRLF after a bulk string");
        let long = vec![b'a'; 70_000];
        assert_eq!(e(&long), "too big inline request");
    }

    #[test]
    fn a_long_bulk_is_refused_before_it_arrives() {
        let limits = Limits {
            max_bulk: 10,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&b"*1\r\n$11\r\n"[..]);
        assert_eq!(
            parse(&mut buf, &limits).unwrap_err().0,
            "invalid bulk length"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator (xorshift): the same cases every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"*$\r\n0123456789-+ \"'\\xabPING";
        let limits = Limits {
            max_bulk: 64,
            max_args: 8,
            max_inline: 64,
            max_command: 256,
        };
        for _ in 0..50_000 {
            let len = (next() % 48) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        r as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            while let Ok(Some(cmd)) = parse(&mut buf, &limits) {
                assert!(!cmd.is_empty() && cmd.len() <= limits.max_args);
                assert!(cmd
                    .iter()
                    .all(|a| a.len() <= limits.max_inline.max(limits.max_bulk)));
            }
            assert!(buf.len() <= before);
        }
    }

    #[test]
    fn encodes_both_versions() {
        let mut out = Vec::new();
        let mut e = Encoder {
            out: &mut out,
            version: Version::Resp2,
        };
        e.map(1);
        e.bulk(b"a");
        e.null();
        e.push(0);
        e.error("ERR x\r\ny");
        assert_eq!(out, b"*2\r\n$1\r\na\r\n$-1\r\n*0\r\n-ERR x  y\r\n");
        let mut out = Vec::new();
        let mut e = Encoder {
            out: &mut out,
            version: Version::Resp3,
        };
        e.map(1);
        e.int(-3);
        e.null();
        e.push(0);
        e.set(0);
        e.verbatim(b"hi");
        assert_eq!(out, b"%1\r\n:-3\r\n_\r\n>0\r\n~0\r\n=6\r\ntxt:hi\r\n");
    }
}
