//! A child that has passed hello and then sends what no client library would: credit near
//! `u32::MAX`, huge release counts, 65,535 carried ends, messages on ends it does not
//! hold, requests and store operations with every field at its extreme, and finally a
//! frame nested too deep to decode. The hub answers each with a refusal (or, for the last,
//! closes that connection), never panics, never sends a frame larger than the limit it
//! announced, and keeps serving another child's channel and store traffic all along.
//!
//! The hostile child is this test binary re-executed as the target `hostile`: instead of
//! joining through the client library, it reads its credentials from the environment
//! (`docs/PROTOCOL.md` §2) and speaks the protocol itself.

mod support;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use support::{child, run_main};
use yukicomm::wire::store::{Op, OpReply};
use yukicomm::wire::{
    encode_frame, ChanId, Decoder, End, EndRef, ErrorCode, Event, Frame, Msg, Notice, Reply,
    Request, DEFAULT_MAX_FRAME, ENV_FD, ENV_NAME, ENV_TARGET, PROTOCOL_VERSION,
};
use yukicomm::{Context, RecvError, RecvTimeoutError, RestartPolicy};

const T: Duration = Duration::from_secs(30);

/// A `close` notice whose unknown key holds 100,000 nested arrays: beyond what the hub
/// decodes (§3.3), so it closes the connection that sends it.
fn nested_notice() -> Vec<u8> {
    let mut payload = vec![5u8, 0x83, 0xa1, b'x'];
    payload.extend(std::iter::repeat_n(0x91, 100_000));
    payload.push(0xc0);
    payload.extend_from_slice(&[0xa2, b'o', b'p', 0xa5, b'c', b'l', b'o', b's', b'e']);
    payload.extend_from_slice(&[0xa4, b'c', b'h', b'a', b'n', 1]);
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    bytes
}

/// Reads until the hub closes the connection; true if it did within `T`.
fn closed_by_hub(s: &mut UnixStream) -> bool {
    let deadline = Instant::now() + T;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// The hostile child.

/// A connection that speaks the protocol by hand.
struct Raw {
    s: UnixStream,
    buf: BytesMut,
    dec: Decoder,
    window: u32,
    max_frame: u32,
    active: ChanId,
    passive: ChanId,
    next_id: u32,
    /// Frames read and not yet looked at.
    seen: VecDeque<Frame>,
}

type Step<T> = Result<T, String>;

/// The start of a value's debug form, for a message about it.
fn shown(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}").chars().take(120).collect()
}

impl Raw {
    /// Joins with the credentials the supervisor put in the environment.
    fn join() -> Step<Raw> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
        // The connection the supervisor handed this process, as a descriptor.
        let fd: i32 = var(ENV_FD)?.parse().map_err(|e| format!("{ENV_FD}: {e}"))?;
        // SAFETY: the supervisor passed this descriptor for this process to use, and
        // nothing else in this process owns it.
        let s = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
            dec: Decoder::new(DEFAULT_MAX_FRAME),
            window: 0,
            max_frame: 0,
            active: ChanId(0),
            passive: ChanId(0),
            next_id: 1,
            seen: VecDeque::new(),
        };
        raw.send(&Frame::Request {
            id: 0,
            body: Request::Hello {
                version: PROTOCOL_VERSION,
                name: var(ENV_NAME)?,
                token: String::new(),
            },
        })?;
        match raw.reply(0)? {
            Reply::Welcome {
                window,
                max_frame,
                active,
                passive,
                ..
            } => {
                raw.window = window;
                raw.max_frame = max_frame;
                raw.active = active;
                raw.passive = passive;
                // Every frame from now on must respect the limit the hub announced.
                raw.dec = Decoder::new(max_frame);
                Ok(raw)
            }
            other => Err(format!("hello answered {other:?}")),
        }
    }

    fn send(&mut self, frame: &Frame) -> Step<()> {
        let mut out = Vec::new();
        encode_frame(&mut out, frame);
        self.send_bytes(&out)
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Step<()> {
        self.s
            .write_all(bytes)
            .map_err(|e| format!("the hub stopped reading: {e}"))
    }

    /// The next frame from the hub, within `T`.
    fn read_frame(&mut self) -> Step<Frame> {
        let deadline = Instant::now() + T;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(format!("the hub sent a bad frame: {e}")),
            }
            if Instant::now() > deadline {
                return Err("the hub sent nothing in time".into());
            }
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("the hub closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
    }

    /// Reads until `pick` takes a frame; the others are kept in `seen`.
    fn wait_for<R>(&mut self, mut pick: impl FnMut(&Frame) -> Option<R>) -> Step<R> {
        if let Some(i) = self.seen.iter().position(|f| pick(f).is_some()) {
            let f = self.seen.remove(i).expect("position found");
            return Ok(pick(&f).expect("picked"));
        }
        loop {
            let f = self.read_frame()?;
            if let Some(r) = pick(&f) {
                return Ok(r);
            }
            self.seen.push_back(f);
        }
    }

    fn reply(&mut self, id: u32) -> Step<Reply> {
        self.wait_for(|f| match f {
            Frame::Reply { id: i, body } if *i == id => Some(body.clone()),
            _ => None,
        })
    }

    fn request_with_id(&mut self, id: u32, body: Request) -> Step<Reply> {
        self.send(&Frame::Request { id, body })?;
        self.reply(id)
    }

    fn request(&mut self, body: Request) -> Step<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        self.request_with_id(id, body)
    }

    /// The request `make` gives for the longest string that keeps its frame within the
    /// hub's limit.
    fn filling(&self, make: impl Fn(String) -> Request) -> Request {
        // A string this long already has the widest MessagePack header.
        let probe = 1 << 17;
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            &Frame::Request {
                id: u32::MAX,
                body: make("n".repeat(probe)),
            },
        );
        let overhead = out.len() - 4 - probe;
        make("n".repeat(self.max_frame as usize - overhead))
    }

    /// A request whose answer must be an error with `code`.
    fn refused_request(&mut self, body: Request, code: ErrorCode) -> Step<()> {
        let what = shown(&body);
        match self.request(body)? {
            Reply::Error { code: c, .. } if c == code => Ok(()),
            other => Err(format!("{what} answered {}, not {code:?}", shown(&other))),
        }
    }

    fn op(&mut self, op: Op) -> Step<OpReply> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Frame::Op {
            id,
            quiet: false,
            op,
        })?;
        self.wait_for(|f| match f {
            Frame::OpReply { id: i, reply } if *i == id => Some(reply.clone()),
            _ => None,
        })
    }

    fn op_expect(&mut self, op: Op, want: impl Fn(&OpReply) -> bool) -> Step<()> {
        let what = shown(&op);
        let got = self.op(op)?;
        if want(&got) {
            Ok(())
        } else {
            Err(format!("{what} answered {}", shown(&got)))
        }
    }

    /// Waits until the hub has handled every frame sent before; returns the frames that
    /// came meanwhile.
    fn barrier(&mut self) -> Step<Vec<Frame>> {
        match self.request(Request::List)? {
            Reply::Channels { .. } => Ok(self.seen.drain(..).collect()),
            other => Err(format!("list answered {other:?}")),
        }
    }

    fn msg(&mut self, chan: ChanId, to: End, carried: Vec<EndRef>, text: &str) -> Step<()> {
        self.send(&Frame::Msg(Msg {
            chan,
            to,
            carried,
            body: Bytes::from(rmp_serde::to_vec(text).expect("a string encodes")),
        }))
    }

    /// Tells the main process, which holds end B of our active channel.
    fn report(&mut self, text: &str) -> Step<()> {
        self.msg(self.active, End::B, Vec::new(), text)
    }
}

fn refusals(frames: &[Frame]) -> Vec<ErrorCode> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Event(Event::Refused { code, .. }) => Some(*code),
            _ => None,
        })
        .collect()
}

fn expect_refusals(frames: &[Frame], want: &[ErrorCode], step: &str) -> Step<()> {
    let got = refusals(frames);
    if got == want {
        Ok(())
    } else {
        Err(format!("{step}: refusals {got:?}, expected {want:?}"))
    }
}

fn hostile() -> Step<()> {
    let mut raw = Raw::join()?;
    let w = raw.window;
    let (active, passive) = (raw.active, raw.passive);
    let big = raw.max_frame as usize - 200;

    // 1. Credit near u32::MAX: for an end not attached (ignored), then on top of an
    //    attach that asked for u32::MAX. The hub still gives at most a window.
    for chan in [active, ChanId(0), ChanId(u32::MAX)] {
        for end in [End::A, End::B] {
            raw.send(&Frame::Credit {
                chan,
                end,
                n: u32::MAX,
                bytes: u64::MAX,
            })?;
        }
    }
    raw.send(&Frame::Notice(Notice::Attach {
        chan: passive,
        end: End::A,
        credit: 1,
        bytes: u64::MAX,
    }))?;
    raw.send(&Frame::Notice(Notice::Attach {
        chan: active,
        end: End::A,
        credit: u32::MAX,
        bytes: u64::MAX,
    }))?;
    for _ in 0..2 {
        raw.send(&Frame::Credit {
            chan: active,
            end: End::A,
            n: u32::MAX,
            bytes: u64::MAX,
        })?;
    }
    let frames = raw.barrier()?;
    expect_refusals(&frames, &[], "credit")?;
    let extra = 100;
    raw.report(&format!("send {}", w + extra))?;
    // The main process sends them all, then a word on our passive channel.
    let mut got = 0u32;
    raw.wait_for(|f| match f {
        Frame::Msg(m) if m.chan == active => {
            got += 1;
            None
        }
        Frame::Msg(m) if m.chan == passive => Some(()),
        _ => None,
    })?;
    if got != w {
        return Err(format!(
            "after credit near u32::MAX, got {got} messages, not a window = {w}"
        ));
    }
    raw.send(&Frame::Credit {
        chan: active,
        end: End::A,
        n: extra,
        bytes: u64::MAX,
    })?;
    for _ in 0..extra {
        raw.wait_for(|f| matches!(f, Frame::Msg(m) if m.chan == active).then_some(()))?;
    }
    raw.send(&Frame::Credit {
        chan: active,
        end: End::A,
        n: u32::MAX,
        bytes: u64::MAX,
    })?;
    raw.report("ok credit")?;

    // 2. Huge release counts: the hold is gone, sending from it is refused.
    let x = match raw.request(Request::Create {
        type_name: "u8".into(),
        pair: true,
    })? {
        Reply::Created { chan } => chan,
        other => return Err(format!("create answered {other:?}")),
    };
    for (chan, end, count) in [
        (x, End::A, u32::MAX),
        (x, End::B, 0),
        (ChanId(u32::MAX), End::A, u32::MAX),
        (ChanId(0), End::B, u32::MAX),
        (active, End::B, u32::MAX),
    ] {
        raw.send(&Frame::Notice(Notice::Release { chan, end, count }))?;
    }
    raw.msg(x, End::B, Vec::new(), "from a released end")?;
    raw.msg(x, End::A, Vec::new(), "from a held end")?;
    let frames = raw.barrier()?;
    expect_refusals(&frames, &[ErrorCode::BadRequest], "release")?;
    raw.send(&Frame::Notice(Notice::Release {
        chan: x,
        end: End::B,
        count: u32::MAX,
    }))?;
    raw.report("ok release")?;

    // 3. Messages on ends it does not hold, in a burst: one refusal and one credit each.
    let echo_active = match raw.request(Request::List)? {
        Reply::Channels { channels } => channels
            .iter()
            .find(|c| c.name == "echo-active")
            .map(|c| c.chan)
            .ok_or("echo-active is not listed")?,
        other => return Err(format!("list answered {other:?}")),
    };
    let targets = [
        (ChanId(0), End::A),
        (ChanId(u32::MAX), End::B),
        (echo_active, End::A),
        (echo_active, End::B),
    ];
    let n = 20_000;
    let mut burst = Vec::new();
    for i in 0..n {
        let (chan, to) = targets[i % targets.len()];
        encode_frame(
            &mut burst,
            &Frame::Msg(Msg {
                chan,
                to,
                carried: Vec::new(),
                body: Bytes::from_static(&[0xc0]),
            }),
        );
    }
    raw.send_bytes(&burst)?;
    let frames = raw.barrier()?;
    let refused = refusals(&frames).len();
    let credits = frames
        .iter()
        .filter(|f| matches!(f, Frame::Credit { n: 1, .. }))
        .count();
    if refused != n || credits != n {
        return Err(format!(
            "{n} messages on unheld ends: {refused} refusals, {credits} credits"
        ));
    }
    raw.report("ok unheld")?;

    // 4. 65,535 carried ends: of a held end (delivered to the main process), then of
    //    ends not held (refused).
    let y = match raw.request(Request::Create {
        type_name: "u8".into(),
        pair: true,
    })? {
        Reply::Created { chan } => chan,
        other => return Err(format!("create answered {other:?}")),
    };
    let held = EndRef {
        chan: y,
        end: End::B,
    };
    raw.msg(active, End::B, vec![held; 65_535], "carried")?;
    for chan in [ChanId(u32::MAX), echo_active] {
        let unheld = EndRef { chan, end: End::A };
        raw.msg(active, End::B, vec![unheld; 65_535], "not held")?;
    }
    let frames = raw.barrier()?;
    expect_refusals(
        &frames,
        &[ErrorCode::BadRequest, ErrorCode::BadRequest],
        "carried",
    )?;
    raw.report("ok carried")?;

    // 5. Requests with every field at its extreme, as long as a frame allows: every
    //    answer is an error that still fits in a frame.
    let hello = raw.filling(|name| Request::Hello {
        version: u32::MAX,
        name,
        token: "t".into(),
    });
    raw.refused_request(hello, ErrorCode::BadRequest)?;
    match raw.request_with_id(u32::MAX, Request::List)? {
        Reply::Channels { .. } => {}
        other => return Err(format!("list with id u32::MAX answered {}", shown(&other))),
    }
    let create = raw.filling(|type_name| Request::Create {
        type_name,
        pair: true,
    });
    raw.refused_request(create, ErrorCode::BadRequest)?;
    let lookup = raw.filling(|type_name| Request::Lookup {
        name: "hostile-passive".into(),
        type_name,
    });
    raw.refused_request(lookup, ErrorCode::BadRequest)?;
    let lookup = raw.filling(|name| Request::Lookup {
        name,
        type_name: "u8".into(),
    });
    raw.refused_request(lookup, ErrorCode::UnknownChannel)?;
    let register = raw.filling(|name| Request::Register { name, chan: y });
    raw.refused_request(register, ErrorCode::InvalidName)?;
    let longest = format!("h{}", "-".repeat(127));
    match raw.request(Request::Register {
        name: longest.clone(),
        chan: y,
    })? {
        Reply::Done => {}
        other => return Err(format!("registering a 128-byte name answered {other:?}")),
    }
    raw.refused_request(
        Request::Register {
            name: format!("{longest}-"),
            chan: y,
        },
        ErrorCode::InvalidName,
    )?;
    raw.refused_request(
        Request::Register {
            name: "hostile-elsewhere".into(),
            chan: ChanId(u32::MAX),
        },
        ErrorCode::BadRequest,
    )?;
    let control = raw.filling(|target| Request::Control {
        action: yukicomm::wire::ControlAction::Stop,
        target: Some(target),
    });
    raw.refused_request(control, ErrorCode::UnknownProcess)?;
    match raw.request(Request::Lookup {
        name: longest.clone(),
        type_name: "x".repeat(4096),
    })? {
        Reply::Found { chan, .. } if chan == y => {}
        other => return Err(format!("looking up a 128-byte name answered {other:?}")),
    }
    raw.report("ok requests")?;

    // 6. Notices on channels that do not exist or are not held: ignored.
    for chan in [ChanId(0), ChanId(u32::MAX), echo_active] {
        for end in [End::A, End::B] {
            raw.send(&Frame::Notice(Notice::Attach {
                chan,
                end,
                credit: u32::MAX,
                bytes: u64::MAX,
            }))?;
        }
        raw.send(&Frame::Notice(Notice::Close { chan }))?;
    }
    let frames = raw.barrier()?;
    expect_refusals(&frames, &[], "notices")?;
    raw.report("ok notices")?;

    // 7. Store operations with every field at its extreme.
    use OpReply as R;
    let bad_key = |r: &R| {
        matches!(
            r,
            R::Error {
                code: ErrorCode::InvalidKey,
                ..
            }
        )
    };
    for key in [vec![b'k'; 65_535], Vec::new(), vec![0xff, 0xfe]] {
        raw.op_expect(Op::Get { key: key.into() }, bad_key)?;
    }
    let key = Bytes::from(vec![b'k'; 1024]);
    raw.op_expect(
        Op::Set {
            key: key.clone(),
            value: Bytes::from_static(&[1]),
            ttl_ms: Some(u64::MAX - 1),
            if_absent: true,
        },
        |r| matches!(r, R::Bool(true)),
    )?;
    raw.op_expect(
        Op::Ttl { key: key.clone() },
        |r| matches!(r, R::Int(t) if *t > 0),
    )?;
    raw.op_expect(
        Op::Expire {
            key: key.clone(),
            ttl_ms: Some(u64::MAX - 1),
        },
        |r| matches!(r, R::Bool(true)),
    )?;
    raw.op_expect(
        Op::Set {
            key: key.clone(),
            value: Bytes::from(vec![0xc0; big - 2048]),
            ttl_ms: Some(u64::MAX),
            if_absent: false,
        },
        |r| {
            matches!(
                r,
                R::Error {
                    code: ErrorCode::TooLarge,
                    ..
                }
            )
        },
    )?;
    let n = Bytes::from_static(b"hostile-n");
    for (by, want) in [(i64::MAX, Some(i64::MAX)), (1, None), (i64::MIN, Some(-1))] {
        raw.op_expect(Op::Incr { key: n.clone(), by }, |r| match want {
            Some(v) => *r == R::Int(v),
            None => matches!(
                r,
                R::Error {
                    code: ErrorCode::Overflow,
                    ..
                }
            ),
        })?;
    }
    raw.op_expect(
        Op::Cas {
            key: key.clone(),
            expected: Some(Bytes::from(vec![0xc0; big - 2048])),
            new: None,
        },
        |r| matches!(r, R::Bool(false)),
    )?;
    let granted = |r: &R| matches!(r, R::Int(c) if *c > 0 && *c < i64::from(u32::MAX));
    raw.op_expect(
        Op::Subscribe {
            sub: u32::MAX,
            credit: u32::MAX,
            pattern: Bytes::from_static(b"*"),
        },
        granted,
    )?;
    raw.op_expect(
        Op::Subscribe {
            sub: u32::MAX,
            credit: 1,
            pattern: Bytes::from_static(b"*"),
        },
        |r| {
            matches!(
                r,
                R::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            )
        },
    )?;
    raw.op_expect(
        Op::Watch {
            sub: 0,
            credit: u32::MAX,
            prefix: true,
            key: Bytes::new(),
        },
        granted,
    )?;
    for (sub, n) in [(u32::MAX, u32::MAX), (0, u32::MAX), (12_345, u32::MAX)] {
        raw.send(&Frame::Op {
            id: 0,
            quiet: false,
            op: Op::Credit { sub, n },
        })?;
    }
    // Far more subscriptions than allowed, quietly: only the refusals are answered.
    let mut subs = Vec::new();
    for sub in 1..=10_100u32 {
        encode_frame(
            &mut subs,
            &Frame::Op {
                id: sub,
                quiet: true,
                op: Op::Subscribe {
                    sub,
                    credit: u32::MAX,
                    pattern: Bytes::from_static(b"hostile-quiet"),
                },
            },
        );
    }
    raw.send_bytes(&subs)?;
    raw.op_expect(Op::Sync, |r| *r == R::Done)?;
    let too_many = raw
        .seen
        .iter()
        .filter(|f| {
            matches!(
                f,
                Frame::OpReply {
                    reply: R::Error {
                        code: ErrorCode::TooManySubscriptions,
                        ..
                    },
                    ..
                }
            )
        })
        .count();
    // Two subscriptions were there already; the default limit is 10,000.
    if too_many != 10_100 + 2 - 10_000 {
        return Err(format!("{too_many} subscriptions refused as too many"));
    }
    raw.op_expect(
        Op::PublishMany {
            topic: Bytes::from_static(b"hostile-topic"),
            bodies: vec![Bytes::from_static(&[0xc0]); 100_000],
        },
        // Given to our `*` subscription as far as its credit goes, dropped beyond.
        |r| matches!(r, R::Int(n) if *n > 0 && *n <= 100_000),
    )?;
    raw.op_expect(
        Op::Keys {
            pattern: Bytes::from("*?".repeat(512)),
        },
        |r| matches!(r, R::Keys(_)),
    )?;
    raw.op_expect(Op::Unsubscribe { sub: u32::MAX }, |r| *r == R::Done)?;
    raw.op_expect(Op::Sync, |r| *r == R::Done)?;
    raw.seen.clear();
    raw.report("ok store")?;

    // 8. A frame nested too deep to decode: the hub closes this connection.
    raw.report("done")?;
    raw.send_bytes(&nested_notice())?;
    if !closed_by_hub(&mut raw.s) {
        return Err("a frame nested too deep did not close the connection".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The well-behaved child and the main process.

async fn echo(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let active = ctx.active_channel::<u64>();
        let store = ctx.store();
        while let Ok(n) = active.recv_async().await {
            store.incr_async("echo-count", 1).await?;
            active.send_async(n).await?;
        }
        Ok(())
    })
    .await
}

/// Threads of the main process that panicked.
static PANICKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[test]
fn hostile_frames_after_hello_are_refused_and_everyone_else_is_served() {
    if std::env::var(ENV_TARGET).as_deref() == Ok("hostile") {
        // This process is the hostile child; it joins by hand.
        let code = match hostile() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("hostile child: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let (mut app, _w) = test_app!(Duration::from_secs(240));
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut p) = PANICKED.lock() {
            p.push(name);
        }
        default_hook(info);
    }));
    app.add_target("echo", echo);
    app.add_target("hostile", |_ctx: Context| async move {
        unreachable!("the hostile child joins by hand")
    })
    .restart(RestartPolicy::Never);
    run_main(app, |ctx| {
        let echo = ctx.get_channel::<u64>("echo-active").unwrap();
        let store = ctx.store();
        let round_trip = |n: u64| {
            echo.send(n).unwrap();
            assert_eq!(echo.recv_timeout(T).unwrap(), n, "echo round trip");
        };
        round_trip(0);

        // A peer that has not said hello sends the frame nested too deep.
        let mut s = UnixStream::connect(ctx.socket_path()).unwrap();
        s.write_all(&nested_notice()).unwrap();
        assert!(closed_by_hub(&mut s), "a frame nested too deep closes");
        round_trip(1);

        // Everyone else is served while the hostile child works: the echo child's
        // channel and its store operations, and the main process's own.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let load = {
            let (stop, served) = (stop.clone(), served.clone());
            let store = store.clone();
            std::thread::spawn(move || {
                let mut n = 2;
                while !stop.load(Ordering::Acquire) {
                    echo.send(n).unwrap();
                    assert_eq!(echo.recv_timeout(T).unwrap(), n, "echo during the attack");
                    store.set("main-n", &n).unwrap();
                    assert_eq!(store.get::<u64>("main-n").unwrap(), Some(n));
                    served.fetch_add(1, Ordering::AcqRel);
                    n += 1;
                }
                echo
            })
        };

        let hostile = ctx.get_channel::<String>("hostile-active").unwrap();
        let hostile_passive = ctx.get_channel::<String>("hostile-passive").unwrap();
        let mut steps = Vec::new();
        loop {
            let report = hostile
                .recv_timeout(T)
                .unwrap_or_else(|e| panic!("after {steps:?}: {e}"));
            if let Some(n) = report.strip_prefix("send ") {
                for i in 0..n.parse::<u32>().unwrap() {
                    hostile.send(format!("{i}")).unwrap();
                }
                hostile_passive.send("sent".into()).unwrap();
            } else if report == "carried" {
                steps.push(report);
            } else if report == "done" {
                break;
            } else {
                assert!(report.starts_with("ok "), "{report}");
                steps.push(report);
            }
        }
        assert_eq!(
            steps,
            [
                "ok credit",
                "ok release",
                "ok unheld",
                "carried",
                "ok carried",
                "ok requests",
                "ok notices",
                "ok store"
            ]
        );
        // The hostile child's connection is closed; it exits and is not restarted.
        match hostile.recv_timeout(T) {
            Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. })) => {}
            other => panic!("expected the hostile child gone, got {other:?}"),
        }

        stop.store(true, Ordering::Release);
        let echo = load.join().expect("the load thread");
        assert!(served.load(Ordering::Acquire) > 0);
        // And after.
        echo.send(u64::MAX).unwrap();
        assert_eq!(echo.recv_timeout(T).unwrap(), u64::MAX);
        let count = store.get::<i64>("echo-count").unwrap().unwrap_or(0);
        assert!(count >= 3, "the echo child's store operations: {count}");
        let panicked = PANICKED.lock().unwrap().clone();
        assert!(panicked.is_empty(), "threads panicked: {panicked:?}");
    });
}
