//! The per-process core: every channel end this process holds, and the dispatch of
//! frames arriving from the hub.
//!
//! A [`Node`] sits on top of a [`Transport`]: in a child, a socket to the hub
//! ([`crate::remote`]); in the main process, direct calls into the hub. Channel handles,
//! the registry functions and the child [`Context`](crate::Context) all go through it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Condvar, Mutex};
use yukicomm_wire::store::{Delivery, Op, OpReply};
use yukicomm_wire::{ChanId, End, EndRef, Event, Frame, Notice, Reply, Request};

use crate::error::LinkError;
use crate::passive::ErasedHandler;

/// Why a transport could not take a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The value did not encode; nothing was sent.
    Encode(String),
    /// The connection to the hub is gone.
    Broken,
    /// The encoded message is larger than the hub accepts; nothing was sent.
    TooLarge {
        /// The frame's size in bytes.
        size: usize,
        /// The largest frame the hub accepts.
        max: usize,
    },
    /// The end's window in bytes is used up; nothing was sent.
    NoRoom,
}

/// What [`Transport::pump`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pump {
    /// The condition holds (or the connection is gone and the queue was woken).
    Ready,
    /// The deadline passed first.
    Timeout,
    /// This transport has no reading to share: wait on the queue.
    Unavailable,
}

/// Writes a message body in place and returns the channel ends it encoded.
///
/// A transport calls it at the point where the message takes its place in the
/// connection's order (so that the window in bytes it checks is the one the hub sees);
/// on an error it leaves the buffer as it found it.
pub type EncodeFn<'a> = &'a mut dyn FnMut(&mut Vec<u8>) -> Result<Vec<EndRef>, TransportError>;

/// How a process's frames reach the hub.
///
/// Implemented by the socket connection of a child and, in the main process, by the
/// supervisor on top of the hub itself. Incoming frames are handed to
/// [`Node::dispatch`].
pub trait Transport: Send + Sync + 'static {
    /// Sends a message on `chan` to end `to`; `encode` writes the body.
    fn send_msg(&self, chan: ChanId, to: End, encode: EncodeFn<'_>) -> Result<(), TransportError>;
    /// Grants the hub `n` more messages and `bytes` more bytes for `end`, where this
    /// process receives.
    fn send_credit(&self, chan: ChanId, end: End, n: u32, bytes: u64);
    /// Sends a one-way notice.
    fn notice(&self, notice: Notice);
    /// Sends a request and waits for its reply.
    fn request(&self, request: Request, timeout: Duration) -> Result<Reply, LinkError>;
    /// Lets a thread that is about to block receiving at `key` read the connection
    /// itself until `ready` holds or `deadline` passes, saving a thread hand-off on the
    /// receive path. Transports with nothing to read return [`Pump::Unavailable`].
    fn pump(
        &self,
        key: EndRef,
        ready: &dyn Fn() -> bool,
        deadline: Option<std::time::Instant>,
    ) -> Pump {
        let _ = (key, ready, deadline);
        Pump::Unavailable
    }
    /// Sends a request; the future resolves with its reply.
    fn request_async(
        &self,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Reply, LinkError>>;
    /// Sends a store operation and waits for its reply.
    fn store_call(&self, op: Op, timeout: Duration) -> Result<OpReply, LinkError>;
    /// Sends a store operation; the future resolves with its reply. Any number may be
    /// in flight.
    fn store_call_async(&self, op: Op, timeout: Duration) -> OpFuture;
    /// Sends a store operation without waiting. A transport that applies it at once
    /// returns the reply; otherwise a failure reaches the node later.
    fn store_send(&self, op: Op) -> Result<Option<OpReply>, LinkError>;
}

/// The reply to a store operation sent with [`Transport::store_call_async`]: a plain
/// future, so that an operation costs no boxing.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct OpFuture(OpFutureState);

#[derive(Debug)]
enum OpFutureState {
    Ready(Option<Result<OpReply, LinkError>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<OpReply, LinkError>>),
}

impl OpFuture {
    /// A future that resolves with `reply` at once.
    pub fn ready(reply: Result<OpReply, LinkError>) -> OpFuture {
        OpFuture(OpFutureState::Ready(Some(reply)))
    }

    /// A future that resolves with what is sent on `rx`, or `Disconnected` if the
    /// sender is dropped.
    pub fn waiting(rx: tokio::sync::oneshot::Receiver<Result<OpReply, LinkError>>) -> OpFuture {
        OpFuture(OpFutureState::Waiting(rx))
    }
}

impl std::future::Future for OpFuture {
    type Output = Result<OpReply, LinkError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().0 {
            OpFutureState::Ready(reply) => std::task::Poll::Ready(
                reply
                    .take()
                    .expect("an OpFuture is not polled after it completed"),
            ),
            OpFutureState::Waiting(rx) => std::pin::Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(LinkError::Disconnected))),
        }
    }
}

pub(crate) const MODE_UNSET: u8 = 0;
pub(crate) const MODE_ACTIVE: u8 = 1;
pub(crate) const MODE_PASSIVE: u8 = 2;

/// An item in an end's inbound queue.
pub(crate) enum Item {
    /// A message, and guards holding the ends it carries until it is decoded.
    Msg {
        body: Bytes,
        _carried: Vec<EndGuard>,
    },
    /// The end's state changed (peer gone, closed, hub lost): waiters re-check it.
    Wake,
}

/// This process's state for one channel end.
pub(crate) struct EndState {
    pub(crate) key: EndRef,
    label: Mutex<Arc<str>>,
    pub(crate) tx: flume::Sender<Item>,
    pub(crate) rx: flume::Receiver<Item>,
    pub(crate) mode: AtomicU8,
    /// Messages this process may still send from this end.
    credits: AtomicU32,
    /// Bytes sent from this end that the hub has not credited back yet. A message may
    /// be sent while this is below the window in bytes.
    bytes_out: AtomicU64,
    credit_lock: Mutex<()>,
    credit_cv: Condvar,
    pub(crate) credit_notify: tokio::sync::Notify,
    /// Messages consumed since credit was last returned.
    consumed: AtomicU32,
    /// Bytes of the messages consumed since credit was last returned.
    consumed_bytes: AtomicU64,
    pub(crate) peer_gone: AtomicBool,
    /// With `peer_gone`: what the peer sent before it went is still on its way here,
    /// so receivers are not told yet (see [`Event::PeerGone`]).
    pub(crate) peer_queued: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// With `closed`: what was sent before the close is still on its way here, so
    /// receivers are not told yet (see [`Event::Closed`]).
    pub(crate) close_queued: AtomicBool,
    pub(crate) waiters: AtomicUsize,
    /// Live handles (channels, guards) in this process.
    handles: AtomicUsize,
    /// Grants received from the hub since the last release.
    grants: AtomicU32,
    /// Never released (a child's own `NAME-active` and `NAME-passive` ends).
    pinned: AtomicBool,
    pub(crate) handlers: Mutex<Vec<Arc<dyn ErasedHandler>>>,
}

impl EndState {
    /// The channel's name for messages: its registered name, or `#id`.
    pub(crate) fn label(&self) -> String {
        self.label.lock().to_string()
    }

    pub(crate) fn set_label(&self, name: &str) {
        *self.label.lock() = Arc::from(name);
    }

    /// Takes one send credit without waiting. The bytes are taken when the message is
    /// encoded ([`EndState::take_bytes`]).
    pub(crate) fn try_take_credit(&self, window_bytes: u64) -> bool {
        self.bytes_out.load(Ordering::Acquire) < window_bytes
            && self
                .credits
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
                .is_ok()
    }

    /// Whether a send could take a credit now.
    pub(crate) fn has_credit(&self, window_bytes: u64) -> bool {
        self.credits.load(Ordering::Acquire) > 0
            && self.bytes_out.load(Ordering::Acquire) < window_bytes
    }

    /// Counts `size` bytes in flight if fewer than `window_bytes` are; called as the
    /// message is encoded into its place on the connection.
    pub(crate) fn take_bytes(&self, size: usize, window_bytes: u64) -> bool {
        self.bytes_out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < window_bytes).then(|| b.saturating_add(size as u64))
            })
            .is_ok()
    }

    /// Gives back the credit taken for a message that was not sent: one message, and
    /// `bytes` bytes if they were taken.
    pub(crate) fn return_credit(&self, bytes: u64) {
        self.add_credits(1, bytes);
    }

    fn add_credits(&self, n: u32, bytes: u64) {
        self.credits.fetch_add(n, Ordering::AcqRel);
        if bytes > 0 {
            let _ = self
                .bytes_out
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some(b.saturating_sub(bytes))
                });
        }
        self.wake_senders();
    }

    pub(crate) fn wake_senders(&self) {
        drop(self.credit_lock.lock());
        self.credit_cv.notify_all();
        self.credit_notify.notify_waiters();
    }

    /// Blocks until a credit can be taken, the deadline passes (`Ok(false)`), or the end
    /// can no longer send (`Err`).
    pub(crate) fn wait_credit(
        &self,
        deadline: Option<std::time::Instant>,
        window_bytes: u64,
    ) -> Result<bool, SendBlock> {
        let mut guard = self.credit_lock.lock();
        loop {
            if self.try_take_credit(window_bytes) {
                return Ok(true);
            }
            if let Some(b) = self.send_block() {
                return Err(b);
            }
            match deadline {
                Some(d) => {
                    if self.credit_cv.wait_until(&mut guard, d).timed_out() {
                        return Ok(self.try_take_credit(window_bytes));
                    }
                }
                None => self.credit_cv.wait(&mut guard),
            }
        }
    }

    /// Whether the channel is closed and nothing sent before the close is still on its
    /// way here: receivers, once their queue is empty, get `Closed`.
    pub(crate) fn closed_for_receivers(&self) -> bool {
        self.closed.load(Ordering::Acquire) && !self.close_queued.load(Ordering::Acquire)
    }

    /// Why this end cannot send at all, if it cannot.
    pub(crate) fn send_block(&self) -> Option<SendBlock> {
        if self.closed.load(Ordering::Acquire) {
            Some(SendBlock::Closed)
        } else if self.peer_gone.load(Ordering::Acquire) {
            Some(SendBlock::Disconnected)
        } else {
            None
        }
    }

    /// Counts a consumed message of `size` bytes and returns credit to the hub in
    /// batches of half a window (in messages or in bytes).
    pub(crate) fn consumed(&self, node: &NodeInner, size: usize) {
        let half = (node.window / 2).max(1);
        let half_bytes = (node.window_bytes / 2).max(1);
        let b = self.consumed_bytes.fetch_add(size as u64, Ordering::AcqRel) + size as u64;
        let c = self.consumed.fetch_add(1, Ordering::AcqRel) + 1;
        if c >= half || b >= half_bytes {
            let n = self.consumed.swap(0, Ordering::AcqRel);
            let bytes = self.consumed_bytes.swap(0, Ordering::AcqRel);
            if n > 0 || bytes > 0 {
                if let Some(t) = node.transport.get() {
                    t.send_credit(self.key.chan, self.key.end, n, bytes);
                }
            }
        }
    }

    /// Pushes wake markers so that every blocked receiver re-checks the state.
    pub(crate) fn wake_receivers(&self) {
        let n = self.waiters.load(Ordering::Acquire).max(1);
        for _ in 0..n {
            let _ = self.tx.send(Item::Wake);
        }
        self.wake_senders();
    }
}

/// Why a send cannot proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendBlock {
    Closed,
    Disconnected,
}

/// Keeps one channel end held by this process. Dropping the last guard of an end tells
/// the hub this process no longer holds it.
pub(crate) struct EndGuard {
    pub(crate) node: Arc<NodeInner>,
    pub(crate) state: Arc<EndState>,
}

impl Clone for EndGuard {
    fn clone(&self) -> EndGuard {
        self.state.handles.fetch_add(1, Ordering::AcqRel);
        EndGuard {
            node: self.node.clone(),
            state: self.state.clone(),
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if self.state.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.node.maybe_release(&self.state);
        }
    }
}

/// The per-process state shared by every handle.
pub struct NodeInner {
    transport: OnceLock<Arc<dyn Transport>>,
    ends: Mutex<rustc_hash::FxHashMap<EndRef, Arc<EndState>>>,
    pub(crate) window: u32,
    pub(crate) window_bytes: u64,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) request_timeout: Duration,
    lost: AtomicBool,
    /// This process's subscriptions and watches, by number.
    pub(crate) subs: Mutex<rustc_hash::FxHashMap<u32, crate::store::SubQueue>>,
    pub(crate) next_sub: AtomicU32,
    /// Failures of store writes sent without waiting.
    pub(crate) nowait_failures: Mutex<crate::store::NowaitFailures>,
}

/// A process's connection to the yukicomm program: the handle the registry functions,
/// channels and contexts share.
///
/// Cheap to clone. Made by [`crate::connect`] in a child and by the supervisor in the
/// main process.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("window", &self.inner.window)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node without a transport yet; see [`Node::set_transport`].
    ///
    /// `window` and `window_bytes` are the hub's credit windows (in messages and in
    /// bytes), `runtime` runs passive handlers, and `request_timeout` bounds every
    /// request to the hub.
    pub fn new(
        window: u32,
        window_bytes: u64,
        runtime: tokio::runtime::Handle,
        request_timeout: Duration,
    ) -> Node {
        Node {
            inner: Arc::new(NodeInner {
                transport: OnceLock::new(),
                ends: Mutex::new(rustc_hash::FxHashMap::default()),
                window: window.max(1),
                window_bytes: window_bytes.max(1),
                runtime,
                request_timeout,
                lost: AtomicBool::new(false),
                subs: Mutex::new(rustc_hash::FxHashMap::default()),
                next_sub: AtomicU32::new(1),
                nowait_failures: Mutex::new(Default::default()),
            }),
        }
    }

    /// Installs the transport. Only the first call has an effect.
    pub fn set_transport(&self, transport: Arc<dyn Transport>) {
        let _ = self.inner.transport.set(transport);
    }

    pub(crate) fn transport(&self) -> Result<&Arc<dyn Transport>, LinkError> {
        self.inner.transport.get().ok_or(LinkError::Disconnected)
    }

    /// The runtime that runs passive handlers.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Takes a handle on an end; `grant` counts one grant from the hub.
    pub(crate) fn acquire(&self, key: EndRef, grant: bool, label: Option<&str>) -> EndGuard {
        let mut ends = self.inner.ends.lock();
        let state = ends
            .entry(key)
            .or_insert_with(|| {
                let (tx, rx) = flume::unbounded();
                Arc::new(EndState {
                    key,
                    label: Mutex::new(Arc::from(format!("{}", key.chan).as_str())),
                    tx,
                    rx,
                    mode: AtomicU8::new(MODE_UNSET),
                    credits: AtomicU32::new(self.inner.window),
                    bytes_out: AtomicU64::new(0),
                    credit_lock: Mutex::new(()),
                    credit_cv: Condvar::new(),
                    credit_notify: tokio::sync::Notify::new(),
                    consumed: AtomicU32::new(0),
                    consumed_bytes: AtomicU64::new(0),
                    peer_gone: AtomicBool::new(self.inner.lost.load(Ordering::Acquire)),
                    peer_queued: AtomicBool::new(false),
                    close_queued: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                    waiters: AtomicUsize::new(0),
                    handles: AtomicUsize::new(0),
                    grants: AtomicU32::new(0),
                    pinned: AtomicBool::new(false),
                    handlers: Mutex::new(Vec::new()),
                })
            })
            .clone();
        drop(ends);
        state.handles.fetch_add(1, Ordering::AcqRel);
        if grant {
            state.grants.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(l) = label {
            state.set_label(l);
        }
        EndGuard {
            node: self.inner.clone(),
            state,
        }
    }

    /// Keeps an end held for the life of the process.
    pub(crate) fn pin(&self, guard: &EndGuard) {
        guard.state.pinned.store(true, Ordering::Release);
    }

    /// Hands a frame that arrived from the hub to the ends it concerns.
    ///
    /// Called by transports; never blocks and never calls back into the transport.
    pub fn dispatch(&self, frame: Frame) {
        self.dispatch_all(std::iter::once(frame));
    }

    /// Hands a run of frames over, looking each message's end up once per run of
    /// messages to the same end.
    pub fn dispatch_all(&self, frames: impl Iterator<Item = Frame>) {
        let mut last: Option<Arc<EndState>> = None;
        for frame in frames {
            if let Frame::Msg(m) = frame {
                let key = EndRef {
                    chan: m.chan,
                    end: m.to,
                };
                if last.as_ref().is_none_or(|s| s.key != key) {
                    last = self.inner.ends.lock().get(&key).cloned();
                }
                self.deliver(m, last.as_deref());
            } else {
                self.dispatch_control(frame);
            }
        }
    }

    fn deliver(&self, m: yukicomm_wire::Msg, state: Option<&EndState>) {
        let carried = m
            .carried
            .iter()
            .map(|&k| self.acquire(k, true, None))
            .collect::<Vec<_>>();
        match state {
            Some(s) => {
                let _ = s.tx.send(Item::Msg {
                    body: m.body,
                    _carried: carried,
                });
            }
            None => {
                tracing::debug!(chan = %m.chan, "message for an end this process released")
            }
        }
    }

    fn dispatch_control(&self, frame: Frame) {
        match frame {
            Frame::Msg(m) => {
                let key = EndRef {
                    chan: m.chan,
                    end: m.to,
                };
                let state = self.inner.ends.lock().get(&key).cloned();
                self.deliver(m, state.as_deref());
            }
            Frame::Credit {
                chan,
                end,
                n,
                bytes,
            } => {
                if let Some(s) = self.state(EndRef { chan, end }) {
                    s.add_credits(n, bytes);
                }
            }
            Frame::Event(Event::PeerGone { chan, end, queued }) => self.set_peer_gone(
                EndRef {
                    chan,
                    end: end.opposite(),
                },
                true,
                queued,
            ),
            Frame::Event(Event::PeerBack { chan, end }) => self.set_peer_gone(
                EndRef {
                    chan,
                    end: end.opposite(),
                },
                false,
                false,
            ),
            Frame::Event(Event::Closed { chan, queued }) => {
                for end in [End::A, End::B] {
                    if let Some(s) = self.state(EndRef { chan, end }) {
                        s.close_queued.store(queued, Ordering::Release);
                        s.closed.store(true, Ordering::Release);
                        if !queued {
                            s.wake_receivers();
                        }
                    }
                }
            }
            Frame::Event(Event::Refused {
                chan,
                code,
                message,
            }) => {
                let label = chan
                    .and_then(|c| {
                        self.state(EndRef {
                            chan: c,
                            end: End::A,
                        })
                        .or_else(|| {
                            self.state(EndRef {
                                chan: c,
                                end: End::B,
                            })
                        })
                    })
                    .map(|s| s.label());
                tracing::warn!(channel = ?label, ?code, "the hub refused a frame: {message}");
            }
            Frame::Delivery(d) => {
                let sub = match &d {
                    Delivery::Message { sub, .. }
                    | Delivery::Missed { sub, .. }
                    | Delivery::Changed { sub, .. } => *sub,
                };
                // A delivery may cross an unsubscribe: then nobody wants it.
                if let Some(tx) = self.inner.subs.lock().get(&sub) {
                    let _ = tx.send(d);
                }
            }
            Frame::OpReply {
                reply: OpReply::Error { code, message },
                ..
            } => self.store_failed(code, message),
            other => tracing::warn!(?other, "unexpected frame from the hub"),
        }
    }

    fn state(&self, key: EndRef) -> Option<Arc<EndState>> {
        self.inner.ends.lock().get(&key).cloned()
    }

    fn set_peer_gone(&self, key: EndRef, gone: bool, queued: bool) {
        if let Some(s) = self.state(key) {
            s.peer_queued.store(queued, Ordering::Release);
            s.peer_gone.store(gone, Ordering::Release);
            if gone && !queued {
                s.wake_receivers();
            }
        }
    }

    /// The hub connection is gone: every end is disconnected and every waiter wakes.
    pub fn connection_lost(&self) {
        self.inner.lost.store(true, Ordering::Release);
        self.inner.subs.lock().clear();
        let states: Vec<_> = self.inner.ends.lock().values().cloned().collect();
        for s in states {
            s.peer_queued.store(false, Ordering::Release);
            s.peer_gone.store(true, Ordering::Release);
            s.wake_receivers();
        }
    }

    /// Whether the hub connection is gone.
    pub fn is_lost(&self) -> bool {
        self.inner.lost.load(Ordering::Acquire)
    }

    /// Waits until everything this process sent before the call has reached the hub,
    /// which then delivers it, or holds it for its receiver, whatever this process does
    /// next. `send` does not wait, so a process that exits right after sending should
    /// call this first: what is still in its buffer when it exits is lost. The
    /// supervisor calls it when a child's target returns.
    ///
    /// # Errors
    ///
    /// [`LinkError::Timeout`] when the hub has not confirmed within `timeout`, or
    /// [`LinkError::Disconnected`].
    pub fn flush(&self, timeout: Duration) -> Result<(), LinkError> {
        let t = self.inner.transport().ok_or(LinkError::Disconnected)?;
        // The hub handles a connection's frames in order: its answer to this request
        // comes after it has routed everything sent before.
        t.store_call(Op::Sync, timeout).map(drop)
    }
}

impl NodeInner {
    pub(crate) fn transport(&self) -> Option<&Arc<dyn Transport>> {
        self.transport.get()
    }

    fn maybe_release(&self, state: &Arc<EndState>) {
        if state.pinned.load(Ordering::Acquire) {
            return;
        }
        let mut ends = self.ends.lock();
        if state.handles.load(Ordering::Acquire) != 0 {
            return;
        }
        match ends.get(&state.key) {
            Some(s) if Arc::ptr_eq(s, state) => {
                ends.remove(&state.key);
            }
            _ => return,
        }
        drop(ends);
        let count = state.grants.swap(0, Ordering::AcqRel);
        if count > 0 {
            if let Some(t) = self.transport.get() {
                t.notice(Notice::Release {
                    chan: state.key.chan,
                    end: state.key.end,
                    count,
                });
            }
        }
    }
}
