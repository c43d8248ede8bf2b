//! The per-process core: every channel end this process holds, and the dispatch of
//! frames arriving from the hub.
//!
//! A node has two faces. [`Node`] is what applications hold (through a
//! [`Context`](crate::Context) in a child, a `MainContext` in the main process): the
//! registry ([`crate::registry`]), the store ([`crate::store`]), `flush`. [`Driver`] is
//! what the transport holds (see [`crate::transport`]): it hands the frames that arrive
//! to the ends they concern and reports the connection's loss.
//!
//! The node itself knows channel ends ([`crate::end`]), credit and channel events. Any
//! other frame goes to the [`FrameSink`]s that features above it registered with
//! [`Node::sink`]: the store registers one for its deliveries and for the failures of
//! writes sent without waiting ([`crate::store`]), and keeps its own state there.

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use yukicomm_wire::store::Op;
use yukicomm_wire::{End, EndRef, Event, Frame, Notice};

use crate::end::{EndGuard, EndState, Item};
use crate::error::LinkError;
use crate::transport::Transport;

/// A feature above the node that takes the frames the node does not handle itself, and
/// hears when the connection to the hub is lost. Registered with [`Node::sink`].
pub(crate) trait FrameSink: Any + Send + Sync {
    /// Takes `frame` if it is this sink's, and returns it otherwise. Called on the
    /// thread that reads the connection: it must not block or call back into the
    /// transport.
    fn frame(&self, frame: Frame) -> Option<Frame>;
    /// The hub connection is gone; called once.
    fn connection_lost(&self);
}

/// The registered sinks, replaced as a whole when one is added (rarely), so that a
/// run of frames is dispatched with one look at the list.
type Sinks = Arc<[Arc<dyn FrameSink>]>;

/// The per-process state shared by every handle.
pub(crate) struct NodeInner {
    transport: OnceLock<Arc<dyn Transport>>,
    ends: Mutex<rustc_hash::FxHashMap<EndRef, Arc<EndState>>>,
    pub(crate) window: u32,
    pub(crate) window_bytes: u64,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) request_timeout: Duration,
    lost: AtomicBool,
    /// What features above the node registered (see [`FrameSink`]).
    sinks: Mutex<Sinks>,
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
    pub(crate) fn transport(&self) -> Result<&Arc<dyn Transport>, LinkError> {
        self.inner.transport.get().ok_or(LinkError::Disconnected)
    }

    /// The runtime that runs passive handlers.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Takes a handle on an end; `grant` counts one grant from the hub.
    pub(crate) fn acquire(&self, key: EndRef, grant: bool, label: Option<&str>) -> EndGuard {
        self.inner.acquire(key, grant, label)
    }

    /// Keeps an end held for the life of the process.
    pub(crate) fn pin(&self, guard: &EndGuard) {
        guard.state.pin();
    }

    /// The sink of type `S` registered on this node, registering `make()` first if
    /// there is none yet.
    pub(crate) fn sink<S: FrameSink>(&self, make: impl FnOnce() -> S) -> Arc<S> {
        let mut sinks = self.inner.sinks.lock();
        for s in sinks.iter() {
            if (**s).type_id() == TypeId::of::<S>() {
                let any: Arc<dyn Any + Send + Sync> = s.clone();
                if let Ok(found) = any.downcast::<S>() {
                    return found;
                }
            }
        }
        let made = Arc::new(make());
        let mut list: Vec<Arc<dyn FrameSink>> = sinks.iter().cloned().collect();
        list.push(made.clone());
        *sinks = list.into();
        made
    }

    /// Whether the hub connection is gone.
    pub(crate) fn is_lost(&self) -> bool {
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

/// The transport's side of a node: it installs the transport, hands over the frames
/// that arrive from the hub, and reports the connection's loss. Applications use the
/// [`Node`] instead ([`Driver::node`]).
///
/// Cheap to clone.
#[derive(Clone)]
pub struct Driver {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl Driver {
    /// A node without a transport yet; see [`Driver::set_transport`].
    ///
    /// `window` and `window_bytes` are the hub's credit windows (in messages and in
    /// bytes), `runtime` runs passive handlers, and `request_timeout` bounds every
    /// request to the hub.
    pub fn new(
        window: u32,
        window_bytes: u64,
        runtime: tokio::runtime::Handle,
        request_timeout: Duration,
    ) -> Driver {
        Driver {
            inner: Arc::new(NodeInner {
                transport: OnceLock::new(),
                ends: Mutex::new(rustc_hash::FxHashMap::default()),
                window: window.max(1),
                window_bytes: window_bytes.max(1),
                runtime,
                request_timeout,
                lost: AtomicBool::new(false),
                sinks: Mutex::new(Arc::new([])),
            }),
        }
    }

    /// The application's handle on this node.
    pub fn node(&self) -> Node {
        Node {
            inner: self.inner.clone(),
        }
    }

    /// Installs the transport. Only the first call has an effect.
    pub fn set_transport(&self, transport: Arc<dyn Transport>) {
        let _ = self.inner.transport.set(transport);
    }

    /// Hands a frame that arrived from the hub to the ends it concerns.
    ///
    /// Never blocks and never calls back into the transport.
    pub fn dispatch(&self, frame: Frame) {
        self.dispatch_all(std::iter::once(frame));
    }

    /// Hands a run of frames over, looking each message's end up once per run of
    /// messages to the same end.
    pub fn dispatch_all(&self, frames: impl Iterator<Item = Frame>) {
        let mut last: Option<Arc<EndState>> = None;
        let mut sinks: Option<Sinks> = None;
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
            } else if let Some(other) = self.dispatch_control(frame) {
                self.to_sinks(other, &mut sinks);
            }
        }
    }

    fn deliver(&self, m: yukicomm_wire::Msg, state: Option<&EndState>) {
        let carried = m
            .carried
            .iter()
            .map(|&k| self.inner.acquire(k, true, None))
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

    /// Handles the frames about channel ends; returns any other frame.
    fn dispatch_control(&self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Msg(m) => {
                let key = EndRef {
                    chan: m.chan,
                    end: m.to,
                };
                let state = self.inner.state(key);
                self.deliver(m, state.as_deref());
            }
            Frame::Credit {
                chan,
                end,
                n,
                bytes,
            } => {
                if let Some(s) = self.inner.state(EndRef { chan, end }) {
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
                    if let Some(s) = self.inner.state(EndRef { chan, end }) {
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
                        self.inner
                            .state(EndRef {
                                chan: c,
                                end: End::A,
                            })
                            .or_else(|| {
                                self.inner.state(EndRef {
                                    chan: c,
                                    end: End::B,
                                })
                            })
                    })
                    .map(|s| s.label());
                tracing::warn!(channel = ?label, ?code, "the hub refused a frame: {message}");
            }
            other => return Some(other),
        }
        None
    }

    /// Hands a frame the node does not handle to the sink that takes it. `seen` is the
    /// list of sinks this run of frames looks at, taken on first need.
    fn to_sinks(&self, frame: Frame, seen: &mut Option<Sinks>) {
        let sinks = seen.get_or_insert_with(|| self.inner.sinks.lock().clone());
        let Some(frame) = offer(sinks, frame) else {
            return;
        };
        // A sink may have been registered since the run began: look once more.
        let now = self.inner.sinks.lock().clone();
        let frame = if Arc::ptr_eq(&now, sinks) {
            Some(frame)
        } else {
            *sinks = now;
            offer(sinks, frame)
        };
        if let Some(other) = frame {
            tracing::warn!(?other, "unexpected frame from the hub");
        }
    }

    fn set_peer_gone(&self, key: EndRef, gone: bool, queued: bool) {
        if let Some(s) = self.inner.state(key) {
            s.peer_queued.store(queued, Ordering::Release);
            s.peer_gone.store(gone, Ordering::Release);
            if gone && !queued {
                s.wake_receivers();
            }
        }
    }

    /// The hub connection is gone: every end is disconnected, every waiter wakes, and
    /// every registered sink is told.
    pub fn connection_lost(&self) {
        self.inner.lost.store(true, Ordering::Release);
        let sinks = self.inner.sinks.lock().clone();
        for s in sinks.iter() {
            s.connection_lost();
        }
        let states: Vec<_> = self.inner.ends.lock().values().cloned().collect();
        for s in states {
            s.peer_queued.store(false, Ordering::Release);
            s.peer_gone.store(true, Ordering::Release);
            s.wake_receivers();
        }
    }
}

/// Offers `frame` to each sink in turn; returns it if none took it.
fn offer(sinks: &Sinks, mut frame: Frame) -> Option<Frame> {
    for s in sinks.iter() {
        frame = s.frame(frame)?;
    }
    Some(frame)
}

impl NodeInner {
    pub(crate) fn transport(&self) -> Option<&Arc<dyn Transport>> {
        self.transport.get()
    }

    fn state(&self, key: EndRef) -> Option<Arc<EndState>> {
        self.ends.lock().get(&key).cloned()
    }

    /// Takes a handle on an end; `grant` counts one grant from the hub.
    fn acquire(self: &Arc<Self>, key: EndRef, grant: bool, label: Option<&str>) -> EndGuard {
        let mut ends = self.ends.lock();
        let state = ends
            .entry(key)
            .or_insert_with(|| {
                Arc::new(EndState::new(
                    key,
                    self.window,
                    self.lost.load(Ordering::Acquire),
                ))
            })
            .clone();
        drop(ends);
        state.hold(grant);
        if let Some(l) = label {
            state.set_label(l);
        }
        EndGuard {
            node: self.clone(),
            state,
        }
    }

    /// Lets go of `state`'s end if no handle on it is left (called by the last
    /// [`EndGuard`] dropped), and hands the hub's grants back.
    pub(crate) fn maybe_release(&self, state: &Arc<EndState>) {
        if state.is_pinned() {
            return;
        }
        let mut ends = self.ends.lock();
        if !state.unheld() {
            return;
        }
        match ends.get(&state.key) {
            Some(s) if Arc::ptr_eq(s, state) => {
                ends.remove(&state.key);
            }
            _ => return,
        }
        drop(ends);
        let count = state.take_grants();
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
