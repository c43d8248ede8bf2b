//! [`Context`]: what a child process gets: its name, its own two channels, the registry,
//! and a way to ask the supervisor to restart or stop it.

use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use yukicomm_wire::{
    ChanId, ControlAction, End, EndRef, Reply, Request, ENV_FD, ENV_HUB, ENV_JOIN, ENV_NAME,
    ENV_STATE_DIR, ENV_TOKEN,
};

use crate::channel::Channel;
use crate::error::{ConnectError, ControlError};
use crate::node::Node;
use yukicomm_remote::client::{JoinConfig, SCHEME as JOIN_SCHEME};

/// A child process's handle on the yukicomm program. Dereferences to [`Node`] for the
/// registry: `ctx.get_channel::<T>(name)` and friends.
///
/// # Examples
///
/// ```no_run
/// fn main() -> yukicomm_client::Result<()> {
///     let ctx = yukicomm_client::connect()?;
///     let active = ctx.active_channel::<String>();
///     for text in active.iter() {
///         println!("{}: {}", ctx.name(), text?);
///     }
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    node: Node,
    name: Arc<str>,
    active: ChanId,
    passive: ChanId,
    /// The types the hub recorded for the two channels above, once asked: a type never
    /// changes once recorded, so it is asked once.
    own_types: Arc<parking_lot::Mutex<Vec<(ChanId, String)>>>,
    _runtime: Option<Arc<tokio::runtime::Runtime>>,
    /// A remote process's link to the hub runs on a runtime of its own, which user code
    /// cannot block.
    _link: Option<Arc<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Context {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

static CONTEXT: OnceLock<Context> = OnceLock::new();

/// Joins the yukicomm program that started this process, using the environment the
/// supervisor set: `YUKICOMM_NAME`, and `YUKICOMM_FD`, the number of an inherited
/// descriptor already connected to the hub. Without `YUKICOMM_FD`, it connects to the
/// socket at `YUKICOMM_HUB` and presents `YUKICOMM_TOKEN` (see `docs/PROTOCOL.md`).
/// Calling it again returns the same context.
///
/// Once read, the variables are removed from this process's environment, the token's
/// bytes are overwritten where the kernel shows them (`/proc/<pid>/environ`), and the
/// inherited descriptor is made close-on-exec: processes this one starts afterwards get
/// neither. (Processes it started before calling `connect` inherited the descriptor.)
///
/// Passive handlers run on the current tokio runtime if there is one, otherwise on a
/// small runtime the context owns. When the hub goes away, the process exits (status 70):
/// a child never outlives its main process.
///
/// # Errors
///
/// [`ConnectError::NotAChild`] when the variables are missing, or a failure to reach or
/// be accepted by the hub.
pub fn connect() -> Result<Context, ConnectError> {
    if let Some(ctx) = CONTEXT.get() {
        return Ok(ctx.clone());
    }
    let (handle, runtime) = handlers_runtime()?;
    let remote = std::env::var(ENV_HUB).is_ok_and(|hub| hub.starts_with(JOIN_SCHEME));
    let ctx = if remote || std::env::var_os(ENV_JOIN).is_some() {
        let url = var(ENV_HUB)?;
        let token = var(ENV_JOIN)?;
        let mut config = JoinConfig::default();
        if let Some(dir) = std::env::var_os(ENV_STATE_DIR) {
            config.state_dir = dir.into();
        }
        forget_connection_variables();
        join_in(&url, &token, config, handle, runtime)?
    } else {
        connect_with(handle, runtime)?
    };
    match CONTEXT.set(ctx.clone()) {
        Ok(()) => Ok(ctx),
        Err(_) => Err(ConnectError::AlreadyConnected),
    }
}

/// The runtime passive handlers run on: the current one, or a small one of their own.
fn handlers_runtime(
) -> Result<(tokio::runtime::Handle, Option<Arc<tokio::runtime::Runtime>>), ConnectError> {
    Ok(match tokio::runtime::Handle::try_current() {
        Ok(h) => (h, None),
        Err(_) => {
            let rt = small_runtime("yukicomm-handlers")?;
            (rt.handle().clone(), Some(Arc::new(rt)))
        }
    })
}

fn small_runtime(name: &str) -> Result<tokio::runtime::Runtime, ConnectError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|source| ConnectError::Io {
            path: "tokio runtime".into(),
            source,
        })
}

/// Joins, as a remote process, the hub at `url` (`yk://host:port`) that another
/// machine's main process listens on (`App::listen_remote`), with a join token from
/// `MainContext::join_token`. The first time, the token is spent to obtain this
/// process's own certificate, which is kept (see [`JoinConfig::state_dir`]); later runs
/// connect with the certificate, and the token, already used, is only read for the
/// name and the authority it pins. Every connection is TLS 1.3 with mutual
/// authentication.
///
/// The process is then a participant like a local child: its `NAME-active` and
/// `NAME-passive` channels, the registry, the store, publish/subscribe and services.
/// A broken link is resumed within the grace period (30 s by default) with nothing
/// lost or repeated; after it, the hub counts the process as gone, and this side's
/// waiters get [`RecvError::Disconnected`](crate::RecvError::Disconnected). Unlike a
/// supervised child, the process does not exit when the hub goes.
///
/// [`connect`] joins this way when `YUKICOMM_HUB` holds a `yk://` address and
/// `YUKICOMM_JOIN` the token (and `YUKICOMM_STATE_DIR`, if set, the state directory).
///
/// # Errors
///
/// [`ConnectError::Remote`]: a malformed address or token, enrolment refused (token
/// used, expired, or for another name), the hub unreachable or not the one the token
/// pins, the session refused; or [`ConnectError::Refused`] by the hub's hello.
pub fn join(url: &str, token: &str) -> Result<Context, ConnectError> {
    join_with(url, token, JoinConfig::default())
}

/// [`join`] with settings: where the certificate is kept, the heartbeat and grace
/// period, the connection timeout.
///
/// # Errors
///
/// As [`join`].
pub fn join_with(url: &str, token: &str, config: JoinConfig) -> Result<Context, ConnectError> {
    let (handle, runtime) = handlers_runtime()?;
    let ctx = join_in(url, token, config, handle, runtime)?;
    let _ = CONTEXT.set(ctx.clone());
    Ok(ctx)
}

fn join_in(
    url: &str,
    token: &str,
    config: JoinConfig,
    handle: tokio::runtime::Handle,
    runtime: Option<Arc<tokio::runtime::Runtime>>,
) -> Result<Context, ConnectError> {
    let remote_err = |source| ConnectError::Remote {
        url: url.to_string(),
        source,
    };
    let token = yukicomm_remote::token::JoinToken::parse(token).map_err(remote_err)?;
    let link = small_runtime("yukicomm-remote")?;
    // The session is opened on the link's runtime (so that this also works from inside
    // another runtime), and this thread waits for it.
    let (tx, rx) = std::sync::mpsc::channel();
    let (u, t) = (url.to_string(), token.clone());
    link.spawn(async move {
        let _ = tx.send(yukicomm_remote::client::join(&u, &t, config).await);
    });
    let stream = rx
        .recv()
        .map_err(|_| {
            remote_err(yukicomm_remote::RemoteError::Refused(
                "the link's runtime stopped".into(),
            ))
        })?
        .map_err(remote_err)?;
    let (node, welcome) = crate::remote::join(stream, url, &token.name, "", handle, false, false)?;
    if CONTEXT.get().is_none() {
        crate::store::set_current(&node);
    }
    Ok(Context::new(node, welcome, runtime, Some(Arc::new(link))))
}

fn var(name: &'static str) -> Result<String, ConnectError> {
    std::env::var(name).map_err(|_| ConnectError::NotAChild(name))
}

fn connect_with(
    handle: tokio::runtime::Handle,
    runtime: Option<Arc<tokio::runtime::Runtime>>,
) -> Result<Context, ConnectError> {
    let name = var(ENV_NAME)?;
    let (node, welcome) = match std::env::var_os(ENV_FD) {
        Some(fd) => {
            let fd = fd.to_string_lossy().into_owned();
            let label = format!("the descriptor {ENV_FD}={fd}");
            let stream = inherited(&fd).map_err(|source| ConnectError::Io {
                path: label.clone(),
                source,
            })?;
            forget_connection_variables();
            crate::remote::join(stream, &label, &name, "", handle, true, true)?
        }
        None => {
            let path = var(ENV_HUB)?;
            let token = var(ENV_TOKEN)?;
            forget_connection_variables();
            crate::remote::connect(&path, &name, &token, handle, true)?
        }
    };
    crate::store::set_current(&node);
    Ok(Context::new(node, welcome, runtime, None))
}

/// Takes the descriptor named by `YUKICOMM_FD`: checks that it is an open stream socket
/// and makes it close-on-exec.
fn inherited(text: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};
    use rustix::net::{sockopt::socket_type, SocketType};
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    let invalid =
        |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
    let raw: std::os::fd::RawFd = text
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| invalid("not a descriptor number"))?;
    // SAFETY: `raw` is not -1, and the borrow is used only for the two checks below,
    // which fail cleanly (EBADF, ENOTSOCK) if the number is not an open socket.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl_getfd(borrowed)?;
    if socket_type(borrowed)? != SocketType::STREAM {
        return Err(invalid("not a stream socket"));
    }
    // SAFETY: the descriptor is open (checked above), and the supervisor made it for
    // this process to own; nothing else in the process uses it, and the variable naming
    // it is removed right after, so it is taken once.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
    Ok(std::os::unix::net::UnixStream::from(owned))
}

/// Removes the joining variables from this process's environment, so that the
/// processes it starts do not inherit them, after overwriting the token's bytes: the
/// kernel shows the environment a process started with (`/proc/<pid>/environ`), not
/// what removing a variable leaves.
fn forget_connection_variables() {
    for secret in [ENV_TOKEN, ENV_JOIN] {
        // The constants have no NUL byte, so this cannot fail.
        let name = std::ffi::CString::new(secret).expect("a variable name without NUL");
        // SAFETY: getenv returns either null or a pointer to the variable's value, a
        // NUL-terminated string in writable memory (the environment block or a setenv
        // copy); it is overwritten in place, within its length, before the variable is
        // removed. No other thread is expected to read these variables while a process
        // joins.
        unsafe {
            let value = libc::getenv(name.as_ptr());
            if !value.is_null() {
                let len = libc::strlen(value);
                std::ptr::write_bytes(value, b'0', len);
            }
        }
    }
    for var in [
        ENV_FD,
        ENV_HUB,
        ENV_NAME,
        ENV_TOKEN,
        ENV_JOIN,
        ENV_STATE_DIR,
    ] {
        std::env::remove_var(var);
    }
}

impl Context {
    fn new(
        node: Node,
        welcome: crate::remote::Welcome,
        runtime: Option<Arc<tokio::runtime::Runtime>>,
        link: Option<Arc<tokio::runtime::Runtime>>,
    ) -> Context {
        Context {
            node,
            name: Arc::from(welcome.name.as_str()),
            active: welcome.active,
            passive: welcome.passive,
            own_types: Arc::default(),
            _runtime: runtime,
            _link: link,
        }
    }

    /// This child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registry and channel functions (also reachable through `Deref`).
    pub fn node(&self) -> &Node {
        &self.node
    }

    fn own<T>(&self, chan: ChanId, suffix: &str) -> Channel<T> {
        let label = format!("{}-{suffix}", self.name);
        let key = EndRef { chan, end: End::A };
        let expected = std::any::type_name::<T>();
        let cached = self
            .own_types
            .lock()
            .iter()
            .find(|(c, _)| *c == chan)
            .map(|(_, t)| t.clone());
        let (found, granted) = match cached {
            Some(t) => (Some(t), false),
            None => self.look_up_own(key, &label, expected),
        };
        let guard = self.node.acquire(key, granted, Some(&label));
        self.node.pin(&guard);
        let channel = Channel::from_guard(guard);
        match found {
            Some(found) if found != expected => channel.mistyped(&found),
            _ => channel,
        }
    }

    /// Asks the hub for the type of this child's own channel, recording `expected` if
    /// it has none yet, as [`Node::get_channel`] does: the type it carries (if the hub
    /// answered), and whether the hub counted a hold for the answer.
    fn look_up_own(&self, key: EndRef, label: &str, expected: &str) -> (Option<String>, bool) {
        let Ok(transport) = self.node.transport() else {
            return (None, false);
        };
        let request = Request::Lookup {
            name: label.to_string(),
            type_name: expected.to_string(),
        };
        match transport.request(request, self.node.inner.request_timeout) {
            Ok(Reply::Found {
                chan,
                end,
                type_name,
                ..
            }) => {
                let granted = true;
                if (EndRef { chan, end }) != key {
                    // Not this child's own end: hold it as granted, check nothing.
                    drop(self.node.acquire(EndRef { chan, end }, granted, None));
                    return (None, false);
                }
                self.own_types.lock().push((key.chan, type_name.clone()));
                (Some(type_name), granted)
            }
            // The hub is gone or refused: the handle's operations report that.
            _ => (None, false),
        }
    }

    /// This child's end of its `NAME-active` channel (the main process holds the other
    /// end).
    ///
    /// The type is checked as [`get_channel`](Node::get_channel) checks it: the channel
    /// carries the type it was first used with, by this call or by a `get_channel` in
    /// any process (this call asks the hub once per channel). If `T` is another type,
    /// the handle is still returned, so that the call reads as a plain getter, but every
    /// send, receive and `on_receive` on it fails with a `TypeMismatch` error naming the
    /// channel and both types ([`SendError::TypeMismatch`](crate::SendError::TypeMismatch),
    /// [`RecvError::TypeMismatch`](crate::RecvError::TypeMismatch),
    /// [`OnReceiveError::TypeMismatch`](crate::OnReceiveError::TypeMismatch)), and
    /// nothing is sent or taken. If the hub cannot be asked, the handle is returned
    /// unchecked; its operations then report the lost connection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(ctx: &yukicomm_client::Context) {
    /// let active = ctx.active_channel::<String>();
    /// if let Err(e) = active.recv() {
    ///     eprintln!("{e}"); // e.g. channel 'worker-active' carries u32, not alloc::string::String
    /// }
    /// # }
    /// ```
    pub fn active_channel<T: Serialize + DeserializeOwned>(&self) -> Channel<T> {
        self.own(self.active, "active")
    }

    /// This child's end of its `NAME-passive` channel, checked like
    /// [`active_channel`](Context::active_channel).
    pub fn passive_channel<T: Serialize + DeserializeOwned>(&self) -> Channel<T> {
        self.own(self.passive, "passive")
    }

    /// Asks the supervisor to restart this process. The supervisor terminates it soon
    /// after this returns.
    ///
    /// # Errors
    ///
    /// [`ControlError`] if the request did not reach the supervisor.
    pub fn request_restart(&self) -> Result<(), ControlError> {
        self.node.control(ControlAction::Restart, None)
    }

    /// Asks the supervisor to stop this process and not start it again.
    ///
    /// # Errors
    ///
    /// [`ControlError`] if the request did not reach the supervisor.
    pub fn request_stop(&self) -> Result<(), ControlError> {
        self.node.control(ControlAction::Stop, None)
    }
}

#[doc(hidden)]
/// Used by the supervisor's re-executed children, which bring their own runtime.
pub fn connect_in(handle: tokio::runtime::Handle) -> Result<Context, ConnectError> {
    if let Some(ctx) = CONTEXT.get() {
        return Ok(ctx.clone());
    }
    let ctx = connect_with(handle, None)?;
    let _ = CONTEXT.set(ctx.clone());
    Ok(ctx)
}
