//! Errors, one enum per operation. Every message names the channel (or process) concerned.
//! A failed send hands the value back.

use std::fmt;

use yukicomm_wire::ErrorCode;

/// Why a request to the hub got no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// The connection to the hub is gone.
    #[error("the hub connection is closed")]
    Disconnected,
    /// The hub did not answer before the deadline.
    #[error("the hub did not answer in time")]
    Timeout,
    /// The request would make a frame larger than the hub accepts; it was not sent.
    #[error("a request of {size} bytes exceeds the hub's frame limit of {max} bytes")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Failure of a registry operation: `get_channel`, `set_channel`, `get_channels`, or
/// creating a channel.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// The name is not a valid channel name.
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No channel is registered under this name.
    #[error("no channel named '{name}'")]
    Unknown {
        /// The name looked up.
        name: String,
    },
    /// The name is already registered.
    #[error("a channel named '{name}' is already registered")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The channel carries another type.
    #[error("channel '{name}' carries {found}, not {expected}")]
    TypeMismatch {
        /// The channel's name.
        name: String,
        /// The type asked for.
        expected: String,
        /// The type it was created with.
        found: String,
    },
    /// The hub refused for another reason.
    #[error("the hub refused: {message}")]
    Refused {
        /// The hub's reason code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The hub could not be reached.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Failure of `send`, `try_send` and `send_async`. The value is handed back.
#[derive(thiserror::Error)]
pub enum SendError<T> {
    /// No room: the channel's window is used up. Returned by `try_send`, and by `send`
    /// when the channel's [`FullPolicy`](crate::FullPolicy) is `Fail`.
    #[error("channel '{channel}' is full")]
    Full {
        /// The channel's name.
        channel: String,
        /// The value that was not sent.
        value: T,
    },
    /// The channel was closed.
    #[error("channel '{channel}' is closed")]
    Closed {
        /// The channel's name.
        channel: String,
        /// The value that was not sent.
        value: T,
    },
    /// The window is used up and nobody holds the other end any more, or the hub
    /// connection is gone.
    #[error("channel '{channel}' is disconnected")]
    Disconnected {
        /// The channel's name.
        channel: String,
        /// The value that was not sent.
        value: T,
    },
    /// The encoded message is larger than the hub accepts. Nothing was sent.
    #[error("channel '{channel}': a message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The channel's name.
        channel: String,
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
        /// The value that was not sent.
        value: T,
    },
    /// The value could not be encoded as MessagePack.
    #[error("channel '{channel}': cannot encode {type_name}: {reason}")]
    Encode {
        /// The channel's name.
        channel: String,
        /// The value's type.
        type_name: &'static str,
        /// The encoder's message.
        reason: String,
        /// The value that was not sent.
        value: T,
    },
    /// The channel carries another type than this handle's (a child's own channel,
    /// see [`Context::active_channel`](crate::Context::active_channel)). Nothing was
    /// sent.
    #[error("channel '{channel}' carries {found}, not {expected}")]
    TypeMismatch {
        /// The channel's name.
        channel: String,
        /// This handle's type.
        expected: String,
        /// The type the channel carries.
        found: String,
        /// The value that was not sent.
        value: T,
    },
}

impl<T> SendError<T> {
    /// The value that could not be sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Full { value, .. }
            | SendError::Closed { value, .. }
            | SendError::Disconnected { value, .. }
            | SendError::TooLarge { value, .. }
            | SendError::Encode { value, .. }
            | SendError::TypeMismatch { value, .. } => value,
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendError({self})")
    }
}

/// Failure of `send_timeout`. The value is handed back.
#[derive(thiserror::Error)]
pub enum SendTimeoutError<T> {
    /// The window stayed full until the deadline.
    #[error("channel '{channel}' stayed full until the deadline")]
    Timeout {
        /// The channel's name.
        channel: String,
        /// The value that was not sent.
        value: T,
    },
    /// Any other failure.
    #[error(transparent)]
    Send(SendError<T>),
}

impl<T> SendTimeoutError<T> {
    /// The value that could not be sent.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout { value, .. } => value,
            SendTimeoutError::Send(e) => e.into_inner(),
        }
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendTimeoutError({self})")
    }
}

/// Failure of `recv`, `recv_async` and iteration.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RecvError {
    /// Nobody holds the other end any more (its process died or dropped it), or the hub
    /// connection is gone, and nothing is left to receive.
    #[error("channel '{channel}' is disconnected")]
    Disconnected {
        /// The channel's name.
        channel: String,
    },
    /// The channel was closed and nothing is left to receive.
    #[error("channel '{channel}' is closed")]
    Closed {
        /// The channel's name.
        channel: String,
    },
    /// A message arrived that does not decode as the channel's type. It is consumed;
    /// the next receive gets the next message.
    #[error("channel '{channel}': message does not decode as {type_name}: {reason}")]
    Decode {
        /// The channel's name.
        channel: String,
        /// The expected type.
        type_name: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// This end already receives passively (`on_receive`) in this process.
    #[error("channel '{channel}' already receives with on_receive; it cannot also recv")]
    ModeConflict {
        /// The channel's name.
        channel: String,
    },
    /// The channel carries another type than this handle's (a child's own channel,
    /// see [`Context::active_channel`](crate::Context::active_channel)). Nothing was
    /// received.
    #[error("channel '{channel}' carries {found}, not {expected}")]
    TypeMismatch {
        /// The channel's name.
        channel: String,
        /// This handle's type.
        expected: String,
        /// The type the channel carries.
        found: String,
    },
}

/// Failure of `try_recv`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing to receive right now.
    #[error("channel '{channel}' is empty")]
    Empty {
        /// The channel's name.
        channel: String,
    },
    /// Any other failure.
    #[error(transparent)]
    Recv(#[from] RecvError),
}

/// Failure of `recv_timeout` and `recv_deadline`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing arrived before the deadline.
    #[error("nothing arrived on channel '{channel}' before the deadline")]
    Timeout {
        /// The channel's name.
        channel: String,
    },
    /// Any other failure.
    #[error(transparent)]
    Recv(#[from] RecvError),
}

/// Failure of `on_receive`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OnReceiveError {
    /// This end already receives actively (`recv` and friends) in this process.
    #[error("channel '{channel}' already receives with recv; it cannot also use on_receive")]
    ModeConflict {
        /// The channel's name.
        channel: String,
    },
    /// The channel is closed.
    #[error("channel '{channel}' is closed")]
    Closed {
        /// The channel's name.
        channel: String,
    },
    /// The channel carries another type than this handle's (a child's own channel,
    /// see [`Context::active_channel`](crate::Context::active_channel)). No handler
    /// was registered.
    #[error("channel '{channel}' carries {found}, not {expected}")]
    TypeMismatch {
        /// The channel's name.
        channel: String,
        /// This handle's type.
        expected: String,
        /// The type the channel carries.
        found: String,
    },
}

/// Failure of a request to restart or stop a child process.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// No child has this name.
    #[error("no child process named '{name}'")]
    UnknownProcess {
        /// The name given.
        name: String,
    },
    /// The request was refused.
    #[error("the hub refused: {message}")]
    Refused {
        /// The hub's reason code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The hub could not be reached.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Failure to issue a join token for a remote process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The main process does not listen for remote processes (see
    /// `App::listen_remote`).
    #[error("cannot issue a join token for '{name}': this main process does not listen for remote processes (App::listen_remote)")]
    NotListening {
        /// The name given.
        name: String,
    },
    /// Not a valid process name.
    #[error("cannot issue a join token for '{name}': {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it is not valid.
        reason: String,
    },
    /// A child of this main process has the name: a remote process cannot take it.
    #[error("cannot issue a join token for '{name}': a child of this main process has that name")]
    ChildName {
        /// The name given.
        name: String,
    },
}

/// Failure to join a yukicomm program as a child.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The environment does not say where the hub is: this process was not started by a
    /// yukicomm supervisor.
    #[error("not started by a yukicomm supervisor: {0} is not set")]
    NotAChild(&'static str),
    /// The hub's socket could not be reached.
    #[error("cannot connect to the hub at {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The hub refused this process.
    #[error("the hub refused this process: {message}")]
    Refused {
        /// The hub's reason code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The hub answered something that is not a welcome.
    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),
    /// A process can join only once.
    #[error("this process is already connected to a hub")]
    AlreadyConnected,
    /// Joining a hub on another machine failed: a bad address or token, enrolment
    /// refused (token used, expired, for another name), the hub unreachable, a TLS
    /// handshake failed, or the session refused.
    #[error("cannot join the hub at {url}: {source}")]
    Remote {
        /// The hub's address, `yk://host:port`.
        url: String,
        /// The cause.
        #[source]
        source: yukicomm_remote::RemoteError,
    },
}

/// Any yukicomm error, for applications that propagate with `?`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`RegistryError`].
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A send failed; the value is kept in the [`SendFailure`], with what went wrong.
    #[error(transparent)]
    Send(SendFailure),
    /// See [`RecvError`].
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// See [`RecvTimeoutError`].
    #[error(transparent)]
    RecvTimeout(#[from] RecvTimeoutError),
    /// See [`TryRecvError`].
    #[error(transparent)]
    TryRecv(#[from] TryRecvError),
    /// See [`OnReceiveError`].
    #[error(transparent)]
    OnReceive(#[from] OnReceiveError),
    /// See [`ControlError`].
    #[error(transparent)]
    Control(#[from] ControlError),
    /// See [`ConnectError`].
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// See [`TokenError`].
    #[error(transparent)]
    Token(#[from] TokenError),
    /// See [`LinkError`].
    #[error(transparent)]
    Link(#[from] LinkError),
    /// See [`StoreError`](crate::StoreError).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// See [`SubscriberError`](crate::store::SubscriberError).
    #[error(transparent)]
    Subscriber(#[from] crate::store::SubscriberError),
    /// See [`ServeError`](crate::service::ServeError).
    #[error(transparent)]
    Serve(#[from] crate::service::ServeError),
    /// A call failed (see [`CallError`](crate::service::CallError)); the service's own
    /// error, if that is what came back, is kept as its message.
    #[error(transparent)]
    Call(crate::service::CallError<String>),
    /// An I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A failure reported by application code.
    #[error("{0}")]
    Other(String),
}

impl<T: Send + 'static> From<SendError<T>> for Error {
    fn from(e: SendError<T>) -> Error {
        Error::Send(SendFailure::from(e))
    }
}

impl<T: Send + 'static> From<SendTimeoutError<T>> for Error {
    fn from(e: SendTimeoutError<T>) -> Error {
        Error::Send(SendFailure::from(e))
    }
}

/// What went wrong in a [`SendFailure`]: the variant of the [`SendError`] or
/// [`SendTimeoutError`] it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendFailureKind {
    /// [`SendError::Full`].
    Full,
    /// [`SendError::Closed`].
    Closed,
    /// [`SendError::Disconnected`].
    Disconnected,
    /// [`SendError::TooLarge`].
    TooLarge,
    /// [`SendError::Encode`].
    Encode,
    /// [`SendTimeoutError::Timeout`].
    Timeout,
    /// [`SendError::TypeMismatch`].
    TypeMismatch,
}

/// A failed send inside [`Error::Send`]: what went wrong, on which channel, and the
/// value that was not sent, kept with its type erased. Get the value back with
/// [`into_value`](SendFailure::into_value), naming its type.
///
/// # Examples
///
/// ```no_run
/// # fn demo(ch: yukicomm_client::Channel<String>) {
/// use yukicomm_client::{Error, SendFailureKind};
/// fn send(ch: &yukicomm_client::Channel<String>) -> yukicomm_client::Result<()> {
///     ch.try_send("hello".to_string())?;
///     Ok(())
/// }
/// if let Err(Error::Send(failure)) = send(&ch) {
///     assert_eq!(failure.kind(), SendFailureKind::Full);
///     let unsent: String = failure.into_value().expect("a String was sent");
/// }
/// # }
/// ```
pub struct SendFailure {
    kind: SendFailureKind,
    channel: String,
    message: String,
    type_name: &'static str,
    /// The value. In a mutex only so that the error is `Sync`: it is reached only by
    /// [`into_value`](SendFailure::into_value), which owns the failure.
    value: parking_lot::Mutex<Box<dyn std::any::Any + Send>>,
}

impl SendFailure {
    fn new<T: Send + 'static>(
        kind: SendFailureKind,
        channel: String,
        message: String,
        value: T,
    ) -> SendFailure {
        SendFailure {
            kind,
            channel,
            message,
            type_name: std::any::type_name::<T>(),
            value: parking_lot::Mutex::new(Box::new(value)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> SendFailureKind {
        self.kind
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The type of the value that was not sent.
    pub fn value_type(&self) -> &'static str {
        self.type_name
    }

    /// The value that was not sent, if it is a `T`.
    ///
    /// # Errors
    ///
    /// The failure itself, unchanged, if the value is not a `T`.
    pub fn into_value<T: 'static>(self) -> Result<T, SendFailure> {
        let SendFailure {
            kind,
            channel,
            message,
            type_name,
            value,
        } = self;
        match value.into_inner().downcast::<T>() {
            Ok(v) => Ok(*v),
            Err(value) => Err(SendFailure {
                kind,
                channel,
                message,
                type_name,
                value: parking_lot::Mutex::new(value),
            }),
        }
    }
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFailure")
            .field("kind", &self.kind)
            .field("channel", &self.channel)
            .field("message", &self.message)
            .field("value_type", &self.type_name)
            .finish()
    }
}

impl std::error::Error for SendFailure {}

impl<T: Send + 'static> From<SendError<T>> for SendFailure {
    fn from(e: SendError<T>) -> SendFailure {
        let message = e.to_string();
        let (kind, channel, value) = match e {
            SendError::Full { channel, value } => (SendFailureKind::Full, channel, value),
            SendError::Closed { channel, value } => (SendFailureKind::Closed, channel, value),
            SendError::Disconnected { channel, value } => {
                (SendFailureKind::Disconnected, channel, value)
            }
            SendError::TooLarge { channel, value, .. } => {
                (SendFailureKind::TooLarge, channel, value)
            }
            SendError::Encode { channel, value, .. } => (SendFailureKind::Encode, channel, value),
            SendError::TypeMismatch { channel, value, .. } => {
                (SendFailureKind::TypeMismatch, channel, value)
            }
        };
        SendFailure::new(kind, channel, message, value)
    }
}

impl<T: Send + 'static> From<SendTimeoutError<T>> for SendFailure {
    fn from(e: SendTimeoutError<T>) -> SendFailure {
        match e {
            SendTimeoutError::Timeout { channel, value } => {
                let message = format!("channel '{channel}' stayed full until the deadline");
                SendFailure::new(SendFailureKind::Timeout, channel, message, value)
            }
            SendTimeoutError::Send(e) => SendFailure::from(e),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl<E: fmt::Display> From<crate::service::CallError<E>> for Error {
    fn from(e: crate::service::CallError<E>) -> Error {
        Error::Call(e.map_service(|e| e.to_string()))
    }
}
