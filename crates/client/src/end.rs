//! This process's state for one channel end ([`EndState`]), the handle that keeps an
//! end held ([`EndGuard`]), and the end's receive mode ([`RecvMode`]).
//!
//! The [`Node`] keeps one `EndState` per end this process holds and fills
//! its queue from the frames the hub sends ([`crate::node`]); channel handles
//! ([`crate::channel`]), passive dispatchers ([`crate::passive`]) and selectors
//! ([`crate::select`]) take from it. Send credit (in messages and in bytes) lives here
//! too: senders take it, the hub's `Credit` frames give it back.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Condvar, Mutex};
use yukicomm_wire::EndRef;

use crate::node::{Node, NodeInner};

/// How an end receives in this process: not yet, actively (`recv` and friends) or
/// passively (`on_receive`). Once set it stays, except that a failed `on_receive`
/// start sets it back to `Unset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecvMode {
    /// Nothing received yet.
    Unset = 0,
    /// Receives with `recv`, `try_recv`, selectors.
    Active = 1,
    /// Receives with `on_receive` handlers.
    Passive = 2,
}

impl RecvMode {
    fn from_u8(v: u8) -> RecvMode {
        match v {
            1 => RecvMode::Active,
            2 => RecvMode::Passive,
            _ => RecvMode::Unset,
        }
    }
}

/// An end's [`RecvMode`], set once by whichever receive comes first.
pub(crate) struct ModeCell(AtomicU8);

impl ModeCell {
    fn new() -> ModeCell {
        ModeCell(AtomicU8::new(RecvMode::Unset as u8))
    }

    /// The current mode.
    pub(crate) fn get(&self) -> RecvMode {
        RecvMode::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Sets the mode to `mode` if none is set yet: `Ok(true)` if this call set it,
    /// `Ok(false)` if it already was `mode`, `Err(other)` if the end receives in the
    /// other mode.
    pub(crate) fn claim(&self, mode: RecvMode) -> Result<bool, RecvMode> {
        match self.0.compare_exchange(
            RecvMode::Unset as u8,
            mode as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(true),
            Err(found) if found == mode as u8 => Ok(false),
            Err(found) => Err(RecvMode::from_u8(found)),
        }
    }

    /// Back to [`RecvMode::Unset`].
    pub(crate) fn reset(&self) {
        self.0.store(RecvMode::Unset as u8, Ordering::Release);
    }
}

/// A passive receiver's filter and handler with the message type erased: what an end
/// receiving passively runs for each message (implemented in [`crate::passive`]).
pub(crate) trait ErasedHandler: Send + Sync {
    /// Decodes `body` and runs the filter, then the handler if the filter accepts it.
    fn run(&self, node: &Node, body: &Bytes, channel: &str) -> BoxFuture<'static, ()>;
}

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
    pub(crate) mode: ModeCell,
    /// Messages this process may still send from this end.
    credits: AtomicU32,
    /// Bytes sent from this end that the hub has not credited back yet. A message may
    /// be sent while this is below the window in bytes.
    bytes_out: AtomicU64,
    credit_lock: Mutex<()>,
    credit_cv: Condvar,
    pub(crate) credit_notify: tokio::sync::Notify,
    /// What was consumed since credit was last returned, in one word so that a
    /// message costs one atomic step: messages in the low [`COUNT_BITS`] bits, their
    /// bytes above.
    consumed: AtomicU64,
    pub(crate) peer_gone: AtomicBool,
    /// With `peer_gone`: what the peer sent before it went is still on its way here,
    /// so receivers are not told yet (see [`Event::PeerGone`](yukicomm_wire::Event)).
    pub(crate) peer_queued: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// With `closed`: what was sent before the close is still on its way here, so
    /// receivers are not told yet (see [`Event::Closed`](yukicomm_wire::Event)).
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
    /// A fresh end with a full window of `window` send credits; `peer_gone` when the
    /// hub connection is already lost.
    pub(crate) fn new(key: EndRef, window: u32, peer_gone: bool) -> EndState {
        let (tx, rx) = flume::unbounded();
        EndState {
            key,
            label: Mutex::new(Arc::from(format!("{}", key.chan).as_str())),
            tx,
            rx,
            mode: ModeCell::new(),
            credits: AtomicU32::new(window),
            bytes_out: AtomicU64::new(0),
            credit_lock: Mutex::new(()),
            credit_cv: Condvar::new(),
            credit_notify: tokio::sync::Notify::new(),
            consumed: AtomicU64::new(0),
            peer_gone: AtomicBool::new(peer_gone),
            peer_queued: AtomicBool::new(false),
            close_queued: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            handles: AtomicUsize::new(0),
            grants: AtomicU32::new(0),
            pinned: AtomicBool::new(false),
            handlers: Mutex::new(Vec::new()),
        }
    }

    /// The channel's name for messages: its registered name, or `#id`.
    pub(crate) fn label(&self) -> String {
        self.label.lock().to_string()
    }

    pub(crate) fn set_label(&self, name: &str) {
        *self.label.lock() = Arc::from(name);
    }

    /// Counts one more handle; `grant` counts one grant from the hub as well.
    pub(crate) fn hold(&self, grant: bool) {
        self.handles.fetch_add(1, Ordering::AcqRel);
        if grant {
            self.grants.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Whether no handle on this end is left in this process.
    pub(crate) fn unheld(&self) -> bool {
        self.handles.load(Ordering::Acquire) == 0
    }

    /// Keeps the end held for the life of the process.
    pub(crate) fn pin(&self) {
        self.pinned.store(true, Ordering::Release);
    }

    pub(crate) fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Acquire)
    }

    /// The grants received since the last release, which a release hands back.
    pub(crate) fn take_grants(&self) -> u32 {
        self.grants.swap(0, Ordering::AcqRel)
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

    /// Credit from the hub: `n` more messages, `bytes` fewer bytes in flight.
    pub(crate) fn add_credits(&self, n: u32, bytes: u64) {
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
        // The count stays below 2^COUNT_BITS: credit goes back before it gets there.
        let half = u64::from((node.window / 2).max(1)).min(1 << (COUNT_BITS - 1));
        let half_bytes = (node.window_bytes / 2).clamp(1, 1 << 38);
        let step = ((size as u64) << COUNT_BITS) | 1;
        let now = self
            .consumed
            .fetch_add(step, Ordering::AcqRel)
            .wrapping_add(step);
        if now & COUNT_MASK >= half || now >> COUNT_BITS >= half_bytes {
            let taken = self.consumed.swap(0, Ordering::AcqRel);
            let (n, bytes) = ((taken & COUNT_MASK) as u32, taken >> COUNT_BITS);
            if n > 0 || bytes > 0 {
                if let Some(t) = node.transport() {
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

/// Bits of [`EndState::consumed`] that count messages; the bytes (up to 2^40) sit above.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

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

#[cfg(test)]
mod tests {
    use super::{ModeCell, RecvMode};

    #[test]
    fn the_first_mode_claimed_stays() {
        let m = ModeCell::new();
        assert_eq!(m.get(), RecvMode::Unset);
        assert_eq!(m.claim(RecvMode::Passive), Ok(true));
        assert_eq!(m.claim(RecvMode::Passive), Ok(false));
        assert_eq!(m.claim(RecvMode::Active), Err(RecvMode::Passive));
        assert_eq!(m.get(), RecvMode::Passive);
        m.reset();
        assert_eq!(m.claim(RecvMode::Active), Ok(true));
        assert_eq!(m.claim(RecvMode::Passive), Err(RecvMode::Active));
    }
}
