//! Frame encoding and decoding.
//!
//! A frame is `len: u32 LE` followed by `len` bytes: one kind byte, then the kind's
//! payload. Hot frames (`Msg`, `Credit`) have fixed binary headers; control frames carry
//! MessagePack maps.

use bytes::{Buf, BytesMut};
use serde::Serialize;

use crate::kinds::{malformed, FrameError, Kind};
use crate::msgpack::check_msgpack;
use crate::{ChanId, End, EndRef, Event, Frame, Msg, Notice, Reply, Request};

/// Bytes before a frame's payload: the length prefix and the kind byte.
pub const HEADER_LEN: usize = 5;

/// Reads frames out of a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_frame: u32,
}

impl Decoder {
    /// A decoder that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: u32) -> Decoder {
        Decoder { max_frame }
    }

    /// The limit this decoder enforces.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Takes one frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call
    /// again); the partial bytes stay in `buf`. A message body is split off `buf` without
    /// copying.
    ///
    /// # Errors
    ///
    /// A [`FrameError`] when the bytes are not a frame; the connection cannot be resumed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let total = 4 + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut payload = buf.split_to(len as usize);
        let kind = payload[0];
        payload.advance(1);
        decode_payload(kind, payload).map(Some)
    }
}

fn decode_payload(kind: u8, mut p: BytesMut) -> Result<Frame, FrameError> {
    match kind {
        1 => {
            if p.len() < 7 {
                return Err(malformed(Kind::Msg, "header shorter than 7 bytes"));
            }
            let chan = ChanId(u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
            let to = End::from_u8(p[4]).ok_or_else(|| malformed(Kind::Msg, "bad end"))?;
            let n = u16::from_le_bytes([p[5], p[6]]) as usize;
            let Some(body_len) = p.len().checked_sub(7 + n * 5) else {
                return Err(malformed(Kind::Msg, "carried list runs past the frame"));
            };
            // Slicing, not splitting: a split would touch the buffer's shared count.
            let mut carried = Vec::with_capacity(n);
            for raw in p[7 + body_len..].chunks_exact(5) {
                let chan = ChanId(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
                let end =
                    End::from_u8(raw[4]).ok_or_else(|| malformed(Kind::Msg, "bad carried end"))?;
                carried.push(EndRef { chan, end });
            }
            p.advance(7);
            p.truncate(body_len);
            Ok(Frame::Msg(Msg {
                chan,
                to,
                carried,
                body: p.freeze(),
            }))
        }
        2 => {
            if p.len() != 17 {
                return Err(malformed(Kind::Credit, "payload is not 17 bytes"));
            }
            let chan = ChanId(p.get_u32_le());
            let end = End::from_u8(p.get_u8()).ok_or_else(|| malformed(Kind::Credit, "bad end"))?;
            let n = p.get_u32_le();
            let bytes = p.get_u64_le();
            Ok(Frame::Credit {
                chan,
                end,
                n,
                bytes,
            })
        }
        3 | 4 => {
            let k = if kind == 3 {
                Kind::Request
            } else {
                Kind::Reply
            };
            if p.len() < 4 {
                return Err(malformed(k, "missing request id"));
            }
            let id = p.get_u32_le();
            check_msgpack(&p).map_err(|e| malformed(k, e))?;
            if kind == 3 {
                let body: Request =
                    rmp_serde::from_slice(&p).map_err(|e| malformed(k, e.to_string()))?;
                Ok(Frame::Request { id, body })
            } else {
                let body: Reply =
                    rmp_serde::from_slice(&p).map_err(|e| malformed(k, e.to_string()))?;
                Ok(Frame::Reply { id, body })
            }
        }
        5 => check_msgpack(&p)
            .map_err(|e| malformed(Kind::Notice, e))
            .and_then(|()| {
                rmp_serde::from_slice::<Notice>(&p)
                    .map_err(|e| malformed(Kind::Notice, e.to_string()))
            })
            .map(Frame::Notice),
        6 => check_msgpack(&p)
            .map_err(|e| malformed(Kind::Event, e))
            .and_then(|()| {
                rmp_serde::from_slice::<Event>(&p)
                    .map_err(|e| malformed(Kind::Event, e.to_string()))
            })
            .map(Frame::Event),
        7 => crate::store::decode_op(p).map(|(id, quiet, op)| Frame::Op { id, quiet, op }),
        8 => crate::store::decode_op_reply(p).map(|(id, reply)| Frame::OpReply { id, reply }),
        9 => crate::store::decode_delivery(p).map(Frame::Delivery),
        10 => crate::call::decode_call(p).map(Frame::Call),
        11 => crate::call::decode_call_reply(p).map(|(id, status, body)| Frame::CallReply {
            id,
            status,
            body,
        }),
        12 => crate::call::decode_cancel(p).map(|id| Frame::Cancel { id }),
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Appends any frame.
pub fn encode_frame(out: &mut Vec<u8>, frame: &Frame) {
    match frame {
        Frame::Msg(m) => encode_msg_raw(out, m.chan, m.to, &m.carried, &m.body),
        Frame::Credit {
            chan,
            end,
            n,
            bytes,
        } => encode_credit(out, *chan, *end, *n, *bytes),
        Frame::Op { id, quiet, op } => crate::store::encode_op(out, *id, *quiet, op),
        Frame::OpReply { id, reply } => crate::store::encode_op_reply(out, *id, reply),
        Frame::Delivery(d) => crate::store::encode_delivery(out, d),
        Frame::Call(c) => {
            let r: Result<(), std::convert::Infallible> = crate::call::encode_call(
                out,
                c.id,
                c.timeout_ms,
                c.flags,
                &c.service,
                &c.method,
                |b| {
                    b.extend_from_slice(&c.body);
                    Ok(())
                },
            );
            let _ = r;
        }
        Frame::CallReply { id, status, body } => {
            let r: Result<(), std::convert::Infallible> =
                crate::call::encode_call_reply(out, *id, *status, |b| {
                    b.extend_from_slice(body);
                    Ok(())
                });
            let _ = r;
        }
        Frame::Cancel { id } => crate::call::encode_cancel(out, *id),
        other => encode_control(out, other),
    }
}

/// Appends a `Msg` frame to `out`, letting `body` write the MessagePack value in place
/// (no intermediate buffer) and return the channel ends it encoded inside the value.
///
/// On error `out` is left as it was.
///
/// # Errors
///
/// Whatever `body` returns.
pub fn encode_msg<E>(
    out: &mut Vec<u8>,
    chan: ChanId,
    to: End,
    body: impl FnOnce(&mut Vec<u8>) -> Result<Vec<EndRef>, E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, Kind::Msg as u8]);
    out.extend_from_slice(&chan.0.to_le_bytes());
    out.push(to as u8);
    out.extend_from_slice(&[0, 0]);
    let carried = match body(out) {
        Ok(c) => c,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    if !carried.is_empty() {
        let n = carried.len().min(u16::MAX as usize);
        out[start + 10..start + 12].copy_from_slice(&(n as u16).to_le_bytes());
        for c in &carried[..n] {
            out.extend_from_slice(&c.chan.0.to_le_bytes());
            out.push(c.end as u8);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Appends the part of a `Msg` frame before its body, for a body of `body_len` bytes
/// and `carried` ends; the body, then [`encode_msg_tail`], must follow. For a body that
/// is written from elsewhere, without a copy.
pub fn encode_msg_head(
    out: &mut Vec<u8>,
    chan: ChanId,
    to: End,
    carried: &[EndRef],
    body_len: usize,
) {
    let n = carried.len().min(u16::MAX as usize);
    let len = (8 + body_len + 5 * n) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(Kind::Msg as u8);
    out.extend_from_slice(&chan.0.to_le_bytes());
    out.push(to as u8);
    out.extend_from_slice(&(n as u16).to_le_bytes());
}

/// Appends the part of a `Msg` frame after its body (see [`encode_msg_head`]).
pub fn encode_msg_tail(out: &mut Vec<u8>, carried: &[EndRef]) {
    for c in &carried[..carried.len().min(u16::MAX as usize)] {
        out.extend_from_slice(&c.chan.0.to_le_bytes());
        out.push(c.end as u8);
    }
}

/// Appends a `Msg` frame whose body is already encoded.
pub fn encode_msg_raw(out: &mut Vec<u8>, chan: ChanId, to: End, carried: &[EndRef], body: &[u8]) {
    let r: Result<(), std::convert::Infallible> = encode_msg(out, chan, to, |b| {
        b.extend_from_slice(body);
        Ok(carried.to_vec())
    });
    let _ = r;
}

/// Appends a `Credit` frame: `n` messages and `bytes` bytes of message bodies.
pub fn encode_credit(out: &mut Vec<u8>, chan: ChanId, end: End, n: u32, bytes: u64) {
    out.extend_from_slice(&18u32.to_le_bytes());
    out.push(Kind::Credit as u8);
    out.extend_from_slice(&chan.0.to_le_bytes());
    out.push(end as u8);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&bytes.to_le_bytes());
}

/// Appends a control frame (`Request`, `Reply`, `Notice` or `Event`) for `frame`.
///
/// # Panics
///
/// If `frame` is not a control frame: use [`encode_frame`].
pub fn encode_control(out: &mut Vec<u8>, frame: &Frame) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
    let kind = match frame {
        Frame::Request { id, body } => {
            out.extend_from_slice(&id.to_le_bytes());
            write_named(out, body);
            Kind::Request
        }
        Frame::Reply { id, body } => {
            out.extend_from_slice(&id.to_le_bytes());
            write_named(out, body);
            Kind::Reply
        }
        Frame::Notice(n) => {
            write_named(out, n);
            Kind::Notice
        }
        Frame::Event(e) => {
            write_named(out, e);
            Kind::Event
        }
        Frame::Msg(_)
        | Frame::Credit { .. }
        | Frame::Op { .. }
        | Frame::OpReply { .. }
        | Frame::Delivery(_)
        | Frame::Call(_)
        | Frame::CallReply { .. }
        | Frame::Cancel { .. } => {
            panic!("encode_control is for control frames only")
        }
    };
    out[start + 4] = kind as u8;
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn write_named<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Writing to a Vec cannot fail, and the control types contain only strings,
    // integers, booleans, sequences and maps, which MessagePack can always represent.
    rmp_serde::encode::write_named(out, value).expect("control messages always encode");
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_msg_in_parts_is_the_msg_whole() {
        let carried = [EndRef {
            chan: ChanId(9),
            end: End::B,
        }];
        let mut whole = Vec::new();
        encode_msg_raw(&mut whole, ChanId(3), End::A, &carried, b"body");
        let mut parts = Vec::new();
        encode_msg_head(&mut parts, ChanId(3), End::A, &carried, 4);
        parts.extend_from_slice(b"body");
        encode_msg_tail(&mut parts, &carried);
        assert_eq!(parts, whole);
    }

    use super::*;
    use crate::ErrorCode;

    fn roundtrip(frame: Frame) {
        let mut out = Vec::new();
        encode_frame(&mut out, &frame);
        // Byte at a time: every prefix is "incomplete", never an error.
        let dec = Decoder::new(1024);
        let mut buf = BytesMut::new();
        for (i, b) in out.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = dec.decode(&mut buf).unwrap();
            if i + 1 < out.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got.unwrap(), frame);
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn every_kind_roundtrips() {
        roundtrip(Frame::Msg(Msg {
            chan: ChanId(3),
            to: End::A,
            carried: vec![EndRef {
                chan: ChanId(9),
                end: End::B,
            }],
            body: bytes::Bytes::from_static(&[0xa3, b'a', b'b', b'c']),
        }));
        roundtrip(Frame::Credit {
            chan: ChanId(1),
            end: End::B,
            n: 77,
            bytes: 1 << 40,
        });
        roundtrip(Frame::Request {
            id: 5,
            body: Request::Lookup {
                name: "x".into(),
                type_name: "u32".into(),
            },
        });
        roundtrip(Frame::Reply {
            id: 5,
            body: Reply::Error {
                code: ErrorCode::UnknownChannel,
                message: "no channel named x".into(),
            },
        });
        roundtrip(Frame::Notice(Notice::Close { chan: ChanId(2) }));
        roundtrip(Frame::Notice(Notice::Release {
            chan: ChanId(2),
            end: End::B,
            count: 3,
        }));
        roundtrip(Frame::Event(Event::PeerGone {
            chan: ChanId(2),
            end: End::A,
            queued: true,
        }));
        roundtrip(Frame::Call(crate::call::Call {
            id: 9,
            timeout_ms: 30_000,
            flags: crate::call::WAIT_FOR_SERVER,
            service: "translator".into(),
            method: "translate".into(),
            body: bytes::Bytes::from_static(&[0x92, 0xa1, b'x', 1]),
        }));
        roundtrip(Frame::CallReply {
            id: 9,
            status: crate::call::CallStatus::ServiceError,
            body: bytes::Bytes::from_static(&[0xa1, b'e']),
        });
        roundtrip(Frame::CallReply {
            id: 10,
            status: crate::call::CallStatus::Ok,
            body: bytes::Bytes::new(),
        });
        roundtrip(Frame::Cancel { id: 9 });
    }

    #[test]
    fn calls_with_bad_names_or_statuses_are_malformed() {
        let dec = Decoder::new(1024);
        let frame = |payload: &[u8]| {
            let mut buf = BytesMut::from(&((payload.len()) as u32).to_le_bytes()[..]);
            buf.extend_from_slice(payload);
            dec.decode(&mut buf)
        };
        // Empty service name.
        let call = [10u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'm'];
        assert!(matches!(frame(&call), Err(FrameError::Malformed { .. })));
        // Method length past the end.
        let call = [10u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, b's', 9, b'm'];
        assert!(matches!(frame(&call), Err(FrameError::Malformed { .. })));
        // Unknown status.
        let reply = [11u8, 1, 0, 0, 0, 200];
        assert!(matches!(frame(&reply), Err(FrameError::Malformed { .. })));
        // Cancel of the wrong size.
        let cancel = [12u8, 1, 0, 0];
        assert!(matches!(frame(&cancel), Err(FrameError::Malformed { .. })));
    }

    #[test]
    fn store_frames_roundtrip() {
        use crate::store::{ChangeKind, Delivery, Op, OpReply};
        use bytes::Bytes;
        let k = || Bytes::from_static(b"user:1");
        let v = || Bytes::from_static(&[0x92, 1, 2]);
        let ops = [
            Op::Get { key: k() },
            Op::Set {
                key: k(),
                value: v(),
                ttl_ms: Some(1500),
                if_absent: true,
            },
            Op::Set {
                key: k(),
                value: v(),
                ttl_ms: None,
                if_absent: false,
            },
            Op::Delete { key: k() },
            Op::Contains { key: k() },
            Op::Incr { key: k(), by: -7 },
            Op::Cas {
                key: k(),
                expected: Some(v()),
                new: None,
            },
            Op::Cas {
                key: k(),
                expected: None,
                new: Some(v()),
            },
            Op::Expire {
                key: k(),
                ttl_ms: Some(5),
            },
            Op::Expire {
                key: k(),
                ttl_ms: None,
            },
            Op::Ttl { key: k() },
            Op::Keys {
                pattern: Bytes::from_static(b"user:*"),
            },
            Op::GetAll {
                pattern: Bytes::from_static(b"*"),
            },
            Op::Len,
            Op::Publish {
                topic: Bytes::from_static(b"events.a"),
                body: v(),
            },
            Op::Subscribe {
                sub: 3,
                credit: 64,
                pattern: Bytes::from_static(b"events.*"),
            },
            Op::Unsubscribe { sub: 3 },
            Op::Watch {
                sub: 4,
                credit: 8,
                prefix: true,
                key: k(),
            },
            Op::Credit { sub: 4, n: 2 },
            Op::Sync,
            Op::PublishMany {
                topic: k(),
                bodies: vec![v(), Bytes::new(), v()],
            },
            Op::PublishMany {
                topic: k(),
                bodies: Vec::new(),
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            roundtrip(Frame::Op {
                id: i as u32,
                quiet: i % 2 == 0,
                op,
            });
        }
        let replies = [
            OpReply::Done,
            OpReply::Value(v()),
            OpReply::Nil,
            OpReply::Int(-2),
            OpReply::Bool(true),
            OpReply::Keys(vec!["a".into(), "b".into()]),
            OpReply::Entries(vec![("a".into(), v())]),
            OpReply::Error {
                code: ErrorCode::InvalidKey,
                message: "bad key".into(),
            },
        ];
        for (i, reply) in replies.into_iter().enumerate() {
            roundtrip(Frame::OpReply {
                id: i as u32,
                reply,
            });
        }
        roundtrip(Frame::Delivery(Delivery::Message {
            sub: 1,
            topic: Bytes::from_static(b"t"),
            body: v(),
        }));
        roundtrip(Frame::Delivery(Delivery::Missed { sub: 1, count: 9 }));
        roundtrip(Frame::Delivery(Delivery::Changed {
            sub: 1,
            kind: ChangeKind::Deleted,
            key: k(),
            value: Bytes::new(),
        }));
    }

    #[test]
    fn oversized_and_garbage_are_errors() {
        let dec = Decoder::new(16);
        let mut buf = BytesMut::from(&[100u8, 0, 0, 0, 1][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 100, max: 16 })
        );
        let mut buf = BytesMut::from(&[2u8, 0, 0, 0, 99, 0][..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::UnknownKind(99)));
        let mut buf = BytesMut::from(&[3u8, 0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::Malformed { .. })
        ));
        let mut buf = BytesMut::from(&[6u8, 0, 0, 0, 3, 0, 0, 0, 0, 0xc1][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn a_publish_many_claiming_more_bodies_than_it_holds_is_malformed() {
        // Op frame: id 1, operation 18, topic "t", then a count of 4 billion bodies.
        let payload = [7u8, 1, 0, 0, 0, 18, 1, 0, b't', 0xff, 0xff, 0xff, 0xff];
        let mut buf = BytesMut::from(&(payload.len() as u32).to_le_bytes()[..]);
        buf.extend_from_slice(&payload);
        assert!(matches!(
            Decoder::new(1024).decode(&mut buf),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: the decoder must return, never panic.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let dec = Decoder::new(4096);
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&[(x & 0xff) as u8]);
            }
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}
