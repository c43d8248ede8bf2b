//! The serving side: the services this process serves, and the handlers running for
//! calls, registered on the node as the sink of `Call` and `Cancel` frames.
//!
//! Calls go, in order, to the process's *serving thread*, which waits for them as a
//! blocking receiver does (in a child, it reads the connection itself, so that a call
//! reaches it with no thread hand-off). It takes the first step of each handler itself,
//! inside the node's runtime: a handler that completes there is answered from that
//! thread at once; one that waits goes on as a task on the runtime. `Cancel` (the caller
//! gave up, or its deadline passed) aborts the handler wherever it is, dropping its
//! future. A handler that panics produces a `panicked` reply; the service goes on
//! serving. As on any async runtime, a handler must not block: one that does delays the
//! calls behind it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{AbortHandle, Abortable, FutureExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use yukicomm_wire::call::{status_message, Call, CallStatus};
use yukicomm_wire::{Frame, Reply, Request};

use super::{encode_value, ServeError, ServeOptions};
use crate::error::LinkError;
use crate::node::{FrameSink, Node};
use crate::transport::{Pump, Transport, TransportError};

/// A boxed handler future, as [`Service::call`] returns it.
pub type BoxCall = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// What serves calls: implemented by the `NameServer` type the `service` attribute
/// generates (and by a type whose `impl` block carries the attribute), and by
/// [`Node::serve_fn`]'s handler. Implement it by hand to serve another language's
/// methods, or anything the attribute does not cover.
pub trait Service: Send + Sync + 'static {
    /// Starts handling a call of `method` with the MessagePack arguments `args`;
    /// `None` when there is no such method.
    fn call(self: Arc<Self>, method: &str, args: Bytes) -> Option<BoxCall>;
}

/// How a handler ended: the encoded result, or an error status with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    status: CallStatus,
    body: Vec<u8>,
}

impl Outcome {
    /// The handler's result.
    pub fn ok<T: Serialize + ?Sized>(value: &T) -> Outcome {
        Outcome::encoded(CallStatus::Ok, value)
    }

    fn encoded<T: Serialize + ?Sized>(status: CallStatus, value: &T) -> Outcome {
        let mut body = Vec::new();
        match encode_value(&mut body, value) {
            Ok(()) => Outcome { status, body },
            Err(e) => Outcome::failure(
                CallStatus::Failed,
                &format!("the result did not encode: {e}"),
            ),
        }
    }

    /// The service's own error.
    pub fn service_error<E: Serialize + ?Sized>(error: &E) -> Outcome {
        Outcome::encoded(CallStatus::ServiceError, error)
    }

    /// `Ok` as [`Outcome::ok`], `Err` as [`Outcome::service_error`].
    pub fn result<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Outcome {
        match result {
            Ok(v) => Outcome::ok(v),
            Err(e) => Outcome::service_error(e),
        }
    }

    /// Arguments that did not decode.
    pub fn bad_request(message: &str) -> Outcome {
        Outcome::failure(CallStatus::BadRequest, message)
    }

    fn failure(status: CallStatus, message: &str) -> Outcome {
        Outcome {
            status,
            body: status_message(message),
        }
    }
}

/// Decodes a method's arguments (a MessagePack array of them, in order), or the
/// [`Outcome`] that says they did not decode.
pub fn decode_args<T: DeserializeOwned>(method: &str, args: &[u8]) -> Result<T, Outcome> {
    rmp_serde::from_slice(args).map_err(|e| {
        Outcome::bad_request(&format!("the arguments of '{method}' did not decode: {e}"))
    })
}

/// What a handler knows about the call it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// The service's name.
    pub service: Arc<str>,
    /// The method called.
    pub method: String,
    /// When the caller stops waiting; the handler is cancelled then.
    pub deadline: Instant,
}

tokio::task_local! {
    static CURRENT: CallInfo;
}

/// The call the current task serves, if it is a handler (or code it awaits).
pub fn current_call() -> Option<CallInfo> {
    CURRENT.try_with(Clone::clone).ok()
}

/// This process's services, and the calls it is serving: the node's sink of `Call`
/// and `Cancel` frames.
pub(crate) struct ServiceSink(Arc<Serving>);

struct Serving {
    transport: Arc<dyn Transport>,
    runtime: tokio::runtime::Handle,
    served: Mutex<FxHashMap<Arc<str>, Arc<dyn Service>>>,
    running: Mutex<FxHashMap<u32, AbortHandle>>,
    /// Calls for the serving thread, in arrival order (at most about the bounds this
    /// process gave the hub, summed over its services).
    calls: flume::Sender<Call>,
    /// The same queue's receiving side, to see whether calls wait.
    queue: flume::Receiver<Call>,
}

/// "No channel end": what the serving thread passes to `Transport::pump`, which it
/// asks to read for calls, not for a channel's messages (channel 0 never exists).
const NO_END: yukicomm_wire::EndRef = yukicomm_wire::EndRef {
    chan: yukicomm_wire::ChanId(0),
    end: yukicomm_wire::End::A,
};

/// The serving thread: takes each call in turn, reading the connection itself while it
/// waits when the transport allows.
fn serving_thread(serving: Arc<Serving>, calls: flume::Receiver<Call>) {
    loop {
        let call = match calls.try_recv() {
            Ok(call) => call,
            Err(flume::TryRecvError::Disconnected) => return,
            Err(flume::TryRecvError::Empty) => {
                let ready = || !calls.is_empty();
                if serving.transport.pump(NO_END, &ready, None) == Pump::Ready {
                    continue;
                }
                match calls.recv() {
                    Ok(call) => call,
                    Err(_) => return,
                }
            }
        };
        serving.start(call);
    }
}

impl Serving {
    fn reply(&self, id: u32, outcome: Outcome, service: &str, method: &str) {
        let Outcome { status, body } = outcome;
        // More calls waiting for the serving thread: their replies will share a write.
        let more = !self.queue.is_empty();
        let sent = self.transport.reply(
            id,
            status,
            &mut |buf| {
                buf.extend_from_slice(&body);
                Ok(())
            },
            more,
        );
        if let Err(TransportError::TooLarge { size, max }) = sent {
            let message = format!(
                "the reply of {service}.{method} is {size} bytes, over the frame limit of {max}"
            );
            let failure = Outcome::failure(CallStatus::TooLarge, &message);
            let _ = self.transport.reply(
                id,
                failure.status,
                &mut |buf| {
                    buf.extend_from_slice(&failure.body);
                    Ok(())
                },
                more,
            );
        }
    }

    /// Starts serving `call` on the runtime.
    fn start(self: &Arc<Self>, call: Call) {
        let Call {
            id,
            timeout_ms,
            service,
            method,
            body,
            ..
        } = call;
        let found = self
            .served
            .lock()
            .get_key_value(service.as_str())
            .map(|(k, s)| (k.clone(), s.clone()));
        let Some((name, svc)) = found else {
            let message = format!("this process does not serve '{service}'");
            return self.reply(
                id,
                Outcome::failure(CallStatus::NoServer, &message),
                &service,
                &method,
            );
        };
        let Some(handler) = svc.call(&method, body) else {
            let message = format!("service '{service}' has no method '{method}'");
            return self.reply(
                id,
                Outcome::failure(CallStatus::UnknownMethod, &message),
                &service,
                &method,
            );
        };
        let info = CallInfo {
            service: name,
            method,
            deadline: Instant::now() + Duration::from_millis(u64::from(timeout_ms)),
        };
        let (abort, registration) = AbortHandle::new_pair();
        self.running.lock().insert(id, abort);
        let sink = self.clone();
        let task = Abortable::new(
            CURRENT.scope(info.clone(), AssertUnwindSafe(handler).catch_unwind()),
            registration,
        );
        let mut whole = Box::pin(async move {
            let ended = task.await;
            sink.running.lock().remove(&id);
            let outcome = match ended {
                // Cancelled: the caller no longer waits.
                Err(_aborted) => return,
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panic)) => {
                    let message = crate::value::panic_message(&*panic).to_string();
                    tracing::error!(
                        service = %info.service,
                        method = %info.method,
                        "a handler panicked: {message}"
                    );
                    Outcome::failure(CallStatus::Panicked, &message)
                }
            };
            sink.reply(id, outcome, &info.service, &info.method);
        });
        // The first step here, in the runtime's context (a handler that completes at
        // once costs no hand-off); the rest, if any, as a task, which the runtime polls
        // again at once, with its own waker.
        let _runtime = self.runtime.enter();
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        if whole.as_mut().poll(&mut cx).is_pending() {
            self.runtime.spawn(whole);
        }
    }
}

impl FrameSink for ServiceSink {
    fn frame(&self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Call(call) => {
                // The serving thread lives as long as the sink.
                let _ = self.0.calls.send(call);
                None
            }
            Frame::Cancel { id } => {
                if let Some(abort) = self.0.running.lock().remove(&id) {
                    abort.abort();
                }
                None
            }
            other => Some(other),
        }
    }

    fn connection_lost(&self) {
        // Nobody waits for the replies any more.
        for (_, abort) in self.0.running.lock().drain() {
            abort.abort();
        }
    }
}

impl Node {
    fn services(&self) -> Result<Arc<ServiceSink>, LinkError> {
        let transport = self.transport()?.clone();
        let runtime = self.runtime().clone();
        let mut failed = None;
        let sink = self.sink(|| {
            let (tx, rx) = flume::unbounded();
            let serving = Arc::new(Serving {
                transport,
                runtime,
                served: Mutex::new(FxHashMap::default()),
                running: Mutex::new(FxHashMap::default()),
                calls: tx,
                queue: rx.clone(),
            });
            let s = serving.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("yukicomm-serve".into())
                .spawn(move || serving_thread(s, rx))
            {
                failed = Some(e);
            }
            ServiceSink(serving)
        });
        match failed {
            None => Ok(sink),
            Some(e) => {
                tracing::error!("cannot start the serving thread: {e}");
                Err(LinkError::Disconnected)
            }
        }
    }

    /// Serves calls to the service `name` with `service`, from now on and for the life
    /// of the process (or until [`Node::unserve`]), with the default
    /// [`ServeOptions`]. Handlers run on the node's runtime ([`Node::runtime`]).
    ///
    /// `service` is the `NameServer` of a trait with the `service` attribute
    /// (`TranslatorServer::new(MyTranslator)`), or a type whose `impl` of such a trait
    /// carries the attribute too (`MyTranslator` itself). Serving a name this process
    /// already serves replaces its handler.
    ///
    /// # Errors
    ///
    /// [`ServeError::InvalidName`] when `name` breaks the rules of channel names;
    /// [`ServeError::Link`] when the hub cannot be reached.
    pub fn serve<S: Service>(&self, name: &str, service: S) -> Result<(), ServeError> {
        self.serve_with(name, service, ServeOptions::default())
    }

    /// As [`Node::serve`], with `options`.
    ///
    /// # Errors
    ///
    /// As [`Node::serve`].
    pub fn serve_with<S: Service>(
        &self,
        name: &str,
        service: S,
        options: ServeOptions,
    ) -> Result<(), ServeError> {
        let link = |source| ServeError::Link {
            name: name.to_string(),
            source,
        };
        if let Err(e) = yukicomm_wire::ChannelName::new(name) {
            return Err(ServeError::InvalidName {
                name: name.to_string(),
                message: e.reason.to_string(),
            });
        }
        let sink = self.services().map_err(link)?;
        let key: Arc<str> = name.into();
        // In place before the hub sends the first call.
        let before = sink.0.served.lock().insert(key.clone(), Arc::new(service));
        let reply = self.transport().map_err(link)?.request(
            Request::Serve {
                name: name.to_string(),
                max_in_flight: options.max_in_flight.max(1),
                when_full: options.when_full,
            },
            self.inner.request_timeout,
        );
        let failed = match reply {
            Ok(Reply::Done) => return Ok(()),
            Ok(Reply::Error { code, message }) => ServeError::Refused {
                name: name.to_string(),
                code,
                message,
            },
            Ok(other) => ServeError::Refused {
                name: name.to_string(),
                code: yukicomm_wire::ErrorCode::BadRequest,
                message: format!("unexpected reply {other:?}"),
            },
            Err(e) => link(e),
        };
        let mut served = sink.0.served.lock();
        match before {
            Some(old) => served.insert(key, old),
            None => served.remove(&key),
        };
        Err(failed)
    }

    /// Serves `name` with one async function of one request type and one reply type
    /// (the method `call` on the wire).
    ///
    /// # Errors
    ///
    /// As [`Node::serve`].
    pub fn serve_fn<Req, Resp, F, Fut>(&self, name: &str, handler: F) -> Result<(), ServeError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
    {
        self.serve(
            name,
            FnService {
                handler,
                _types: std::marker::PhantomData,
            },
        )
    }

    /// Stops serving `name` in this process: the hub gives it no more calls; calls in
    /// progress go on.
    ///
    /// # Errors
    ///
    /// [`LinkError`] when the hub cannot be reached.
    pub fn unserve(&self, name: &str) -> Result<(), LinkError> {
        let sink = self.services()?;
        self.transport()?.request(
            Request::Unserve {
                name: name.to_string(),
            },
            self.inner.request_timeout,
        )?;
        sink.0.served.lock().remove(name);
        Ok(())
    }
}

/// The method name of [`Node::serve_fn`] services on the wire.
pub(crate) const FN_METHOD: &str = "call";

struct FnService<F, Req, Resp, Fut> {
    handler: F,
    _types: std::marker::PhantomData<fn(Req) -> (Resp, Fut)>,
}

impl<Req, Resp, F, Fut> Service for FnService<F, Req, Resp, Fut>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    fn call(self: Arc<Self>, method: &str, args: Bytes) -> Option<BoxCall> {
        if method != FN_METHOD {
            return None;
        }
        let fut = match rmp_serde::from_slice::<Req>(&args) {
            Ok(req) => Ok((self.handler)(req)),
            Err(e) => Err(Outcome::bad_request(&format!(
                "the request did not decode: {e}"
            ))),
        };
        Some(Box::pin(async move {
            match fut {
                Ok(f) => Outcome::ok(&f.await),
                Err(o) => o,
            }
        }))
    }
}
