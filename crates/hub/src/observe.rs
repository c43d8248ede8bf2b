//! Observers, and the message tap.
//!
//! An observer is a process of the main process's user (the `yukicomm` command) that
//! connects to the hub's socket and says `observe` instead of `hello`
//! (`docs/PROTOCOL.md`, section 16). It joins nothing: it holds no channel end and no
//! subscription, and may only ask for statistics ([`Request::Stats`]), restart or stop
//! a child ([`Request::Control`], as the main process would), and tap messages
//! ([`Request::Monitor`]). The socket admits only the hub's own user (its directory is
//! private and the hub checks the peer's credentials), so an observer sees nothing its
//! user could not see anyway.
//!
//! **The tap** samples messages for observers that asked for it, and only if the main
//! process allows it ([`HubConfig::monitor`](crate::HubConfig::monitor), or
//! `YUKICOMM_MONITOR=1` in its environment). Routing pays one relaxed atomic load per
//! batch while nobody taps. While someone does, a message is offered to it only while
//! the sampling budget lasts ([`SAMPLES_PER_TICK`] per 100 ms); a sample is its first
//! [`HEAD`] bytes (a reference to the received buffer, not a copy), put in a buffer of at
//! most [`BUFFER`] samples with a `try_lock`: when the buffer is full or busy, the sample
//! is dropped and counted, never waited for. A task drains the buffer every 100 ms, names
//! the channels (one short router section), and sends each observer what matches its
//! pattern, unless that observer already has [`OBSERVER_BACKLOG`] bytes unread: then its
//! samples are dropped and counted too. Observers are told the counts
//! ([`Event::TapDropped`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use wildmatch::WildMatch;
use yukicomm_link::reader::FrameHandler;
use yukicomm_wire::stats::TapTarget;
use yukicomm_wire::{ChanId, End, ErrorCode, Event, Frame, Reply, Request, PROTOCOL_VERSION};

use crate::conn::Conn;
use crate::core::Inner;
use crate::router::{ConnId, LOCAL};

/// Samples the tap may take per 100 ms (so at most 200 a second).
pub const SAMPLES_PER_TICK: u32 = 20;
/// Most samples waiting for the drain task.
pub const BUFFER: usize = 1024;
/// The bytes of a message's body a sample keeps.
pub const HEAD: usize = 256;
/// Bytes an observer may have unread before its samples are dropped.
pub const OBSERVER_BACKLOG: usize = 1 << 20;
/// How often the drain task runs.
const TICK: Duration = Duration::from_millis(100);

/// Where a sampled message went, before names are known.
enum Where {
    Chan(ChanId, End),
    Topic(Bytes),
}

struct Sample {
    from: ConnId,
    at: Where,
    len: u64,
    head: Bytes,
}

/// An observer that taps.
struct Watcher {
    conn: Arc<Conn>,
    pattern: WildMatch,
    /// Samples dropped for it and not yet reported.
    dropped: u64,
}

/// The message tap (see the module documentation).
pub(crate) struct Tap {
    allowed: bool,
    /// Some observer taps: routing offers samples.
    active: AtomicBool,
    /// Samples still allowed in this tick.
    budget: AtomicU32,
    samples: Mutex<VecDeque<Sample>>,
    /// Samples dropped because the buffer was full or busy.
    dropped: AtomicU64,
    watchers: Mutex<Vec<Watcher>>,
}

impl Tap {
    pub(crate) fn new(allowed: bool) -> Tap {
        Tap {
            allowed,
            active: AtomicBool::new(false),
            budget: AtomicU32::new(0),
            samples: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
        }
    }

    /// Whether the main process allows tapping.
    pub(crate) fn allowed(&self) -> bool {
        self.allowed
    }

    /// Whether anyone taps (one relaxed load: what routing pays while nobody does).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn offer(&self, from: ConnId, at: Where, body: &Bytes) {
        if self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            return;
        }
        let Some(mut q) = self.samples.try_lock() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if q.len() >= BUFFER {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(Sample {
            from,
            at,
            len: body.len() as u64,
            head: body.slice(..body.len().min(HEAD)),
        });
    }

    /// Offers what in `frames` (from `from`) is a message or a publication.
    pub(crate) fn offer_frames(&self, from: ConnId, frames: &[Frame]) {
        for f in frames {
            match f {
                Frame::Msg(m) => self.offer(from, Where::Chan(m.chan, m.to), &m.body),
                Frame::Op { op, .. } => self.offer_op(from, op),
                _ => {}
            }
        }
    }

    /// Offers a store operation, if it publishes.
    pub(crate) fn offer_op(&self, from: ConnId, op: &yukicomm_wire::store::Op) {
        use yukicomm_wire::store::Op;
        match op {
            Op::Publish { topic, body } => self.offer(from, Where::Topic(topic.clone()), body),
            Op::PublishMany { topic, bodies } => {
                for m in bodies {
                    self.offer(from, Where::Topic(topic.clone()), m);
                }
            }
            _ => {}
        }
    }

    /// Offers one message of the main process.
    pub(crate) fn offer_msg(&self, chan: ChanId, to: End, body: &Bytes) {
        self.offer(LOCAL, Where::Chan(chan, to), body);
    }

    fn add(&self, conn: Arc<Conn>, pattern: &str) {
        let mut w = self.watchers.lock();
        w.retain(|x| !Arc::ptr_eq(&x.conn, &conn));
        w.push(Watcher {
            conn,
            pattern: WildMatch::new(pattern),
            dropped: 0,
        });
        self.active.store(true, Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, conn: &Arc<Conn>) {
        let mut w = self.watchers.lock();
        w.retain(|x| !Arc::ptr_eq(&x.conn, conn));
        if w.is_empty() {
            self.active.store(false, Ordering::Relaxed);
            self.samples.lock().clear();
        }
    }
}

/// The task that refills the sampling budget and hands samples to observers.
pub(crate) async fn drain(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let tap = &inner.tap;
        if !tap.active() {
            continue;
        }
        tap.budget.store(SAMPLES_PER_TICK, Ordering::Relaxed);
        let samples: Vec<Sample> = tap.samples.lock().drain(..).collect();
        let dropped = tap.dropped.swap(0, Ordering::Relaxed);
        if samples.is_empty() && dropped == 0 {
            continue;
        }
        // Names, in one short router section.
        let named: Vec<(String, TapTarget, &Sample)> = {
            let r = inner.router.lock();
            samples
                .iter()
                .map(|s| {
                    let target = match &s.at {
                        Where::Chan(chan, end) => TapTarget::Channel {
                            chan: *chan,
                            name: r.channel_name(*chan),
                            end: *end,
                        },
                        Where::Topic(t) => TapTarget::Topic {
                            topic: String::from_utf8_lossy(t).into_owned(),
                        },
                    };
                    (r.process_name(s.from), target, s)
                })
                .collect()
        };
        let mut watchers = tap.watchers.lock();
        for w in watchers.iter_mut() {
            w.dropped += dropped;
            let mut frames = Vec::new();
            for (from, target, s) in &named {
                let name = match target {
                    TapTarget::Channel { name, chan, .. } => {
                        name.clone().unwrap_or_else(|| chan.to_string())
                    }
                    TapTarget::Topic { topic } => topic.clone(),
                };
                if !w.pattern.matches(&name) {
                    continue;
                }
                if w.conn.buffered() > OBSERVER_BACKLOG {
                    w.dropped += 1;
                    continue;
                }
                frames.push(Frame::Event(Event::Tapped {
                    from: from.clone(),
                    target: target.clone(),
                    len: s.len,
                    head: s.head.to_vec(),
                }));
            }
            if w.dropped > 0 && w.conn.buffered() <= OBSERVER_BACKLOG {
                frames.push(Frame::Event(Event::TapDropped {
                    count: std::mem::take(&mut w.dropped),
                }));
            }
            if !frames.is_empty() {
                w.conn.append_all(frames.iter());
                w.conn.kick();
            }
        }
    }
}

/// Serves an observer's connection, whose first frame was `Observe` with request id
/// `id`, until it closes.
pub(crate) fn serve(inner: Arc<Inner>, conn: Arc<Conn>, id: u32, version: u32) {
    if version != PROTOCOL_VERSION {
        let reply = Reply::Error {
            code: ErrorCode::UnsupportedVersion,
            message: format!(
                "protocol version {version} is not supported (this hub speaks {PROTOCOL_VERSION})"
            ),
        };
        conn.append_all(std::iter::once(&Frame::Reply { id, body: reply }));
        conn.kick();
        std::thread::sleep(Duration::from_millis(50));
        return conn.shut();
    }
    let welcome = Reply::Observing {
        pid: std::process::id(),
        monitor: inner.tap.allowed(),
    };
    conn.append_all(std::iter::once(&Frame::Reply { id, body: welcome }));
    conn.kick();
    tracing::debug!(conn = conn.id.0, "observer connected");
    let handler = Observer {
        inner: &inner,
        conn: &conn,
    };
    let reason = conn.read_loop_with(&handler);
    if let Some(e) = reason {
        tracing::debug!(conn = conn.id.0, "observer's connection closed: {e}");
    }
    inner.tap.remove(&conn);
    conn.shut();
}

/// Answers an observer's requests.
struct Observer<'a> {
    inner: &'a Arc<Inner>,
    conn: &'a Arc<Conn>,
}

impl FrameHandler for Observer<'_> {
    fn frames(&self, frames: &mut Vec<Frame>) -> Result<(), String> {
        for f in frames.drain(..) {
            let Frame::Request { id, body } = f else {
                return Err("an observer may only send requests".into());
            };
            let reply = self.answer(body);
            self.conn
                .append_all(std::iter::once(&Frame::Reply { id, body: reply }));
            self.conn.kick();
        }
        Ok(())
    }
}

impl Observer<'_> {
    fn answer(&self, request: Request) -> Reply {
        match request {
            Request::Stats => Reply::Stats {
                stats: Box::new(self.inner.stats()),
            },
            Request::Control {
                action,
                target: Some(target),
            } => self.inner.local_request(Request::Control {
                action,
                target: Some(target),
            }),
            Request::Monitor { pattern } => {
                if !self.inner.tap.allowed() {
                    return Reply::Error {
                        code: ErrorCode::MonitorOff,
                        message: "this program does not allow monitoring; start it with \
                                  YUKICOMM_MONITOR=1 or HubConfig::monitor"
                            .into(),
                    };
                }
                if pattern.is_empty() || pattern.len() > 1024 {
                    return Reply::Error {
                        code: ErrorCode::InvalidKey,
                        message: "a monitor pattern is 1 to 1024 bytes".into(),
                    };
                }
                self.inner.tap.add(self.conn.clone(), &pattern);
                Reply::Done
            }
            _ => Reply::Error {
                code: ErrorCode::BadRequest,
                message: "an observer may only ask for stats, monitor, and control naming a child"
                    .into(),
            },
        }
    }
}
