//! [`Context`]: what a child process gets: its name, its own two channels, the registry,
//! and a way to ask the supervisor to restart or stop it.

use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use yukicomm_wire::{ChanId, ControlAction, End, EndRef, ENV_HUB, ENV_NAME, ENV_TOKEN};

use crate::channel::Channel;
use crate::error::{ConnectError, ControlError};
use crate::node::Node;

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
    _runtime: Option<Arc<tokio::runtime::Runtime>>,
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
/// supervisor set (`YUKICOMM_HUB`, `YUKICOMM_NAME`, `YUKICOMM_TOKEN`). Calling it again
/// returns the same context.
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
    let (handle, runtime) = match tokio::runtime::Handle::try_current() {
        Ok(h) => (h, None),
        Err(_) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("yukicomm-handlers")
                .enable_all()
                .build()
                .map_err(|source| ConnectError::Io {
                    path: "tokio runtime".into(),
                    source,
                })?;
            (rt.handle().clone(), Some(Arc::new(rt)))
        }
    };
    let ctx = connect_with(handle, runtime)?;
    match CONTEXT.set(ctx.clone()) {
        Ok(()) => Ok(ctx),
        Err(_) => Err(ConnectError::AlreadyConnected),
    }
}

fn var(name: &'static str) -> Result<String, ConnectError> {
    std::env::var(name).map_err(|_| ConnectError::NotAChild(name))
}

fn connect_with(
    handle: tokio::runtime::Handle,
    runtime: Option<Arc<tokio::runtime::Runtime>>,
) -> Result<Context, ConnectError> {
    let path = var(ENV_HUB)?;
    let name = var(ENV_NAME)?;
    let token = var(ENV_TOKEN)?;
    let (node, welcome) = crate::remote::connect(&path, &name, &token, handle, true)?;
    crate::store::set_current(&node);
    Ok(Context {
        node,
        name: Arc::from(welcome.name.as_str()),
        active: welcome.active,
        passive: welcome.passive,
        _runtime: runtime,
    })
}

impl Context {
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
        let guard = self
            .node
            .acquire(EndRef { chan, end: End::A }, false, Some(&label));
        self.node.pin(&guard);
        Channel::from_guard(guard)
    }

    /// This child's end of its `NAME-active` channel (the main process holds the other
    /// end). The type is not checked against the main process's; a message that does not
    /// decode as `T` is reported by the receive that meets it.
    pub fn active_channel<T: Serialize + DeserializeOwned>(&self) -> Channel<T> {
        self.own(self.active, "active")
    }

    /// This child's end of its `NAME-passive` channel.
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
