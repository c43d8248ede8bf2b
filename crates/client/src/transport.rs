//! What a transport implements and calls: the face of the client that the byte
//! streams to the hub plug into, not meant for applications.
//!
//! A transport carries a process's frames to the hub and back: in a child, the socket
//! connection (`remote.rs`); in the main process, direct calls into the hub (in
//! the supervisor crate). It implements [`Transport`], and hands what arrives to the
//! node's [`Driver`], which also hears when the connection is lost. Applications never
//! see either: they hold a [`Node`](crate::Node) or a [`Context`](crate::Context).

use std::time::Duration;

use futures::future::BoxFuture;
use yukicomm_wire::store::{Op, OpReply};
use yukicomm_wire::{ChanId, End, EndRef, Notice, Reply, Request};

use crate::error::LinkError;
use bytes::Bytes;
use yukicomm_link::calls::{CallError, Slot, Waiter};
use yukicomm_wire::call::CallStatus;

pub use crate::node::Driver;

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

/// Writes the body of a call or of a call's reply in place; on an error it leaves the
/// buffer as it found it.
pub type BodyFn<'a> = &'a mut dyn FnMut(&mut Vec<u8>) -> Result<(), TransportError>;

/// What a call names besides its body.
#[derive(Debug, Clone, Copy)]
pub struct CallHead<'a> {
    /// The service.
    pub service: &'a str,
    /// The method.
    pub method: &'a str,
    /// Milliseconds the caller waits for the reply.
    pub timeout_ms: u32,
    /// `yukicomm_wire::call::WAIT_FOR_SERVER`, or 0.
    pub flags: u8,
}

/// How a process's frames reach the hub.
///
/// Implemented by the socket connection of a child and, in the main process, by the
/// supervisor on top of the hub itself. Incoming frames are handed to
/// [`Driver::dispatch`].
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
    /// Sends a call to a service, whose reply (an [`Answer::Call`]) goes to `waiter`;
    /// returns the call's id.
    fn call(
        &self,
        head: CallHead<'_>,
        body: BodyFn<'_>,
        waiter: Waiter<Answer>,
    ) -> Result<u32, TransportError>;
    /// Waits on this thread for the answer to call `id`, whose waiter is `slot`, until
    /// `deadline`. On a timeout the call is forgotten, not cancelled.
    fn wait(
        &self,
        id: u32,
        slot: &Slot<Answer>,
        deadline: std::time::Instant,
    ) -> Result<Answer, LinkError>;
    /// Gives call `id` up: forgets its waiter and tells the hub, which cancels it at
    /// the server.
    fn cancel(&self, id: u32);
    /// Answers call `id`, which the hub gave this process to serve. With `more`, other
    /// replies follow at once, and this one may wait a moment to share their write.
    fn reply(
        &self,
        id: u32,
        status: CallStatus,
        body: BodyFn<'_>,
        more: bool,
    ) -> Result<(), TransportError>;
}

/// The reply to a store operation sent with [`Transport::store_call_async`]: a plain
/// future, so that an operation costs no boxing.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct OpFuture(OpFutureState);

#[derive(Debug)]
enum OpFutureState {
    Ready(Option<Result<OpReply, LinkError>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<Answer, CallError>>),
}

/// What answers a call on a connection: a reply to a registry request, to a store
/// operation, or to a call to a service. One table of calls
/// (`yukicomm_link::calls::Calls<Answer>`) waits for all three.
#[derive(Debug)]
pub enum Answer {
    /// The reply to a `Request`.
    Reply(Reply),
    /// The reply to an `Op`.
    Op(OpReply),
    /// The reply to a `Call`.
    Call(CallStatus, Bytes),
}

impl Answer {
    /// The store reply. A reply of the other kind breaks the protocol (ids are unique
    /// per connection): it is logged and counts as a lost connection.
    pub fn into_op(self) -> Result<OpReply, LinkError> {
        match self {
            Answer::Op(r) => Ok(r),
            other => {
                tracing::error!("the hub answered a store operation with {other:?}");
                Err(LinkError::Disconnected)
            }
        }
    }

    /// The request reply; as [`Answer::into_op`] for a reply of the other kind.
    pub fn into_reply(self) -> Result<Reply, LinkError> {
        match self {
            Answer::Reply(r) => Ok(r),
            other => {
                tracing::error!("the hub answered a request with {other:?}");
                Err(LinkError::Disconnected)
            }
        }
    }
}

impl From<CallError> for LinkError {
    fn from(e: CallError) -> LinkError {
        match e {
            CallError::Timeout => LinkError::Timeout,
            CallError::Disconnected => LinkError::Disconnected,
        }
    }
}

impl OpFuture {
    /// A future that resolves with `reply` at once.
    pub fn ready(reply: Result<OpReply, LinkError>) -> OpFuture {
        OpFuture(OpFutureState::Ready(Some(reply)))
    }

    /// A future that resolves with the store reply sent on `rx`, or `Disconnected` if
    /// the sender is dropped.
    pub fn waiting(rx: tokio::sync::oneshot::Receiver<Result<Answer, CallError>>) -> OpFuture {
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
            OpFutureState::Waiting(rx) => std::pin::Pin::new(rx).poll(cx).map(|r| match r {
                Ok(Ok(answer)) => answer.into_op(),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(LinkError::Disconnected),
            }),
        }
    }
}
