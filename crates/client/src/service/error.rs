//! The errors of calls and of serving.

use std::fmt;
use std::time::Duration;

use yukicomm_wire::ErrorCode;

use crate::error::LinkError;

/// The error type of methods that cannot fail: no value has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NoError {}

impl fmt::Display for NoError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoError {}

/// Why a call gave no result: what went wrong ([`CallError::kind`]), with the service
/// and the method it concerns. `E` is the service's own error type (none for methods
/// that cannot fail).
pub struct CallError<E = NoError> {
    service: String,
    method: String,
    kind: CallErrorKind<E>,
}

/// What went wrong with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallErrorKind<E = NoError> {
    /// The service returned its own error.
    Service(E),
    /// No reply came before the deadline (the call was cancelled at the server).
    Timeout(Duration),
    /// No process serves the name (or none will again). See
    /// [`ServiceClient::waiting_for_server`](super::ServiceClient::waiting_for_server).
    NoServer(String),
    /// The serving process ended (died or restarted) before it replied.
    ServerGone(String),
    /// Every server is at its bound of calls in progress and refuses more, or the
    /// service's queue is full.
    Overloaded(String),
    /// The service has no such method (it may be older than the caller).
    UnknownMethod(String),
    /// The arguments did not encode, or the server could not decode them.
    BadRequest(String),
    /// The reply did not decode as the result (or error) type.
    Decode(String),
    /// The request, or the reply, is larger than the hub's frame limit.
    TooLarge(String),
    /// The handler panicked; the server goes on serving.
    Panicked(String),
    /// The server could not produce a reply (its result did not encode).
    Failed(String),
    /// This process's connection to the hub is gone.
    Disconnected,
}

impl<E> CallError<E> {
    pub(crate) fn new(service: &str, method: &str, kind: CallErrorKind<E>) -> CallError<E> {
        CallError {
            service: service.to_string(),
            method: method.to_string(),
            kind,
        }
    }

    /// The service called.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// What went wrong.
    pub fn kind(&self) -> &CallErrorKind<E> {
        &self.kind
    }

    /// What went wrong, taken out.
    pub fn into_kind(self) -> CallErrorKind<E> {
        self.kind
    }

    /// The service's own error, if that is what came back.
    pub fn into_service_error(self) -> Option<E> {
        match self.kind {
            CallErrorKind::Service(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, CallErrorKind::Timeout(_))
    }

    /// The same failure with the service's error mapped by `f`.
    pub fn map_service<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        let kind = match self.kind {
            CallErrorKind::Service(e) => CallErrorKind::Service(f(e)),
            CallErrorKind::Timeout(d) => CallErrorKind::Timeout(d),
            CallErrorKind::NoServer(m) => CallErrorKind::NoServer(m),
            CallErrorKind::ServerGone(m) => CallErrorKind::ServerGone(m),
            CallErrorKind::Overloaded(m) => CallErrorKind::Overloaded(m),
            CallErrorKind::UnknownMethod(m) => CallErrorKind::UnknownMethod(m),
            CallErrorKind::BadRequest(m) => CallErrorKind::BadRequest(m),
            CallErrorKind::Decode(m) => CallErrorKind::Decode(m),
            CallErrorKind::TooLarge(m) => CallErrorKind::TooLarge(m),
            CallErrorKind::Panicked(m) => CallErrorKind::Panicked(m),
            CallErrorKind::Failed(m) => CallErrorKind::Failed(m),
            CallErrorKind::Disconnected => CallErrorKind::Disconnected,
        };
        CallError {
            service: self.service,
            method: self.method,
            kind,
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallError")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("kind", &self.kind)
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call {}.{}: ", self.service, self.method)?;
        match &self.kind {
            CallErrorKind::Service(e) => write!(f, "the service returned an error: {e}"),
            CallErrorKind::Timeout(d) => write!(f, "no reply within {} ms", d.as_millis()),
            CallErrorKind::NoServer(m) => write!(f, "no server: {m}"),
            CallErrorKind::ServerGone(m) => write!(f, "server gone: {m}"),
            CallErrorKind::Overloaded(m) => write!(f, "overloaded: {m}"),
            CallErrorKind::UnknownMethod(m) => write!(f, "unknown method: {m}"),
            CallErrorKind::BadRequest(m) => write!(f, "bad arguments: {m}"),
            CallErrorKind::Decode(m) => write!(f, "the reply did not decode: {m}"),
            CallErrorKind::TooLarge(m) => write!(f, "too large: {m}"),
            CallErrorKind::Panicked(m) => write!(f, "the handler panicked: {m}"),
            CallErrorKind::Failed(m) => write!(f, "the server failed: {m}"),
            CallErrorKind::Disconnected => write!(f, "the hub connection is closed"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {}

/// Why a process could not serve a service.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ServeError {
    /// The name is not a valid service name (the rules of channel names).
    #[error("cannot serve '{name}': {message}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The hub refused for another reason.
    #[error("cannot serve '{name}': the hub refused: {message}")]
    Refused {
        /// The name.
        name: String,
        /// The hub's reason code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The hub could not be reached.
    #[error("cannot serve '{name}': {source}")]
    Link {
        /// The name.
        name: String,
        /// What happened.
        source: LinkError,
    },
}
