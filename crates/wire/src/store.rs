//! Store frames: operations on the shared key-value store and publish/subscribe, their
//! replies, and the deliveries of subscriptions and watches.
//!
//! These are the hot frames of the store, so they have fixed binary layouts rather than
//! MessagePack maps: a request is a few header bytes, the key, and the value exactly as
//! the client encoded it. Layouts (all integers little-endian; `str` is a `u16` length
//! and that many bytes; `blob` is a `u32` length and that many bytes; `rest` is every
//! byte to the end of the frame):
//!
//! | frame | payload |
//! |---|---|
//! | `Op` (kind 7) | `u32 id`, `u8 code` (bit 7 set: quiet), fields per operation |
//! | `OpReply` (kind 8) | `u32 id`, `u8 status`, fields per status |
//! | `Delivery` (kind 9) | `u32 sub`, `u8 what`, fields |
//!
//! `docs/PROTOCOL.md` gives the fields of every operation.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::kinds::{FrameError, Kind};
use crate::ErrorCode;

/// An operation on the store, from a process to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The value of `key`: replies `Value` or `Nil`.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Stores `value` at `key`: replies `Done`, or `Bool` when `if_absent` (whether it
    /// was stored).
    Set {
        /// The key.
        key: Bytes,
        /// The MessagePack value.
        value: Bytes,
        /// Time to live in milliseconds; `None` keeps the value until it is deleted.
        ttl_ms: Option<u64>,
        /// Store only if the key has no value.
        if_absent: bool,
    },
    /// Removes `key`: replies `Bool` (whether it existed).
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Replies `Bool`: whether `key` has a value.
    Contains {
        /// The key.
        key: Bytes,
    },
    /// Adds `by` to the integer at `key` (absent counts as 0): replies `Int`, the new
    /// value.
    Incr {
        /// The key.
        key: Bytes,
        /// The amount, possibly negative.
        by: i64,
    },
    /// Replaces the value of `key` with `new` (`None` deletes it) if its current value
    /// is byte for byte `expected` (`None`: if it has no value): replies `Bool`.
    Cas {
        /// The key.
        key: Bytes,
        /// The value expected now.
        expected: Option<Bytes>,
        /// The value to store.
        new: Option<Bytes>,
    },
    /// Sets (`Some`) or removes (`None`) the time to live of `key`: replies `Bool`
    /// (whether the key exists).
    Expire {
        /// The key.
        key: Bytes,
        /// Milliseconds from now. On the wire `u64::MAX` stands for `None`, so
        /// `Some(u64::MAX)` arrives as `None`: no expiry, which is what so long a time
        /// to live amounts to.
        ttl_ms: Option<u64>,
    },
    /// Replies `Int`: the time to live of `key` in milliseconds, `-1` if it has none,
    /// `-2` if the key does not exist.
    Ttl {
        /// The key.
        key: Bytes,
    },
    /// Replies `Keys`: every key matching the glob `pattern` (`*`, `?`), sorted.
    Keys {
        /// The pattern.
        pattern: Bytes,
    },
    /// Replies `Entries`: every key matching `pattern` with its value, sorted by key.
    GetAll {
        /// The pattern.
        pattern: Bytes,
    },
    /// Replies `Int`: the number of keys.
    Len,
    /// Sends `body` to every subscription whose pattern matches `topic`: replies `Int`,
    /// how many subscriptions it was given to.
    Publish {
        /// The topic.
        topic: Bytes,
        /// The MessagePack message.
        body: Bytes,
    },
    /// Publishes each of `bodies` in turn, as many `Publish`: replies `Int`, how many
    /// subscriptions they were given to in all. If one body is too large, none is
    /// published.
    PublishMany {
        /// The topic.
        topic: Bytes,
        /// The MessagePack messages, in order.
        bodies: Vec<Bytes>,
    },
    /// Starts subscription `sub` (a number the process chooses) to the topics matching
    /// `pattern`, able to take `credit` deliveries: replies `Done`.
    Subscribe {
        /// The subscription's number.
        sub: u32,
        /// How many deliveries the process can take now.
        credit: u32,
        /// A topic, or a glob over topics.
        pattern: Bytes,
    },
    /// Ends subscription or watch `sub`: replies `Done`.
    Unsubscribe {
        /// The subscription's number.
        sub: u32,
    },
    /// Starts watch `sub` on `key` (or on every key starting with it, with `prefix`):
    /// replies `Done`.
    Watch {
        /// The watch's number.
        sub: u32,
        /// How many deliveries the process can take now.
        credit: u32,
        /// Whether `key` is a prefix.
        prefix: bool,
        /// The key or prefix.
        key: Bytes,
    },
    /// The process consumed `n` deliveries of `sub`. Never replied to.
    Credit {
        /// The subscription or watch.
        sub: u32,
        /// How many.
        n: u32,
    },
    /// Replies `Done` once every earlier operation of this connection is applied.
    Sync,
}

impl Op {
    fn code(&self) -> u8 {
        match self {
            Op::Get { .. } => 1,
            Op::Set { .. } => 2,
            Op::Delete { .. } => 3,
            Op::Contains { .. } => 4,
            Op::Incr { .. } => 5,
            Op::Cas { .. } => 6,
            Op::Expire { .. } => 7,
            Op::Ttl { .. } => 8,
            Op::Keys { .. } => 9,
            Op::GetAll { .. } => 10,
            Op::Len => 11,
            Op::Publish { .. } => 12,
            Op::Subscribe { .. } => 13,
            Op::Unsubscribe { .. } => 14,
            Op::Watch { .. } => 15,
            Op::Credit { .. } => 16,
            Op::Sync => 17,
            Op::PublishMany { .. } => 18,
        }
    }
}

/// Bit of an `Op` code byte asking the hub not to reply when the operation succeeds.
pub const QUIET: u8 = 0x80;

/// The hub's answer to an [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpReply {
    /// Done; nothing to return.
    Done,
    /// A stored value (MessagePack).
    Value(Bytes),
    /// No value.
    Nil,
    /// An integer.
    Int(i64),
    /// A yes or no.
    Bool(bool),
    /// Keys.
    Keys(Vec<String>),
    /// Keys with their values.
    Entries(Vec<(String, Bytes)>),
    /// The operation failed; nothing changed.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason, naming the key, topic or limit concerned.
        message: String,
    },
}

/// What changed at a watched key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum ChangeKind {
    /// The key got a new value.
    Set = 1,
    /// The key was deleted.
    Deleted = 2,
    /// The key expired.
    Expired = 3,
}

/// Something a subscription or watch receives, from the hub to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A publication.
    Message {
        /// The subscription.
        sub: u32,
        /// The topic it was published to.
        topic: Bytes,
        /// The MessagePack message.
        body: Bytes,
    },
    /// The subscription had no credit left for `count` deliveries, which were dropped.
    /// Sent as soon as the process returns credit for it ([`Op::Credit`]), so before any
    /// later delivery; costs no credit.
    Missed {
        /// The subscription.
        sub: u32,
        /// How many deliveries it missed.
        count: u64,
    },
    /// A watched key changed.
    Changed {
        /// The watch.
        sub: u32,
        /// How.
        kind: ChangeKind,
        /// The key.
        key: Bytes,
        /// The new value (empty unless `kind` is `Set`).
        value: Bytes,
    },
}

fn begin(out: &mut Vec<u8>, kind: Kind) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind as u8]);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    // Keys, topics and patterns are limited far below 64 KiB before they are encoded.
    let n = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s[..n]);
}

fn put_blob(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

/// Appends an `Op` frame.
pub fn encode_op(out: &mut Vec<u8>, id: u32, quiet: bool, op: &Op) {
    let start = begin(out, Kind::Op);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(op.code() | if quiet { QUIET } else { 0 });
    match op {
        Op::Get { key }
        | Op::Delete { key }
        | Op::Contains { key }
        | Op::Ttl { key }
        | Op::Keys { pattern: key }
        | Op::GetAll { pattern: key } => put_str(out, key),
        Op::Set {
            key,
            value,
            ttl_ms,
            if_absent,
        } => {
            put_str(out, key);
            out.push(u8::from(*if_absent) | if ttl_ms.is_some() { 2 } else { 0 });
            if let Some(t) = ttl_ms {
                out.extend_from_slice(&t.to_le_bytes());
            }
            out.extend_from_slice(value);
        }
        Op::Incr { key, by } => {
            put_str(out, key);
            out.extend_from_slice(&by.to_le_bytes());
        }
        Op::Cas { key, expected, new } => {
            put_str(out, key);
            out.push(u8::from(expected.is_some()) | if new.is_some() { 2 } else { 0 });
            if let Some(e) = expected {
                put_blob(out, e);
            }
            if let Some(n) = new {
                out.extend_from_slice(n);
            }
        }
        Op::Expire { key, ttl_ms } => {
            put_str(out, key);
            out.extend_from_slice(&ttl_ms.unwrap_or(u64::MAX).to_le_bytes());
        }
        Op::Len | Op::Sync => {}
        Op::Publish { topic, body } => {
            put_str(out, topic);
            out.extend_from_slice(body);
        }
        Op::PublishMany { topic, bodies } => {
            put_str(out, topic);
            out.extend_from_slice(&(bodies.len() as u32).to_le_bytes());
            for b in bodies {
                put_blob(out, b);
            }
        }
        Op::Subscribe {
            sub,
            credit,
            pattern,
        } => {
            out.extend_from_slice(&sub.to_le_bytes());
            out.extend_from_slice(&credit.to_le_bytes());
            put_str(out, pattern);
        }
        Op::Unsubscribe { sub } => out.extend_from_slice(&sub.to_le_bytes()),
        Op::Watch {
            sub,
            credit,
            prefix,
            key,
        } => {
            out.extend_from_slice(&sub.to_le_bytes());
            out.extend_from_slice(&credit.to_le_bytes());
            out.push(u8::from(*prefix));
            put_str(out, key);
        }
        Op::Credit { sub, n } => {
            out.extend_from_slice(&sub.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    finish(out, start);
}

/// Appends an `OpReply` frame.
pub fn encode_op_reply(out: &mut Vec<u8>, id: u32, reply: &OpReply) {
    match reply {
        OpReply::Value(v) => return encode_op_value(out, id, v),
        OpReply::Int(n) => return encode_op_int(out, id, *n),
        OpReply::Bool(b) => return encode_op_bool(out, id, *b),
        _ => {}
    }
    let start = begin(out, Kind::OpReply);
    out.extend_from_slice(&id.to_le_bytes());
    match reply {
        OpReply::Done => out.push(0),
        OpReply::Nil => out.push(2),
        OpReply::Keys(keys) => {
            out.push(5);
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for k in keys {
                put_str(out, k.as_bytes());
            }
        }
        OpReply::Entries(entries) => {
            out.push(6);
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for (k, v) in entries {
                put_str(out, k.as_bytes());
                put_blob(out, v);
            }
        }
        OpReply::Error { code, message } => {
            out.push(255);
            #[derive(Serialize)]
            struct E<'a> {
                code: ErrorCode,
                message: &'a str,
            }
            // Writing a string and a unit enum to a Vec cannot fail.
            rmp_serde::encode::write_named(
                out,
                &E {
                    code: *code,
                    message,
                },
            )
            .expect("an error reply always encodes");
        }
        OpReply::Value(_) | OpReply::Int(_) | OpReply::Bool(_) => unreachable!("handled above"),
    }
    finish(out, start);
}

/// Appends an `OpReply` carrying a value, copied from `value`.
pub fn encode_op_value(out: &mut Vec<u8>, id: u32, value: &[u8]) {
    let start = begin(out, Kind::OpReply);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(1);
    out.extend_from_slice(value);
    finish(out, start);
}

/// Appends an `OpReply` carrying an integer.
pub fn encode_op_int(out: &mut Vec<u8>, id: u32, n: i64) {
    let start = begin(out, Kind::OpReply);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(3);
    out.extend_from_slice(&n.to_le_bytes());
    finish(out, start);
}

/// Appends an `OpReply` carrying a yes or no.
pub fn encode_op_bool(out: &mut Vec<u8>, id: u32, b: bool) {
    let start = begin(out, Kind::OpReply);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(4);
    out.push(u8::from(b));
    finish(out, start);
}

/// Appends a `Delivery` frame carrying a publication.
pub fn encode_publication(out: &mut Vec<u8>, sub: u32, topic: &[u8], body: &[u8]) {
    let start = begin(out, Kind::Delivery);
    out.extend_from_slice(&sub.to_le_bytes());
    out.push(1);
    put_str(out, topic);
    out.extend_from_slice(body);
    finish(out, start);
}

/// Appends a `Delivery` frame.
pub fn encode_delivery(out: &mut Vec<u8>, d: &Delivery) {
    match d {
        Delivery::Message { sub, topic, body } => encode_publication(out, *sub, topic, body),
        Delivery::Missed { sub, count } => {
            let start = begin(out, Kind::Delivery);
            out.extend_from_slice(&sub.to_le_bytes());
            out.push(2);
            out.extend_from_slice(&count.to_le_bytes());
            finish(out, start);
        }
        Delivery::Changed {
            sub,
            kind,
            key,
            value,
        } => encode_change(out, *sub, *kind, key, value),
    }
}

/// Appends a `Delivery` frame telling a watch that `key` changed.
pub fn encode_change(out: &mut Vec<u8>, sub: u32, kind: ChangeKind, key: &[u8], value: &[u8]) {
    let start = begin(out, Kind::Delivery);
    out.extend_from_slice(&sub.to_le_bytes());
    out.push(3);
    out.push(kind as u8);
    put_str(out, key);
    out.extend_from_slice(value);
    finish(out, start);
}

/// Reads fields off a payload, reporting a short one as malformed.
struct Fields {
    p: BytesMut,
    kind: Kind,
}

impl Fields {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.p.len() < n {
            Err(FrameError::Malformed {
                kind: self.kind,
                reason: "payload ends early".into(),
            })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.p.get_u8())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.p.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.p.get_u64_le())
    }
    fn str(&mut self) -> Result<Bytes, FrameError> {
        self.need(2)?;
        let n = self.p.get_u16_le() as usize;
        self.need(n)?;
        Ok(self.p.split_to(n).freeze())
    }
    fn blob(&mut self) -> Result<Bytes, FrameError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.p.split_to(n).freeze())
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.p).freeze()
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let b = self.str()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("a key is not UTF-8"))
    }
    fn bad(&self, reason: &str) -> FrameError {
        FrameError::Malformed {
            kind: self.kind,
            reason: reason.into(),
        }
    }
    fn end(self) -> Result<(), FrameError> {
        if self.p.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

/// Decodes an `Op` payload (after the kind byte): `(id, quiet, op)`.
pub(crate) fn decode_op(p: BytesMut) -> Result<(u32, bool, Op), FrameError> {
    let mut f = Fields { p, kind: Kind::Op };
    let id = f.u32()?;
    let code = f.u8()?;
    let quiet = code & QUIET != 0;
    let op = match code & !QUIET {
        1 => Op::Get { key: f.str()? },
        2 => {
            let key = f.str()?;
            let flags = f.u8()?;
            let ttl_ms = if flags & 2 != 0 { Some(f.u64()?) } else { None };
            Op::Set {
                key,
                ttl_ms,
                if_absent: flags & 1 != 0,
                value: f.rest(),
            }
        }
        3 => Op::Delete { key: f.str()? },
        4 => Op::Contains { key: f.str()? },
        5 => Op::Incr {
            key: f.str()?,
            by: f.u64()? as i64,
        },
        6 => {
            let key = f.str()?;
            let flags = f.u8()?;
            let expected = if flags & 1 != 0 {
                Some(f.blob()?)
            } else {
                None
            };
            let new = if flags & 2 != 0 { Some(f.rest()) } else { None };
            Op::Cas { key, expected, new }
        }
        7 => {
            let key = f.str()?;
            let t = f.u64()?;
            Op::Expire {
                key,
                ttl_ms: (t != u64::MAX).then_some(t),
            }
        }
        8 => Op::Ttl { key: f.str()? },
        9 => Op::Keys { pattern: f.str()? },
        10 => Op::GetAll { pattern: f.str()? },
        11 => Op::Len,
        12 => Op::Publish {
            topic: f.str()?,
            body: f.rest(),
        },
        13 => Op::Subscribe {
            sub: f.u32()?,
            credit: f.u32()?,
            pattern: f.str()?,
        },
        14 => Op::Unsubscribe { sub: f.u32()? },
        15 => Op::Watch {
            sub: f.u32()?,
            credit: f.u32()?,
            prefix: f.u8()? != 0,
            key: f.str()?,
        },
        16 => Op::Credit {
            sub: f.u32()?,
            n: f.u32()?,
        },
        17 => Op::Sync,
        18 => {
            let topic = f.str()?;
            let n = f.u32()? as usize;
            // Each body takes at least its 4-byte length: a count the frame cannot hold
            // fails below without reserving room for it first.
            let mut bodies = Vec::with_capacity(n.min(f.p.len() / 4));
            for _ in 0..n {
                bodies.push(f.blob()?);
            }
            Op::PublishMany { topic, bodies }
        }
        other => return Err(f.bad(&format!("unknown operation {other}"))),
    };
    f.end()?;
    Ok((id, quiet, op))
}

/// Decodes an `OpReply` payload: `(id, reply)`.
pub(crate) fn decode_op_reply(p: BytesMut) -> Result<(u32, OpReply), FrameError> {
    let mut f = Fields {
        p,
        kind: Kind::OpReply,
    };
    let id = f.u32()?;
    let reply = match f.u8()? {
        0 => OpReply::Done,
        1 => return Ok((id, OpReply::Value(f.rest()))),
        2 => OpReply::Nil,
        3 => OpReply::Int(f.u64()? as i64),
        4 => OpReply::Bool(f.u8()? != 0),
        5 => {
            let n = f.u32()? as usize;
            let mut keys = Vec::with_capacity(n.min(f.p.len() / 2));
            for _ in 0..n {
                keys.push(f.string()?);
            }
            OpReply::Keys(keys)
        }
        6 => {
            let n = f.u32()? as usize;
            let mut entries = Vec::with_capacity(n.min(f.p.len() / 6));
            for _ in 0..n {
                let k = f.string()?;
                entries.push((k, f.blob()?));
            }
            OpReply::Entries(entries)
        }
        255 => {
            #[derive(Deserialize)]
            struct E {
                code: ErrorCode,
                message: String,
            }
            let rest = f.rest();
            crate::msgpack::check_msgpack(&rest).map_err(|e| FrameError::Malformed {
                kind: Kind::OpReply,
                reason: e.into(),
            })?;
            let e: E = rmp_serde::from_slice(&rest).map_err(|e| FrameError::Malformed {
                kind: Kind::OpReply,
                reason: e.to_string(),
            })?;
            return Ok((
                id,
                OpReply::Error {
                    code: e.code,
                    message: e.message,
                },
            ));
        }
        other => return Err(f.bad(&format!("unknown reply status {other}"))),
    };
    f.end()?;
    Ok((id, reply))
}

/// Decodes a `Delivery` payload.
pub(crate) fn decode_delivery(p: BytesMut) -> Result<Delivery, FrameError> {
    let mut f = Fields {
        p,
        kind: Kind::Delivery,
    };
    let sub = f.u32()?;
    match f.u8()? {
        1 => Ok(Delivery::Message {
            sub,
            topic: f.str()?,
            body: f.rest(),
        }),
        2 => {
            let count = f.u64()?;
            f.end()?;
            Ok(Delivery::Missed { sub, count })
        }
        3 => {
            let kind = match f.u8()? {
                1 => ChangeKind::Set,
                2 => ChangeKind::Deleted,
                3 => ChangeKind::Expired,
                _ => return Err(f.bad("unknown change")),
            };
            Ok(Delivery::Changed {
                sub,
                kind,
                key: f.str()?,
                value: f.rest(),
            })
        }
        other => Err(f.bad(&format!("unknown delivery {other}"))),
    }
}
