//! Property tests of the frame decoder, the part of the hub that reads what any process
//! sends: arbitrary bytes never panic it and never make it allocate much beyond the frame
//! they claim to be, every frame kind survives an encode and decode unchanged, and
//! truncated or mutated frames are refused or read, never a panic.
//!
//! Each property runs a fixed number of cases (see [`config`]), so the whole file takes a
//! few seconds; raise `PROPTEST_CASES` to search longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use yukicomm_wire::call::{Call, CallStatus, WAIT_FOR_SERVER};
use yukicomm_wire::store::{ChangeKind, Delivery, Op, OpReply};
use yukicomm_wire::{
    encode_frame, ChanId, ChannelInfo, ControlAction, Decoder, End, EndRef, ErrorCode, Event,
    Frame, FrameError, Msg, Notice, Reply, Request, WhenFull,
};

// ---------------------------------------------------------------------------------------
// Counting what the decoder allocates.

/// The system allocator, counting the bytes requested on threads that ask for it.
struct Counting;

thread_local! {
    /// Bytes requested on this thread while counting; `None` when not counting.
    static REQUESTED: Cell<Option<usize>> = const { Cell::new(None) };
}

fn count(bytes: usize) {
    // `try_with`: the allocator may run while this thread's locals are torn down.
    let _ = REQUESTED.try_with(|r| {
        if let Some(n) = r.get() {
            r.set(Some(n.saturating_add(bytes)));
        }
    });
}

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning what it returned and the bytes it requested from the allocator.
fn counted<R>(f: impl FnOnce() -> R) -> (R, usize) {
    REQUESTED.with(|r| r.set(Some(0)));
    let out = f();
    let n = REQUESTED.with(|r| r.replace(None)).unwrap_or(0);
    (out, n)
}

/// What one decode may allocate for a frame of `len` bytes: 32 bytes for each byte of
/// the frame, and a little more for an error message. The most any frame costs per byte is
/// a control map, which serde buffers at 32 bytes per MessagePack value (a `nil` takes one
/// byte); a list of empty keys in an `OpReply` costs 24 bytes per 2; a carried entry of a
/// `Msg` 8 per 5. What a frame merely claims (a count, a length) must cost nothing more.
fn allowance(len: usize) -> usize {
    32 * len + 8192
}

/// Decodes every frame in `bytes` with a decoder limited to `max_frame`, checking after
/// each step that nothing panicked, that no frame longer than `max_frame` was read, and
/// that no step allocated more than its frame allows. Returns the frames and how it ended.
fn decode_all(bytes: &[u8], max_frame: u32) -> (Vec<Frame>, Option<FrameError>) {
    let dec = Decoder::new(max_frame);
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        let announced =
            (before >= 4).then(|| u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize);
        let (got, allocated) = counted(|| dec.decode(&mut buf));
        match got {
            Ok(Some(frame)) => {
                let len = announced.expect("a frame has a length prefix");
                assert!(
                    allocated <= allowance(len),
                    "decoding a frame of {len} bytes allocated {allocated} bytes: {frame:?}"
                );
                assert!(len <= max_frame as usize, "read a frame above max_frame");
                assert_eq!(before - buf.len(), 4 + len, "a frame consumes its bytes");
                frames.push(frame);
            }
            Ok(None) => {
                // Waiting for the rest of a frame reserves room for it, no more.
                let claimed = announced.unwrap_or(0);
                assert!(
                    allocated <= 2 * (4 + claimed),
                    "waiting for a frame of {claimed} bytes allocated {allocated} bytes"
                );
                assert_eq!(buf.len(), before, "an incomplete frame stays in the buffer");
                if let Some(len) = announced {
                    assert!(
                        len <= max_frame as usize,
                        "waited for a frame above max_frame"
                    );
                    assert!(len > 0, "waited for an empty frame");
                }
                return (frames, None);
            }
            Err(e) => {
                let len = announced.unwrap_or(0).min(max_frame as usize);
                assert!(
                    allocated <= allowance(len),
                    "refusing a frame of {len} bytes allocated {allocated} bytes: {e}"
                );
                if let Some(len) = announced {
                    if len > max_frame as usize {
                        assert_eq!(
                            e,
                            FrameError::TooLarge {
                                len: len as u32,
                                max: max_frame
                            }
                        );
                    }
                }
                return (frames, Some(e));
            }
        }
    }
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, frame);
    out
}

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(512),
        // Failures are turned into plain tests below; no files are written.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// Strategies: every variant of every frame.

fn chan() -> impl Strategy<Value = ChanId> {
    prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()].prop_map(ChanId)
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![Just(End::A), Just(End::B)]
}

fn end_ref() -> impl Strategy<Value = EndRef> {
    (chan(), end()).prop_map(|(chan, end)| EndRef { chan, end })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9:._-]{1,40}",
        any::<String>(),
        // Long enough for every MessagePack string header width but one.
        (0usize..300).prop_map(|n| "é".repeat(n)),
    ]
}

fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn u32s() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), any::<u32>()]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    use ErrorCode::*;
    prop_oneof![
        Just(BadRequest),
        Just(Unauthorized),
        Just(UnsupportedVersion),
        Just(InvalidName),
        Just(NameTaken),
        Just(UnknownChannel),
        Just(TypeMismatch),
        Just(Closed),
        Just(UnknownProcess),
        Just(ShuttingDown),
        Just(InvalidKey),
        Just(TooLarge),
        Just(NotAnInteger),
        Just(Overflow),
        Just(Storage),
        Just(TooManySubscriptions),
    ]
}

fn msg() -> BoxedStrategy<Frame> {
    (chan(), end(), vec(end_ref(), 0..40), blob(200))
        .prop_map(|(chan, to, carried, body)| {
            Frame::Msg(Msg {
                chan,
                to,
                carried,
                body,
            })
        })
        .boxed()
}

fn request() -> BoxedStrategy<Request> {
    prop_oneof![
        (u32s(), text(), text()).prop_map(|(version, name, token)| Request::Hello {
            version,
            name,
            token
        }),
        (text(), any::<bool>()).prop_map(|(type_name, pair)| Request::Create { type_name, pair }),
        (text(), chan()).prop_map(|(name, chan)| Request::Register { name, chan }),
        (text(), text()).prop_map(|(name, type_name)| Request::Lookup { name, type_name }),
        Just(Request::List),
        (
            prop_oneof![Just(ControlAction::Restart), Just(ControlAction::Stop)],
            proptest::option::of(text())
        )
            .prop_map(|(action, target)| Request::Control { action, target }),
        (
            text(),
            u32s(),
            prop_oneof![Just(WhenFull::Wait), Just(WhenFull::Refuse)]
        )
            .prop_map(|(name, max_in_flight, when_full)| Request::Serve {
                name,
                max_in_flight,
                when_full
            }),
        text().prop_map(|name| Request::Unserve { name }),
    ]
    .boxed()
}

fn reply() -> BoxedStrategy<Reply> {
    prop_oneof![
        (text(), u32s(), any::<u64>(), u32s(), chan(), chan()).prop_map(
            |(name, window, window_bytes, max_frame, active, passive)| Reply::Welcome {
                name,
                window,
                window_bytes,
                max_frame,
                active,
                passive
            }
        ),
        chan().prop_map(|chan| Reply::Created { chan }),
        (chan(), end(), any::<bool>(), any::<bool>(), text()).prop_map(
            |(chan, end, peer_gone, peer_queued, type_name)| Reply::Found {
                chan,
                end,
                peer_gone,
                peer_queued,
                type_name
            }
        ),
        vec(
            (text(), chan(), text()).prop_map(|(name, chan, type_name)| ChannelInfo {
                name,
                chan,
                type_name
            }),
            0..20
        )
        .prop_map(|channels| Reply::Channels { channels }),
        Just(Reply::Done),
        (error_code(), text()).prop_map(|(code, message)| Reply::Error { code, message }),
    ]
    .boxed()
}

fn notice() -> BoxedStrategy<Notice> {
    prop_oneof![
        (chan(), end(), u32s(), any::<u64>()).prop_map(|(chan, end, credit, bytes)| {
            Notice::Attach {
                chan,
                end,
                credit,
                bytes,
            }
        }),
        (chan(), end(), u32s()).prop_map(|(chan, end, count)| Notice::Release { chan, end, count }),
        chan().prop_map(|chan| Notice::Close { chan }),
    ]
    .boxed()
}

fn event() -> BoxedStrategy<Event> {
    prop_oneof![
        (chan(), end(), any::<bool>()).prop_map(|(chan, end, queued)| Event::PeerGone {
            chan,
            end,
            queued
        }),
        (chan(), end()).prop_map(|(chan, end)| Event::PeerBack { chan, end }),
        (chan(), any::<bool>()).prop_map(|(chan, queued)| Event::Closed { chan, queued }),
        (proptest::option::of(chan()), error_code(), text()).prop_map(|(chan, code, message)| {
            Event::Refused {
                chan,
                code,
                message,
            }
        }),
    ]
    .boxed()
}

/// A key, topic or pattern: any bytes a `str` field can hold.
fn key() -> impl Strategy<Value = Bytes> {
    blob(80)
}

fn ttl() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(u64::MAX - 1),
        any::<u64>().prop_map(|t| t.min(u64::MAX - 1))
    ]
}

fn op() -> BoxedStrategy<Op> {
    let value = || blob(100);
    prop_oneof![
        key().prop_map(|key| Op::Get { key }),
        (
            key(),
            value(),
            proptest::option::of(prop_oneof![Just(u64::MAX), any::<u64>()]),
            any::<bool>()
        )
            .prop_map(|(key, value, ttl_ms, if_absent)| Op::Set {
                key,
                value,
                ttl_ms,
                if_absent
            }),
        key().prop_map(|key| Op::Delete { key }),
        key().prop_map(|key| Op::Contains { key }),
        (
            key(),
            prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>()]
        )
            .prop_map(|(key, by)| Op::Incr { key, by }),
        (
            key(),
            proptest::option::of(value()),
            proptest::option::of(value())
        )
            .prop_map(|(key, expected, new)| Op::Cas { key, expected, new }),
        (key(), proptest::option::of(ttl())).prop_map(|(key, ttl_ms)| Op::Expire { key, ttl_ms }),
        key().prop_map(|key| Op::Ttl { key }),
        key().prop_map(|pattern| Op::Keys { pattern }),
        key().prop_map(|pattern| Op::GetAll { pattern }),
        Just(Op::Len),
        (key(), value()).prop_map(|(topic, body)| Op::Publish { topic, body }),
        (key(), vec(value(), 0..10)).prop_map(|(topic, bodies)| Op::PublishMany { topic, bodies }),
        (u32s(), u32s(), key()).prop_map(|(sub, credit, pattern)| Op::Subscribe {
            sub,
            credit,
            pattern
        }),
        u32s().prop_map(|sub| Op::Unsubscribe { sub }),
        (u32s(), u32s(), any::<bool>(), key()).prop_map(|(sub, credit, prefix, key)| {
            Op::Watch {
                sub,
                credit,
                prefix,
                key,
            }
        }),
        (u32s(), u32s()).prop_map(|(sub, n)| Op::Credit { sub, n }),
        Just(Op::Sync),
    ]
    .boxed()
}

fn op_reply() -> BoxedStrategy<OpReply> {
    prop_oneof![
        Just(OpReply::Done),
        blob(100).prop_map(OpReply::Value),
        Just(OpReply::Nil),
        any::<i64>().prop_map(OpReply::Int),
        any::<bool>().prop_map(OpReply::Bool),
        vec(text(), 0..10).prop_map(OpReply::Keys),
        vec((text(), blob(50)), 0..10).prop_map(OpReply::Entries),
        (error_code(), text()).prop_map(|(code, message)| OpReply::Error { code, message }),
    ]
    .boxed()
}

fn delivery() -> BoxedStrategy<Delivery> {
    prop_oneof![
        (u32s(), key(), blob(100)).prop_map(|(sub, topic, body)| Delivery::Message {
            sub,
            topic,
            body
        }),
        (u32s(), any::<u64>()).prop_map(|(sub, count)| Delivery::Missed { sub, count }),
        (
            u32s(),
            prop_oneof![
                Just(ChangeKind::Set),
                Just(ChangeKind::Deleted),
                Just(ChangeKind::Expired)
            ],
            key(),
            blob(100)
        )
            .prop_map(|(sub, kind, key, value)| Delivery::Changed {
                sub,
                kind,
                key,
                value
            }),
    ]
    .boxed()
}

/// Any frame, of every kind.
fn frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        msg(),
        (chan(), end(), u32s(), any::<u64>()).prop_map(|(chan, end, n, bytes)| Frame::Credit {
            chan,
            end,
            n,
            bytes
        }),
        (u32s(), request()).prop_map(|(id, body)| Frame::Request { id, body }),
        (u32s(), reply()).prop_map(|(id, body)| Frame::Reply { id, body }),
        notice().prop_map(Frame::Notice),
        event().prop_map(Frame::Event),
        (u32s(), any::<bool>(), op()).prop_map(|(id, quiet, op)| Frame::Op { id, quiet, op }),
        (u32s(), op_reply()).prop_map(|(id, reply)| Frame::OpReply { id, reply }),
        delivery().prop_map(Frame::Delivery),
        call().prop_map(Frame::Call),
        (u32s(), call_status(), vec(any::<u8>(), 0..64)).prop_map(|(id, status, body)| {
            Frame::CallReply {
                id,
                status,
                body: Bytes::from(body),
            }
        }),
        u32s().prop_map(|id| Frame::Cancel { id }),
    ]
    .boxed()
}

/// A name as calls carry it: 1 to 255 bytes of UTF-8.
fn call_name() -> impl Strategy<Value = String> {
    "[a-z\\-\\.:é]{1,40}".prop_filter("at most 255 bytes", |s| !s.is_empty() && s.len() <= 255)
}

fn call() -> impl Strategy<Value = Call> {
    (
        u32s(),
        u32s(),
        prop_oneof![Just(0u8), Just(WAIT_FOR_SERVER)],
        call_name(),
        call_name(),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, timeout_ms, flags, service, method, body)| Call {
            id,
            timeout_ms,
            flags,
            service,
            method,
            body: Bytes::from(body),
        })
}

fn call_status() -> impl Strategy<Value = CallStatus> {
    (0u8..=10).prop_map(|b| CallStatus::from_u8(b).expect("statuses 0 to 10 exist"))
}

/// A frame with a valid length prefix and a kind byte this version knows (or a near
/// miss), and arbitrary bytes as its payload: it reaches every payload decoder.
fn framed_noise() -> impl Strategy<Value = Vec<u8>> {
    (0u8..=13, vec(any::<u8>(), 0..300)).prop_map(|(kind, payload)| {
        let mut out = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(&payload);
        out
    })
}

// ---------------------------------------------------------------------------------------
// The properties.

proptest! {
    #![proptest_config(config())]

    /// (a) Arbitrary bytes: the decoder returns, reads nothing above `max_frame` and
    /// allocates no more than the frame it reads allows.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..600),
        max_frame in prop_oneof![Just(1u32), 1u32..64, 64u32..4096, Just(u32::MAX)],
    ) {
        decode_all(&bytes, max_frame);
    }

    /// (a) The same, with valid length prefixes and kind bytes, several frames in a row.
    #[test]
    fn arbitrary_payloads_never_panic(frames in vec(framed_noise(), 1..6)) {
        decode_all(&frames.concat(), 1 << 20);
    }

    /// (b) Every frame survives encoding and decoding unchanged, split anywhere across
    /// two reads.
    #[test]
    fn every_frame_roundtrips(frame in frame(), split in any::<prop::sample::Index>()) {
        let bytes = encode(&frame);
        let len = bytes.len() - 4;
        let at = split.index(bytes.len());
        let dec = Decoder::new(len as u32);
        let mut buf = BytesMut::from(&bytes[..at]);
        prop_assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&bytes[at..]);
        prop_assert_eq!(dec.decode(&mut buf), Ok(Some(frame)));
        prop_assert!(buf.is_empty());
        // One byte less than the frame is refused from the prefix alone.
        let mut buf = BytesMut::from(&bytes[..4]);
        prop_assert_eq!(
            Decoder::new(len as u32 - 1).decode(&mut buf),
            Err(FrameError::TooLarge { len: len as u32, max: len as u32 - 1 })
        );
    }

    /// (c) A valid frame cut short, whether or not its length prefix says so, is
    /// refused or read; never a panic.
    #[test]
    fn truncated_frames_never_panic(frame in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&frame);
        let payload = &bytes[4..];
        let keep = cut.index(payload.len());
        // The prefix still announces the whole frame: it waits for the rest.
        let (frames, err) = decode_all(&bytes[..4 + keep], u32::MAX);
        prop_assert!(frames.is_empty() && err.is_none());
        // The prefix announces only what is left: a shorter frame, read or refused.
        let mut short = (keep as u32).to_le_bytes().to_vec();
        short.extend_from_slice(&payload[..keep]);
        decode_all(&short, u32::MAX);
    }

    /// (c) A valid frame with one byte changed, followed by another valid frame, is
    /// refused or read; never a panic.
    #[test]
    fn mutated_frames_never_panic(
        frame in frame(),
        next in frame(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = encode(&frame);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        bytes.extend_from_slice(&encode(&next));
        decode_all(&bytes, 1 << 20);
    }
}

// ---------------------------------------------------------------------------------------
// Extremes the strategies reach only by chance.

#[test]
fn a_msg_with_65535_carried_ends_roundtrips() {
    let frame = Frame::Msg(Msg {
        chan: ChanId(u32::MAX),
        to: End::B,
        carried: (0..65_535u32)
            .map(|i| EndRef {
                chan: ChanId(i),
                end: if i % 2 == 0 { End::A } else { End::B },
            })
            .collect(),
        body: Bytes::from_static(&[0xc0]),
    });
    let bytes = encode(&frame);
    let (frames, err) = decode_all(&bytes, u32::MAX);
    assert_eq!(err, None);
    assert_eq!(frames, vec![frame]);
}

#[test]
fn keys_of_65535_bytes_roundtrip() {
    let long = Bytes::from(vec![b'k'; 65_535]);
    let frames = vec![
        Frame::Op {
            id: u32::MAX,
            quiet: true,
            op: Op::Watch {
                sub: u32::MAX,
                credit: u32::MAX,
                prefix: true,
                key: long.clone(),
            },
        },
        Frame::OpReply {
            id: 0,
            reply: OpReply::Entries(vec![("k".repeat(65_535), long.clone())]),
        },
        Frame::Delivery(Delivery::Changed {
            sub: u32::MAX,
            kind: ChangeKind::Expired,
            key: long,
            value: Bytes::new(),
        }),
    ];
    for frame in frames {
        let (got, err) = decode_all(&encode(&frame), u32::MAX);
        assert_eq!(err, None);
        assert_eq!(got, vec![frame]);
    }
}

#[test]
fn counts_larger_than_the_frame_allocate_nothing_for_them() {
    // A reply claiming 4 billion channels in a 16-byte frame, and store replies and
    // operations claiming 4 billion entries: each is refused without reserving room.
    let mut channels = vec![4u8, 0, 0, 0, 0]; // kind Reply, id 0
    channels.extend_from_slice(&[0x82, 0xa5]);
    channels.extend_from_slice(b"reply");
    channels.extend_from_slice(&[0xa8]);
    channels.extend_from_slice(b"channels");
    channels.extend_from_slice(&[0xa8]);
    channels.extend_from_slice(b"channels");
    channels.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    let keys = [8u8, 0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff].to_vec();
    let entries = [8u8, 0, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff].to_vec();
    let many = [7u8, 0, 0, 0, 0, 18, 1, 0, b't', 0xff, 0xff, 0xff, 0xff].to_vec();
    for payload in [channels, keys, entries, many] {
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let (frames, err) = decode_all(&bytes, u32::MAX);
        assert!(frames.is_empty());
        assert!(
            matches!(err, Some(FrameError::Malformed { .. })),
            "{payload:?}: {err:?}"
        );
    }
}

#[test]
fn deeply_nested_messagepack_is_refused_without_exhausting_the_stack() {
    // A notice `close` with an unknown key (ignored by the protocol) holding 100,000
    // nested one-element arrays, and the same with arrays claiming 4 billion elements at
    // every level. A connection's reader has the default 2 MiB stack of a thread;
    // decoding must fit in a quarter of that, and allocate only what the frame allows.
    let nested = |header: &[u8]| {
        let mut payload = vec![5u8, 0x83, 0xa1, b'x'];
        for _ in 0..100_000 {
            payload.extend_from_slice(header);
        }
        payload.push(0xc0);
        payload.extend_from_slice(&[0xa2, b'o', b'p', 0xa5, b'c', b'l', b'o', b's', b'e']);
        payload.extend_from_slice(&[0xa4, b'c', b'h', b'a', b'n', 1]);
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        bytes
    };
    for bytes in [nested(&[0x91]), nested(&[0xdd, 0xff, 0xff, 0xff, 0xff])] {
        let outcome = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || decode_all(&bytes, u32::MAX))
            .expect("a thread starts")
            .join()
            .expect("the decoder does not panic");
        assert!(outcome.0.is_empty());
        assert!(
            matches!(outcome.1, Some(FrameError::Malformed { .. })),
            "{:?}",
            outcome.1
        );
    }
}
