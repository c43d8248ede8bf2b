//! [`Channel<T>`]: a handle on one end of a named, typed, duplex channel.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use yukicomm_wire::{ChanId, End, Notice};

use crate::end::{EndGuard, EndState, Item, RecvMode, SendBlock};
use crate::error::{RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError};
use crate::node::Node;
use crate::transport::{Pump, TransportError};
use crate::value;

/// What a send does when the channel's window is used up.
///
/// Every channel end may have at most `window` messages in flight (sent but not yet
/// delivered to a receiving process), and every receiving process buffers at most
/// `window` messages per end; the hub's window is set when the main process starts
/// (default 4096). Nothing is ever dropped to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// `send` waits for room. It still returns when the channel is closed or the other
    /// end's holders are all gone. `send_timeout` bounds the wait. The default.
    #[default]
    Block,
    /// `send` returns [`SendError::Full`] at once, like `try_send`.
    Fail,
}

/// One end of a channel carrying values of type `T`.
///
/// A channel has two ends; what one end sends, the other end receives, and a process
/// never receives its own message. Each message is delivered exactly once, and the
/// messages of one sender arrive in the order they were sent. Handles are cheap to
/// clone, can be shared between threads, and can be sent to other processes inside
/// messages (so a request can carry its reply channel).
///
/// An end receives in one mode per process: actively ([`recv`](Channel::recv) and
/// friends) or passively ([`on_receive`](Channel::on_receive)); mixing them is an error.
///
/// # Holding an end
///
/// A process holds an end as long as it has a handle on it (clones included). When the
/// last handle in a process is dropped, the process lets go of that end, as it does when
/// it exits: if no other process holds the end, the other side's receives return
/// [`RecvError::Disconnected`] once they have taken what was sent before, although the
/// process that dropped it is alive, and it stays so until some process takes the end
/// again with [`get_channel`](crate::Node::get_channel). So keep the handle from
/// `get_channel` for as long as you use the channel, rather than looking the channel up
/// for each message. A [`Selector`](crate::Selector) arm on a disconnected channel is
/// always ready; the selector still picks among ready arms at random, but a loop should
/// drop such a channel from its selector. A child's own
/// [`active_channel`](crate::Context::active_channel) and
/// [`passive_channel`](crate::Context::passive_channel) ends are never let go while it
/// runs.
///
/// # Examples
///
/// ```no_run
/// # fn demo(ctx: &yukicomm_client::Context) -> yukicomm_client::Result<()> {
/// let active = ctx.active_channel::<String>();
/// while let Ok(text) = active.recv() {
///     println!("Active receive: {text}");
/// }
/// # Ok(())
/// # }
/// ```
pub struct Channel<T> {
    pub(crate) guard: EndGuard,
    policy: FullPolicy,
    /// The type the channel carries, when it is not `T`: every send and receive on this
    /// handle fails with a `TypeMismatch` naming both types.
    mismatch: Option<Arc<str>>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Channel<T> {
    fn clone(&self) -> Self {
        Channel {
            guard: self.guard.clone(),
            policy: self.policy,
            mismatch: self.mismatch.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.guard.state.label())
            .field("end", &self.guard.state.key.end)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> Channel<T> {
    pub(crate) fn from_guard(guard: EndGuard) -> Channel<T> {
        Channel {
            guard,
            policy: FullPolicy::default(),
            mismatch: None,
            _type: PhantomData,
        }
    }

    /// This handle, marked as being of another type than the channel's, `found`.
    pub(crate) fn mistyped(mut self, found: &str) -> Channel<T> {
        self.mismatch = Some(Arc::from(found));
        self
    }

    /// `(expected, found)` when this handle's type is not the channel's.
    pub(crate) fn type_mismatch(&self) -> Option<(String, String)> {
        self.mismatch
            .as_ref()
            .map(|found| (std::any::type_name::<T>().to_string(), found.to_string()))
    }

    fn send_mismatch(&self, value: T) -> Result<(), SendError<T>> {
        match self.type_mismatch() {
            None => Ok(()),
            Some((expected, found)) => Err(SendError::TypeMismatch {
                channel: self.name(),
                expected,
                found,
                value,
            }),
        }
    }

    pub(crate) fn state(&self) -> &EndState {
        &self.guard.state
    }

    pub(crate) fn node(&self) -> Node {
        Node {
            inner: self.guard.node.clone(),
        }
    }

    /// The channel's registered name, or `#N` for an unnamed channel.
    pub fn name(&self) -> String {
        self.state().label()
    }

    /// The hub-wide number of the channel.
    pub fn id(&self) -> ChanId {
        self.state().key.chan
    }

    /// Which end this handle is.
    pub fn end(&self) -> End {
        self.state().key.end
    }

    /// The policy `send` follows when the window is used up.
    pub fn full_policy(&self) -> FullPolicy {
        self.policy
    }

    /// This handle with another [`FullPolicy`].
    pub fn with_full_policy(mut self, policy: FullPolicy) -> Channel<T> {
        self.policy = policy;
        self
    }

    /// Whether the channel was closed.
    pub fn is_closed(&self) -> bool {
        self.state().closed.load(Ordering::Acquire)
    }

    /// Waits for the next queue item whatever the peer's state; `None` once the channel
    /// is closed and empty. For passive dispatch.
    pub(crate) fn next_item(&self) -> Option<Item> {
        let st = self.state();
        loop {
            if let Ok(item) = st.rx.try_recv() {
                return Some(item);
            }
            if st.closed_for_receivers() {
                return None;
            }
            if let Some(t) = self.guard.node.transport() {
                if t.pump(st.key, &|| !st.rx.is_empty(), None) == Pump::Ready {
                    continue;
                }
            }
            st.waiters.fetch_add(1, Ordering::AcqRel);
            let item = st.rx.recv().ok();
            st.waiters.fetch_sub(1, Ordering::AcqRel);
            if item.is_some() {
                return item;
            }
        }
    }

    /// Closes the channel for every process. Messages already delivered can still be
    /// received; then receivers get [`RecvError::Closed`], and every send fails with
    /// [`SendError::Closed`].
    pub fn close(&self) {
        let st = self.state();
        if st.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(t) = self.guard.node.transport() {
            t.notice(Notice::Close { chan: st.key.chan });
        }
        st.wake_receivers();
    }
}

impl<T: Serialize + DeserializeOwned> Channel<T> {
    /// Sends `value` to the other end. Returns once the message is queued for the hub;
    /// it does not wait for a receiver. When the window is used up it follows the
    /// handle's [`FullPolicy`] (by default it waits for room).
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`], [`SendError::Disconnected`] (window used up and the other
    /// end's holders all gone, or hub lost), [`SendError::Full`] (policy `Fail`),
    /// [`SendError::TooLarge`] or [`SendError::Encode`]. The value is handed back.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.policy {
            FullPolicy::Fail => self.try_send(value),
            FullPolicy::Block => self.send_deadline(value, None).map_err(|e| match e {
                SendTimeoutError::Send(e) => e,
                SendTimeoutError::Timeout { channel, value } => SendError::Full { channel, value },
            }),
        }
    }

    /// Sends `value` if there is room now.
    ///
    /// # Errors
    ///
    /// As [`send`](Channel::send), with [`SendError::Full`] when there is no room.
    pub fn try_send(&self, value: T) -> Result<(), SendError<T>> {
        if self.mismatch.is_some() {
            return self.send_mismatch(value);
        }
        let st = self.state();
        if st.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed {
                channel: self.name(),
                value,
            });
        }
        let value = if st.try_take_credit(self.guard.node.window_bytes) {
            // `Full` here: another sender used up the window in bytes meanwhile.
            match self.transmit(value) {
                Err(SendError::Full { value, .. }) => value,
                done => return done,
            }
        } else {
            value
        };
        match st.send_block() {
            Some(b) => Err(self.blocked(b, value)),
            None => Err(SendError::Full {
                channel: self.name(),
                value,
            }),
        }
    }

    /// Sends `value`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] if there was no room in time, or any error of
    /// [`send`](Channel::send).
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_deadline(value, Some(Instant::now() + timeout))
    }

    fn send_deadline(
        &self,
        mut value: T,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<T>> {
        if self.mismatch.is_some() {
            return self.send_mismatch(value).map_err(SendTimeoutError::Send);
        }
        let st = self.state();
        let window_bytes = self.guard.node.window_bytes;
        loop {
            if st.closed.load(Ordering::Acquire) {
                return Err(SendTimeoutError::Send(SendError::Closed {
                    channel: self.name(),
                    value,
                }));
            }
            if !st.try_take_credit(window_bytes) {
                // Credit comes back in frames from the hub: read them on this thread
                // rather than wait for another to.
                if let Some(t) = self.guard.node.transport() {
                    let ready = || st.has_credit(window_bytes) || st.send_block().is_some();
                    if t.pump(st.key, &ready, deadline) == Pump::Timeout
                        && !st.has_credit(window_bytes)
                    {
                        return Err(SendTimeoutError::Timeout {
                            channel: self.name(),
                            value,
                        });
                    }
                }
                match st.wait_credit(deadline, window_bytes) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(SendTimeoutError::Timeout {
                            channel: self.name(),
                            value,
                        })
                    }
                    Err(b) => return Err(SendTimeoutError::Send(self.blocked(b, value))),
                }
            }
            match self.transmit(value) {
                // Another sender used up the window in bytes meanwhile: wait again.
                Err(SendError::Full { value: v, .. }) => value = v,
                done => return done.map_err(SendTimeoutError::Send),
            }
        }
    }

    /// Sends `value`, awaiting room if the window is used up (whatever the policy).
    ///
    /// # Errors
    ///
    /// As [`send`](Channel::send), except [`SendError::Full`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, the value was not sent.
    pub async fn send_async(&self, mut value: T) -> Result<(), SendError<T>> {
        if self.mismatch.is_some() {
            return self.send_mismatch(value);
        }
        let st = self.state();
        loop {
            if st.closed.load(Ordering::Acquire) {
                return Err(SendError::Closed {
                    channel: self.name(),
                    value,
                });
            }
            let notified = st.credit_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if st.try_take_credit(self.guard.node.window_bytes) {
                match self.transmit(value) {
                    // Another sender used up the window in bytes meanwhile: wait again.
                    Err(SendError::Full { value: v, .. }) => {
                        value = v;
                        continue;
                    }
                    done => return done,
                }
            }
            if let Some(b) = st.send_block() {
                return Err(self.blocked(b, value));
            }
            notified.await;
        }
    }

    fn blocked(&self, b: SendBlock, value: T) -> SendError<T> {
        match b {
            SendBlock::Closed => SendError::Closed {
                channel: self.name(),
                value,
            },
            SendBlock::Disconnected => SendError::Disconnected {
                channel: self.name(),
                value,
            },
        }
    }

    /// Encodes and hands the message to the transport; a credit is already taken, and
    /// the message's bytes are taken as it is encoded. `SendError::Full` when another
    /// sender used up the window in bytes meanwhile.
    fn transmit(&self, value: T) -> Result<(), SendError<T>> {
        let st = self.state();
        let Some(t) = self.guard.node.transport() else {
            st.return_credit(0);
            return Err(SendError::Disconnected {
                channel: self.name(),
                value,
            });
        };
        let window_bytes = self.guard.node.window_bytes;
        let mut taken = 0u64;
        let result = t.send_msg(st.key.chan, st.key.end.opposite(), &mut |buf| {
            let start = buf.len();
            let carried = value::encode(buf, &value).map_err(TransportError::Encode)?;
            let size = buf.len() - start;
            if !st.take_bytes(size, window_bytes) {
                buf.truncate(start);
                return Err(TransportError::NoRoom);
            }
            taken = size as u64;
            Ok(carried)
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransportError::NoRoom) => {
                st.return_credit(0);
                Err(SendError::Full {
                    channel: self.name(),
                    value,
                })
            }
            Err(TransportError::Encode(reason)) => {
                st.return_credit(taken);
                Err(SendError::Encode {
                    channel: self.name(),
                    type_name: std::any::type_name::<T>(),
                    reason,
                    value,
                })
            }
            Err(TransportError::TooLarge { size, max }) => {
                st.return_credit(taken);
                Err(SendError::TooLarge {
                    channel: self.name(),
                    size,
                    max,
                    value,
                })
            }
            Err(TransportError::Broken) => Err(SendError::Disconnected {
                channel: self.name(),
                value,
            }),
        }
    }

    /// Makes this end receive actively in this process.
    pub(crate) fn ensure_active(&self) -> Result<(), RecvError> {
        if let Some((expected, found)) = self.type_mismatch() {
            return Err(RecvError::TypeMismatch {
                channel: self.name(),
                expected,
                found,
            });
        }
        let st = self.state();
        if st.mode.get() == RecvMode::Active {
            return Ok(());
        }
        match st.mode.claim(RecvMode::Active) {
            Ok(true) => {
                if let Some(t) = self.guard.node.transport() {
                    t.notice(Notice::Attach {
                        chan: st.key.chan,
                        end: st.key.end,
                        credit: self.guard.node.window,
                        bytes: self.guard.node.window_bytes,
                    });
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(_) => Err(RecvError::ModeConflict {
                channel: self.name(),
            }),
        }
    }

    /// Turns a queue item into a result; `None` for a wake marker.
    pub(crate) fn take(&self, item: Item) -> Option<Result<T, RecvError>> {
        match item {
            Item::Wake => None,
            Item::Msg { body, _carried } => {
                let result = value::decode::<T>(&self.guard.node, &body);
                drop(_carried);
                self.state().consumed(&self.guard.node, body.len());
                Some(result.map_err(|reason| RecvError::Decode {
                    channel: self.name(),
                    type_name: std::any::type_name::<T>(),
                    reason,
                }))
            }
        }
    }

    /// The error a receiver gets when its queue is empty, if the end is finished.
    pub(crate) fn finished(&self) -> Option<RecvError> {
        let st = self.state();
        if st.closed_for_receivers() {
            Some(RecvError::Closed {
                channel: self.name(),
            })
        } else if st.peer_gone.load(Ordering::Acquire) && !st.peer_queued.load(Ordering::Acquire) {
            Some(RecvError::Disconnected {
                channel: self.name(),
            })
        } else {
            None
        }
    }

    /// Receives without waiting.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing is there, otherwise as [`recv`](Channel::recv).
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        if let Some(v) = self.queued()? {
            return Ok(v);
        }
        match self.finished() {
            Some(e) => Err(e.into()),
            None => Err(TryRecvError::Empty {
                channel: self.name(),
            }),
        }
    }

    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when the other end's holders are all gone (a dead
    /// child, say) or the hub is lost, [`RecvError::Closed`], [`RecvError::Decode`] for a
    /// message that is not a `T` (it is consumed), [`RecvError::ModeConflict`] if this end
    /// receives with `on_receive`.
    pub fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.recv_until(None) {
                Ok(v) => return Ok(v),
                Err(RecvTimeoutError::Recv(e)) => return Err(e),
                // Without a deadline there is no timeout to report, and a live peer is
                // not a disconnected one: should a wait end early, wait again.
                Err(RecvTimeoutError::Timeout { .. }) => continue,
            }
        }
    }

    /// Waits at most `timeout` for the next message.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], or any error of [`recv`](Channel::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        // A message already queued needs no deadline, so no clock read.
        if let Some(v) = self.queued()? {
            return Ok(v);
        }
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// The next queued message, if there is one.
    fn queued(&self) -> Result<Option<T>, RecvError> {
        self.ensure_active()?;
        while let Ok(item) = self.state().rx.try_recv() {
            if let Some(r) = self.take(item) {
                return r.map(Some);
            }
        }
        Ok(None)
    }

    /// Waits until `deadline` at most for the next message.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], or any error of [`recv`](Channel::recv).
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        self.recv_until(Some(deadline))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let st = self.state();
        loop {
            if let Some(v) = self.queued()? {
                return Ok(v);
            }
            if let Some(e) = self.finished() {
                return Err(e.into());
            }
            if let Some(t) = self.guard.node.transport() {
                match t.pump(st.key, &|| !st.rx.is_empty(), deadline) {
                    Pump::Ready => continue,
                    Pump::Timeout if deadline.is_some() => {
                        return Err(RecvTimeoutError::Timeout {
                            channel: self.name(),
                        })
                    }
                    // A transport that gives up reading without a deadline: wait on
                    // the queue, which whoever reads fills.
                    Pump::Timeout | Pump::Unavailable => {}
                }
            }
            st.waiters.fetch_add(1, Ordering::AcqRel);
            let got = match deadline {
                Some(d) => st.rx.recv_deadline(d).ok(),
                None => st.rx.recv().ok(),
            };
            st.waiters.fetch_sub(1, Ordering::AcqRel);
            match got {
                Some(item) => {
                    if let Some(r) = self.take(item) {
                        return r.map_err(RecvTimeoutError::from);
                    }
                }
                None => {
                    return Err(RecvTimeoutError::Timeout {
                        channel: self.name(),
                    })
                }
            }
        }
    }

    /// Awaits the next message.
    ///
    /// # Errors
    ///
    /// As [`recv`](Channel::recv).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost when the future is dropped before it
    /// completes, so it can be used in `tokio::select!`.
    pub async fn recv_async(&self) -> Result<T, RecvError> {
        self.ensure_active()?;
        let st = self.state();
        loop {
            while let Ok(item) = st.rx.try_recv() {
                if let Some(r) = self.take(item) {
                    return r;
                }
            }
            if let Some(e) = self.finished() {
                return Err(e);
            }
            let waiting = WaiterGuard::new(st);
            let got = st.rx.recv_async().await;
            drop(waiting);
            if let Ok(item) = got {
                if let Some(r) = self.take(item) {
                    return r;
                }
            }
        }
    }

    /// Iterates over received messages, waiting for each. The iteration ends when the
    /// channel is closed or disconnected; a message that does not decode is yielded as
    /// an error and the iteration goes on.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { channel: self }
    }
}

struct WaiterGuard<'a>(&'a EndState);

impl<'a> WaiterGuard<'a> {
    fn new(st: &'a EndState) -> WaiterGuard<'a> {
        st.waiters.fetch_add(1, Ordering::AcqRel);
        WaiterGuard(st)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Iterator returned by [`Channel::iter`].
#[derive(Debug)]
pub struct Iter<'a, T> {
    channel: &'a Channel<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for Iter<'_, T> {
    type Item = Result<T, RecvError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.channel.recv() {
            Ok(v) => Some(Ok(v)),
            Err(RecvError::Closed { .. } | RecvError::Disconnected { .. }) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl<'a, T: Serialize + DeserializeOwned> IntoIterator for &'a Channel<T> {
    type Item = Result<T, RecvError>;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> Serialize for Channel<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        value::serialize_end(self.state().key, s)
    }
}

impl<'de, T> Deserialize<'de> for Channel<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Channel<T>, D::Error> {
        let (node, key) = value::deserialize_end(d)?;
        Ok(Channel::from_guard(node.acquire(key, false, None)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures::future::BoxFuture;
    use yukicomm_wire::store::{Op, OpReply};
    use yukicomm_wire::{ChanId, End, EndRef, Frame, Msg, Notice, Reply, Request};

    use crate::error::LinkError;
    use crate::transport::{Driver, EncodeFn, OpFuture, Pump, Transport, TransportError};

    /// A transport whose `pump` gives up at once, deadline or not, and tells the test
    /// each time it did.
    struct GivesUp(flume::Sender<()>);

    impl Transport for GivesUp {
        fn send_msg(&self, _: ChanId, _: End, _: EncodeFn<'_>) -> Result<(), TransportError> {
            Err(TransportError::Broken)
        }
        fn send_credit(&self, _: ChanId, _: End, _: u32, _: u64) {}
        fn notice(&self, _: Notice) {}
        fn request(&self, _: Request, _: Duration) -> Result<Reply, LinkError> {
            Err(LinkError::Disconnected)
        }
        fn pump(&self, _: EndRef, _: &dyn Fn() -> bool, _: Option<Instant>) -> Pump {
            let _ = self.0.send(());
            Pump::Timeout
        }
        fn request_async(
            &self,
            _: Request,
            _: Duration,
        ) -> BoxFuture<'static, Result<Reply, LinkError>> {
            Box::pin(async { Err(LinkError::Disconnected) })
        }
        fn store_call(&self, _: Op, _: Duration) -> Result<OpReply, LinkError> {
            Err(LinkError::Disconnected)
        }
        fn store_call_async(&self, _: Op, _: Duration) -> OpFuture {
            OpFuture::ready(Err(LinkError::Disconnected))
        }
        fn store_send(&self, _: Op) -> Result<Option<OpReply>, LinkError> {
            Err(LinkError::Disconnected)
        }
        fn call(
            &self,
            _: crate::transport::CallHead<'_>,
            _: crate::transport::BodyFn<'_>,
            _: yukicomm_link::calls::Waiter<crate::transport::Answer>,
        ) -> Result<u32, TransportError> {
            Err(TransportError::Broken)
        }
        fn wait(
            &self,
            _: u32,
            _: &yukicomm_link::calls::Slot<crate::transport::Answer>,
            _: Instant,
        ) -> Result<crate::transport::Answer, LinkError> {
            Err(LinkError::Disconnected)
        }
        fn cancel(&self, _: u32) {}
        fn reply(
            &self,
            _: u32,
            _: yukicomm_wire::call::CallStatus,
            _: crate::transport::BodyFn<'_>,
            _: bool,
        ) -> Result<(), TransportError> {
            Err(TransportError::Broken)
        }
    }

    /// Issue 8: a blocking `recv` whose transport stops reading without a deadline waits
    /// for the message instead of reporting a live peer as disconnected.
    #[test]
    fn recv_without_deadline_never_turns_a_wait_into_disconnected() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let driver = Driver::new(16, 1 << 20, rt.handle().clone(), Duration::from_secs(5));
        let node = driver.node();
        let (pumped, gave_up) = flume::unbounded();
        driver.set_transport(Arc::new(GivesUp(pumped)));
        let key = EndRef {
            chan: ChanId(7),
            end: End::B,
        };
        let channel = super::Channel::<u32>::from_guard(node.acquire(key, true, Some("seven")));
        let sender = driver.clone();
        let delivery = std::thread::spawn(move || {
            // Only once the receiver's transport gave up does the message come.
            gave_up.recv().unwrap();
            let mut body = Vec::new();
            crate::value::encode(&mut body, &42u32).unwrap();
            sender.dispatch(Frame::Msg(Msg {
                chan: key.chan,
                to: key.end,
                carried: Vec::new(),
                body: Bytes::from(body),
            }));
        });
        assert_eq!(channel.recv(), Ok(42));
        delivery.join().unwrap();
    }
}
