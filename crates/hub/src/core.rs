//! The hub's core: the router and the store behind their locks, the connections, and
//! the ordered hand-over of what they produce (to connections under the lock, to the
//! main process after it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use yukicomm_wire::Frame;

use crate::conn::{self, Conn};
use crate::router::{ConnId, HubEvent, Out, Router, LOCAL};
use crate::store::{self, Store};
use crate::LocalSink;
use yukicomm_wire::store::Op;

thread_local! {
    /// The buffer a run of store replies is encoded into (reused).
    static REPLIES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Buffers `with_router` reuses.
    static SCRATCH: std::cell::RefCell<(Vec<Out>, Vec<Arc<Conn>>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// What `with_router_then` does with a connection after routing.
pub(crate) enum First {
    /// Append this frame before anything else routed, then write.
    Frame(Arc<Conn>, Frame),
    /// Write what was appended.
    Kick(Arc<Conn>),
}

/// Frames for the main process, queued in the order the router and the store produced
/// them (under their locks) and handed to it after those locks are released, by one
/// thread at a time, so that they arrive in that order and no main-process code runs
/// under a hub lock.
///
/// A thread that queued frames returns only once they are handed over (by itself, or
/// by the thread handing over at the time, which it waits for), so that a call into the
/// hub has had its effects on the main process's ends when it returns, as if they were
/// applied under the lock. The one exception is a call made by the handing-over thread
/// itself, from what it hands over: its frames follow as soon as that returns.
#[derive(Default)]
pub(crate) struct LocalQueue {
    frames: Vec<Frame>,
    /// Frames ever queued, and ever handed over.
    queued: u64,
    handed: u64,
    /// The thread handing frames over, if any (see [`this_thread`]).
    drainer: Option<usize>,
    /// An empty buffer with room, which the thread handing over fills next.
    spare: Vec<Frame>,
}

/// A number that tells the calling thread from any other running thread: the address of
/// a thread-local (cheaper than a `ThreadId`, which clones the thread's handle).
fn this_thread() -> usize {
    thread_local!(static MARK: u8 = const { 0 });
    MARK.with(|m| m as *const u8 as usize)
}

impl LocalQueue {
    /// Queues `frames`; returns the count to wait for.
    fn push(&mut self, frames: impl Iterator<Item = Frame>) -> u64 {
        let before = self.frames.len();
        self.frames.extend(frames);
        self.queued += (self.frames.len() - before) as u64;
        self.queued
    }
}

pub(crate) struct Inner {
    /// Set while a thread of the main process reads a connection itself (one at a time;
    /// see `Conn::pump`).
    pub(crate) pumping: std::sync::atomic::AtomicBool,
    /// Wakes that thread when something reaches the main process another way.
    pub(crate) pump_wake: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    pub(crate) router: Mutex<Router>,
    /// The shared store. Never locked together with `router`.
    pub(crate) store: Mutex<Store>,
    /// What waits to be handed to the main process. Locked last, briefly.
    pub(crate) local_queue: Mutex<LocalQueue>,
    /// Signalled whenever frames were handed over.
    pub(crate) local_handed: parking_lot::Condvar,
    pub(crate) conns: RwLock<FxHashMap<ConnId, Arc<Conn>>>,
    /// Connections that take their publications themselves (the RESP endpoint's); the
    /// store reaches them through [`store::Deliver::publication`].
    pub(crate) subscribers: RwLock<FxHashMap<ConnId, Arc<dyn store::Subscriber>>>,
    pub(crate) local: OnceLock<LocalSink>,
    pub(crate) events: mpsc::UnboundedSender<HubEvent>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) max_frame: u32,
    pub(crate) max_unread: usize,
    /// [`crate::HubConfig::shared_memory`].
    pub(crate) shared_memory: usize,
    /// The main process's own channel traffic.
    pub(crate) local_traffic: crate::stats::TrafficCounters,
    /// The message tap for observers.
    pub(crate) tap: crate::observe::Tap,
    /// What the supervisor reports about its children.
    pub(crate) process_info: OnceLock<crate::stats::ProcessInfo>,
    /// When the hub started.
    pub(crate) started: std::time::Instant,
}

impl Inner {
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `f` on the router and hands what it produced to the connections (and to
    /// the main process's queue) while the lock is still held, so that frames reach
    /// each connection in the order the router decided; socket writes, and the
    /// main process's frames, are handed over after the lock is released.
    pub(crate) fn with_router<R>(&self, f: impl FnOnce(&mut Router, &mut Vec<Out>) -> R) -> R {
        self.with_router_then(|r, out| (f(r, out), None))
    }

    /// As `with_router`; `f` may also return a connection and a first frame for it (the
    /// welcome), which then precede anything else sent to it, or a connection that it
    /// appended to itself, to be written after the lock is released.
    pub(crate) fn with_router_then<R>(
        &self,
        f: impl FnOnce(&mut Router, &mut Vec<Out>) -> (R, Option<First>),
    ) -> R {
        // Reused buffers: this runs for every batch of frames.
        let (mut out, mut kicks) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let (result, events, local) = {
            let mut router = self.router.lock();
            let (r, first) = f(&mut router, &mut out);
            match first {
                Some(First::Frame(conn, frame)) => {
                    conn.append_all(std::iter::once(&frame));
                    kicks.push(conn);
                }
                Some(First::Kick(conn)) => kicks.push(conn),
                None => {}
            }
            let events = std::mem::take(&mut router.events);
            let local = self.hand_over(&mut out, &mut kicks);
            (r, events, local)
        };
        for c in kicks.drain(..) {
            c.kick();
        }
        SCRATCH.with(|s| *s.borrow_mut() = (out, kicks));
        for e in events {
            let _ = self.events.send(e);
        }
        if let Some(upto) = local {
            self.deliver_local(upto);
        }
        result
    }

    /// Hands what is queued for the main process to it, in order, until the first
    /// `upto` frames ever queued are handed over; waits while another thread hands them
    /// over. Runs with no hub lock held: what the main process does with a frame
    /// (release a handle, send) may enter the hub again.
    fn deliver_local(&self, upto: u64) {
        let me = this_thread();
        let mut q = self.local_queue.lock();
        loop {
            if q.handed >= upto || q.drainer == Some(me) {
                // Handed over; or queued from what this thread is handing over, which
                // it hands over next.
                return;
            }
            if q.drainer.is_none() {
                break;
            }
            self.local_handed.wait(&mut q);
        }
        q.drainer = Some(me);
        /// Lets another thread hand over if this one panics while the queue is unlocked.
        struct Drainer<'a>(&'a Inner);
        impl Drop for Drainer<'_> {
            fn drop(&mut self) {
                self.0.local_queue.lock().drainer = None;
                self.0.local_handed.notify_all();
            }
        }
        // The two buffers trade places, so that neither is allocated again.
        let mut batch = std::mem::take(&mut q.spare);
        while !q.frames.is_empty() {
            std::mem::swap(&mut q.frames, &mut batch);
            drop(q);
            let n = batch.len() as u64;
            let unwinding = Drainer(self);
            match self.local.get() {
                Some(local) => local(&mut batch.drain(..)),
                None => batch.clear(),
            }
            std::mem::forget(unwinding);
            if self.pumping.load(Ordering::SeqCst) && !conn::IS_PUMPING.with(|p| p.get()) {
                yukicomm_link::sys::poke(&self.pump_wake.1);
            }
            q = self.local_queue.lock();
            q.handed += n;
        }
        q.spare = batch;
        q.drainer = None;
        drop(q);
        self.local_handed.notify_all();
    }

    /// Appends frames to their connections, and moves the main process's own to its
    /// queue (`out` is left empty), returning the count to wait for if there were any;
    /// called with the router locked.
    fn hand_over(&self, out: &mut Vec<Out>, kicks: &mut Vec<Arc<Conn>>) -> Option<u64> {
        if out.is_empty() {
            return None;
        }
        let mut local = 0;
        {
            let conns = self.conns.read();
            let mut i = 0;
            while i < out.len() {
                let target = out[i].0;
                let mut j = i + 1;
                while j < out.len() && out[j].0 == target {
                    j += 1;
                }
                if target == LOCAL {
                    local += j - i;
                } else if let Some(c) = conns.get(&target) {
                    c.append_all(out[i..j].iter().map(|(_, f)| f));
                    if !kicks.iter().any(|k| Arc::ptr_eq(k, c)) {
                        kicks.push(c.clone());
                    }
                }
                i = j;
            }
        }
        if local == 0 {
            out.clear();
            return None;
        }
        let (msgs, bytes) = crate::stats::count_msgs(
            out.iter()
                .filter(|(target, _)| *target == LOCAL)
                .map(|(_, f)| f),
        );
        self.local_traffic.add_out(msgs, bytes);
        let mut q = self.local_queue.lock();
        q.frames.reserve(local);
        Some(
            q.push(
                out.drain(..)
                    .filter_map(|(target, f)| (target == LOCAL).then_some(f)),
            ),
        )
    }

    /// A request from the main process (or an observer acting for it), answered at once.
    pub(crate) fn local_request(&self, request: yukicomm_wire::Request) -> yukicomm_wire::Reply {
        use yukicomm_wire::Reply;
        self.with_router(|r, out| {
            let mut replies = Vec::new();
            let _ = r.frame(
                LOCAL,
                Frame::Request {
                    id: 0,
                    body: request,
                },
                &mut replies,
            );
            let mut reply = None;
            for (c, f) in replies {
                match f {
                    Frame::Reply { body, .. } if c == LOCAL && reply.is_none() => {
                        reply = Some(body)
                    }
                    other => out.push((c, other)),
                }
            }
            reply.unwrap_or(Reply::Error {
                code: yukicomm_wire::ErrorCode::BadRequest,
                message: "no reply".into(),
            })
        })
    }

    /// Frames from the main process.
    pub(crate) fn local_frames(&self, frames: Vec<Frame>) {
        self.local_traffic.count_in(&frames);
        if self.tap.active() {
            self.tap.offer_frames(LOCAL, &frames);
        }
        self.with_router(|r, out| {
            for f in frames {
                if let Err(e) = r.frame(LOCAL, f, out) {
                    tracing::error!("the main process broke the protocol: {e}");
                }
            }
        });
    }

    /// A child said hello: check it and register its connection.
    pub(crate) fn accept(
        &self,
        conn: Arc<Conn>,
        req_id: u32,
        version: u32,
        name: &str,
        token: &str,
    ) -> bool {
        let id = conn.id;
        let outcome = self.with_router_then(|router, out| {
            match router.hello(id, version, name, token, self.max_frame, out) {
                Ok((welcome, old)) => {
                    let old = {
                        let mut conns = self.conns.write();
                        conns.insert(id, conn.clone());
                        old.and_then(|o| conns.remove(&o))
                    };
                    let first = Frame::Reply {
                        id: req_id,
                        body: welcome,
                    };
                    (Ok(old), Some(First::Frame(conn.clone(), first)))
                }
                Err(refusal) => {
                    let first = Frame::Reply {
                        id: req_id,
                        body: refusal.clone(),
                    };
                    (Err(refusal), Some(First::Frame(conn.clone(), first)))
                }
            }
        });
        match outcome {
            Ok(old) => {
                if let Some(o) = old {
                    o.shut();
                }
                true
            }
            Err(refusal) => {
                tracing::warn!(
                    child = %yukicomm_wire::abbreviate(name),
                    "refused a connection: {refusal:?}"
                );
                false
            }
        }
    }

    /// Frames from a connection, in order: channel frames under the router's lock,
    /// store operations under the store's, one lock per run (`frames` is left empty).
    pub(crate) fn frames(&self, id: ConnId, frames: &mut Vec<Frame>) -> Result<(), String> {
        let mut rest = frames.drain(..).peekable();
        while let Some(first) = rest.peek() {
            if matches!(first, Frame::Op { .. }) {
                let mut ops =
                    std::iter::from_fn(|| rest.next_if(|f| matches!(f, Frame::Op { .. })));
                // The replies of a run go to the connection in one append.
                let mut replies = REPLIES.with(|r| std::mem::take(&mut *r.borrow_mut()));
                self.with_store(|store, out| {
                    for f in &mut ops {
                        if let Frame::Op {
                            id: op_id,
                            quiet,
                            op,
                        } = f
                        {
                            // Credit is never answered.
                            let quiet = quiet || matches!(op, Op::Credit { .. });
                            let answer = store.apply(id, op, out);
                            if !quiet || answer.is_error() {
                                answer.encode(&mut replies, op_id);
                            }
                        }
                    }
                    if !replies.is_empty() {
                        out.encoded(id, &mut |buf| buf.extend_from_slice(&replies));
                    }
                });
                replies.clear();
                if replies.capacity() > 1 << 20 {
                    // Not worth keeping after a large `get_all`.
                    replies = Vec::new();
                }
                REPLIES.with(|r| *r.borrow_mut() = replies);
            } else {
                let mut run =
                    std::iter::from_fn(|| rest.next_if(|f| !matches!(f, Frame::Op { .. })));
                self.with_router(|r, out| {
                    for f in &mut run {
                        r.frame(id, f, out)?;
                    }
                    Ok::<(), String>(())
                })?;
            }
        }
        Ok(())
    }

    /// Runs `f` on the store; what it produced for the connections is appended under
    /// the lock (so each connection gets it in the store's order) and written, and what
    /// it produced for the main process is handed over, after the lock is released.
    pub(crate) fn with_store<R>(
        &self,
        f: impl FnOnce(&mut Store, &mut dyn store::Deliver) -> R,
    ) -> R {
        let conns = self.conns.read();
        let mut out = Outputs {
            conns: &conns,
            subscribers: &self.subscribers,
            kicks: Vec::new(),
            local: Vec::new(),
        };
        let (r, local) = {
            let mut store = self.store.lock();
            let r = f(&mut store, &mut out);
            // Queued while the store is locked, so that they keep its order.
            let local =
                (!out.local.is_empty()).then(|| self.local_queue.lock().push(out.local.drain(..)));
            (r, local)
        };
        let Outputs { kicks, .. } = out;
        drop(conns);
        for c in kicks {
            c.kick();
        }
        if let Some(upto) = local {
            self.deliver_local(upto);
        }
        r
    }

    pub(crate) fn disconnected(&self, id: ConnId) {
        self.conns.write().remove(&id);
        self.store.lock().drop_conn(id);
        self.with_router(|r, out| r.drop_conn(id, out));
    }
}

/// Where the store's output goes while its lock is held.
struct Outputs<'a> {
    conns: &'a FxHashMap<ConnId, Arc<Conn>>,
    subscribers: &'a RwLock<FxHashMap<ConnId, Arc<dyn store::Subscriber>>>,
    kicks: Vec<Arc<Conn>>,
    local: Vec<Frame>,
}

impl store::Deliver for Outputs<'_> {
    fn encoded(&mut self, conn: ConnId, encode: &mut dyn FnMut(&mut Vec<u8>)) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.append_with(|buf| {
            encode(buf);
            Ok::<(), ()>(())
        })
        .is_ok()
            && !self.kicks.iter().any(|k| k.id == conn)
        {
            self.kicks.push(c.clone());
        }
    }

    fn local(&mut self, frame: Frame) {
        self.local.push(frame);
    }

    fn publication(&mut self, conn: ConnId, sub: u32, topic: &[u8], body: &[u8]) {
        if self.conns.contains_key(&conn) {
            self.encoded(conn, &mut |buf| {
                yukicomm_wire::store::encode_publication(buf, sub, topic, body)
            });
        } else if let Some(s) = self.subscribers.read().get(&conn) {
            s.publication(sub, topic, body);
        }
    }
}
