//! The calling side: [`ServiceClient`] (what the clients the `service` attribute
//! generates are made of), [`CallFuture`], and [`Caller`] for [`Node::serve_fn`]
//! services.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use yukicomm_link::calls::{CallError as Wait, Slot, Waiter};
use yukicomm_wire::call::{read_status_message, CallStatus, WAIT_FOR_SERVER};

use super::server::FN_METHOD;
use super::{encode_value, CallError, CallErrorKind, NoError, DEFAULT_CALL_TIMEOUT};
use crate::error::LinkError;
use crate::node::Node;
use crate::transport::{Answer, CallHead, Transport, TransportError};

/// A handle for calling one service by name, from any process: the untyped core of the
/// `NameClient` types the `service` attribute generates. Cheap to clone.
///
/// Arguments are encoded as a MessagePack array of the arguments in order; results and
/// the service's errors as MessagePack values (see `docs/PROTOCOL.md`).
#[derive(Clone)]
pub struct ServiceClient {
    node: Node,
    service: Arc<str>,
    timeout: Duration,
    wait_for_server: bool,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .field("wait_for_server", &self.wait_for_server)
            .finish()
    }
}

impl ServiceClient {
    /// A client of the service `name`, whose calls wait [`DEFAULT_CALL_TIMEOUT`] and
    /// fail at once when nobody serves the name. Nothing is checked or sent yet.
    pub fn new(node: &Node, name: &str) -> ServiceClient {
        ServiceClient {
            node: node.clone(),
            service: name.into(),
            timeout: DEFAULT_CALL_TIMEOUT,
            wait_for_server: false,
        }
    }

    /// The same client, whose calls wait `timeout` for their reply (at most about 49
    /// days; a longer one is cut).
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> ServiceClient {
        ServiceClient {
            timeout,
            ..self.clone()
        }
    }

    /// The same client, whose calls wait (within their deadline) for a process to
    /// serve the name when none does, instead of failing at once.
    #[must_use]
    pub fn waiting_for_server(&self) -> ServiceClient {
        ServiceClient {
            wait_for_server: true,
            ..self.clone()
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.service
    }

    /// How long its calls wait for their reply.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn head<'a>(&'a self, method: &'a str) -> CallHead<'a> {
        CallHead {
            service: &self.service,
            method,
            timeout_ms: u32::try_from(self.timeout.as_millis())
                .unwrap_or(u32::MAX)
                .max(1),
            flags: if self.wait_for_server {
                WAIT_FOR_SERVER
            } else {
                0
            },
        }
    }

    fn failure<E>(&self, method: &str, kind: CallErrorKind<E>) -> CallError<E> {
        CallError::new(&self.service, method, kind)
    }

    fn send_failure<E>(&self, method: &str, e: TransportError) -> CallError<E> {
        let kind = match e {
            TransportError::Encode(m) => CallErrorKind::BadRequest(m),
            TransportError::TooLarge { size, max } => CallErrorKind::TooLarge(format!(
                "a request of {size} bytes exceeds the frame limit of {max} bytes"
            )),
            TransportError::Broken | TransportError::NoRoom => CallErrorKind::Disconnected,
        };
        self.failure(method, kind)
    }

    /// Sends a call of `method` with `args` (any `Serialize` value: the macro passes
    /// the tuple of the arguments) and waits on this thread for the result.
    ///
    /// # Errors
    ///
    /// A [`CallError`] naming the service and the method.
    pub fn call_blocking<A, R, E>(&self, method: &str, args: &A) -> Result<R, CallError<E>>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
        E: DeserializeOwned,
    {
        let transport = self
            .node
            .transport()
            .map_err(|_| self.failure(method, CallErrorKind::Disconnected))?;
        let deadline = Instant::now() + self.timeout;
        let slot = Slot::for_this_thread();
        let id = transport
            .call(
                self.head(method),
                &mut |buf| encode_value(buf, args).map_err(TransportError::Encode),
                Waiter::Thread(slot.clone()),
            )
            .map_err(|e| self.send_failure(method, e))?;
        match transport.wait(id, &slot, deadline) {
            Ok(answer) => self.decode(method, answer),
            Err(LinkError::Timeout) => {
                transport.cancel(id);
                Err(self.failure(method, CallErrorKind::Timeout(self.timeout)))
            }
            Err(_) => Err(self.failure(method, CallErrorKind::Disconnected)),
        }
    }

    /// Sends a call of `method` with `args` now; the future resolves with its result.
    /// Dropping the future before it resolves cancels the call (the server's handler
    /// is dropped). The future needs no particular runtime.
    pub fn call<A, R, E>(&self, method: &str, args: &A) -> CallFuture<R, E>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
        E: DeserializeOwned,
    {
        let state = match self.node.transport() {
            Err(_) => State::Failed(Some(self.failure(method, CallErrorKind::Disconnected))),
            Ok(transport) => {
                let (tx, rx) = oneshot::channel();
                let sent = transport.call(
                    self.head(method),
                    &mut |buf| encode_value(buf, args).map_err(TransportError::Encode),
                    Waiter::Task(tx, Instant::now() + self.timeout),
                );
                match sent {
                    Ok(id) => State::Waiting {
                        rx,
                        id,
                        transport: transport.clone(),
                    },
                    Err(e) => State::Failed(Some(self.send_failure(method, e))),
                }
            }
        };
        CallFuture {
            client: self.clone(),
            method: method.to_string(),
            state,
            _types: PhantomData,
        }
    }

    fn decode<R, E>(&self, method: &str, answer: Answer) -> Result<R, CallError<E>>
    where
        R: DeserializeOwned,
        E: DeserializeOwned,
    {
        let Answer::Call(status, body) = answer else {
            tracing::error!("the hub answered a call with {answer:?}");
            return Err(self.failure(method, CallErrorKind::Disconnected));
        };
        decode_reply(&self.service, method, self.timeout, status, &body)
    }
}

/// The result of a call from its reply.
fn decode_reply<R, E>(
    service: &str,
    method: &str,
    timeout: Duration,
    status: CallStatus,
    body: &Bytes,
) -> Result<R, CallError<E>>
where
    R: DeserializeOwned,
    E: DeserializeOwned,
{
    let fail = |kind| Err(CallError::new(service, method, kind));
    let message = || read_status_message(body);
    match status {
        CallStatus::Ok => rmp_serde::from_slice(body)
            .or_else(|e| fail(CallErrorKind::Decode(format!("the result: {e}")))),
        CallStatus::ServiceError => match rmp_serde::from_slice(body) {
            Ok(e) => fail(CallErrorKind::Service(e)),
            Err(e) => fail(CallErrorKind::Decode(format!("the service's error: {e}"))),
        },
        CallStatus::NoServer => fail(CallErrorKind::NoServer(message())),
        CallStatus::ServerGone => fail(CallErrorKind::ServerGone(message())),
        CallStatus::Overloaded => fail(CallErrorKind::Overloaded(message())),
        CallStatus::UnknownMethod => fail(CallErrorKind::UnknownMethod(message())),
        CallStatus::BadRequest => fail(CallErrorKind::BadRequest(message())),
        CallStatus::Panicked => fail(CallErrorKind::Panicked(message())),
        CallStatus::TooLarge => fail(CallErrorKind::TooLarge(message())),
        CallStatus::Timeout => fail(CallErrorKind::Timeout(timeout)),
        CallStatus::Failed => fail(CallErrorKind::Failed(message())),
    }
}

/// A call in flight: resolves with its result. Dropping it before then cancels the
/// call at the server.
#[must_use = "a call is cancelled when its future is dropped"]
pub struct CallFuture<R, E = NoError> {
    client: ServiceClient,
    method: String,
    state: State<E>,
    _types: PhantomData<fn() -> R>,
}

enum State<E> {
    Waiting {
        rx: oneshot::Receiver<Result<Answer, Wait>>,
        id: u32,
        transport: Arc<dyn Transport>,
    },
    /// Failed before it was sent; the error is taken by the first poll.
    Failed(Option<CallError<E>>),
    Done,
}

// Nothing in it is pinned: `poll` moves only the receiver, which is `Unpin`.
impl<R, E> Unpin for CallFuture<R, E> {}

impl<R, E> Future for CallFuture<R, E>
where
    R: DeserializeOwned,
    E: DeserializeOwned,
{
    type Output = Result<R, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let client = &this.client;
        let method = this.method.as_str();
        match &mut this.state {
            State::Failed(e) => {
                let e = e.take();
                this.state = State::Done;
                Poll::Ready(Err(e.unwrap_or_else(|| {
                    client.failure(method, CallErrorKind::Disconnected)
                })))
            }
            State::Done => panic!("a CallFuture was polled after it completed"),
            State::Waiting { rx, id, transport } => {
                let answer = match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(a) => a,
                };
                let result = match answer {
                    Ok(Ok(answer)) => client.decode(method, answer),
                    Ok(Err(Wait::Timeout)) => {
                        transport.cancel(*id);
                        Err(client.failure(method, CallErrorKind::Timeout(client.timeout)))
                    }
                    Ok(Err(Wait::Disconnected)) | Err(_) => {
                        Err(client.failure(method, CallErrorKind::Disconnected))
                    }
                };
                this.state = State::Done;
                Poll::Ready(result)
            }
        }
    }
}

impl<R, E> Drop for CallFuture<R, E> {
    fn drop(&mut self) {
        if let State::Waiting { id, transport, .. } = &self.state {
            transport.cancel(*id);
        }
    }
}

impl<R, E> std::fmt::Debug for CallFuture<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallFuture")
            .field("service", &self.client.service)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// Calls a [`Node::serve_fn`] service: one request type, one reply type. Made by
/// [`Node::caller`]; cheap to clone.
pub struct Caller<Req, Resp> {
    client: ServiceClient,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Clone for Caller<Req, Resp> {
    fn clone(&self) -> Self {
        Caller {
            client: self.client.clone(),
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Caller<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("service", &self.client.service)
            .finish()
    }
}

impl<Req: Serialize, Resp: DeserializeOwned> Caller<Req, Resp> {
    /// Calls the service and waits on this thread for its reply, at most its timeout
    /// ([`DEFAULT_CALL_TIMEOUT`] unless [`Caller::with_timeout`] says otherwise).
    ///
    /// # Errors
    ///
    /// A [`CallError`] naming the service.
    pub fn call(&self, request: Req) -> Result<Resp, CallError> {
        self.client.call_blocking(FN_METHOD, &request)
    }

    /// As [`Caller::call`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Caller::call`].
    pub fn call_timeout(&self, request: Req, timeout: Duration) -> Result<Resp, CallError> {
        self.client
            .with_timeout(timeout)
            .call_blocking(FN_METHOD, &request)
    }

    /// Calls the service; the future resolves with its reply. Dropping it first
    /// cancels the call.
    pub fn call_async(&self, request: Req) -> CallFuture<Resp> {
        self.client.call(FN_METHOD, &request)
    }

    /// The same caller, whose calls wait `timeout`.
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Caller {
            client: self.client.with_timeout(timeout),
            _types: PhantomData,
        }
    }

    /// The same caller, whose calls wait for a server when none serves the name.
    #[must_use]
    pub fn waiting_for_server(&self) -> Self {
        Caller {
            client: self.client.waiting_for_server(),
            _types: PhantomData,
        }
    }
}

impl Node {
    /// A caller of the [`Node::serve_fn`] service `name`. Nothing is checked or sent
    /// until it calls.
    pub fn caller<Req: Serialize, Resp: DeserializeOwned>(&self, name: &str) -> Caller<Req, Resp> {
        Caller {
            client: ServiceClient::new(self, name),
            _types: PhantomData,
        }
    }
}
