//! The serving side: the services this process serves, and the handlers running for
//! calls, registered on the node as the sink of `Call` and `Cancel` frames.
//!
//! Each call runs as a task on the node's runtime; `Cancel` (the caller gave up, or its
//! deadline passed) aborts it, dropping the handler's future. A handler that panics
//! produces a `panicked` reply; the service goes on serving.

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
use crate::transport::{Transport, TransportError};

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
}

impl Serving {
    fn reply(&self, id: u32, outcome: Outcome, service: &str, method: &str) {
        let Outcome { status, body } = outcome;
        let sent = self.transport.reply(id, status, &mut |buf| {
            buf.extend_from_slice(&body);
            Ok(())
        });
        if let Err(TransportError::TooLarge { size, max }) = sent {
            let message = format!(
                "the reply of {service}.{method} is {size} bytes, over the frame limit of {max}"
            );
            let failure = Outcome::failure(CallStatus::TooLarge, &message);
            let _ = self.transport.reply(id, failure.status, &mut |buf| {
                buf.extend_from_slice(&failure.body);
                Ok(())
            });
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
        self.runtime.spawn(async move {
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
    }
}

impl FrameSink for ServiceSink {
    fn frame(&self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Call(call) => {
                self.0.start(call);
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
        Ok(self.sink(|| {
            ServiceSink(Arc::new(Serving {
                transport,
                runtime,
                served: Mutex::new(FxHashMap::default()),
                running: Mutex::new(FxHashMap::default()),
            }))
        }))
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
