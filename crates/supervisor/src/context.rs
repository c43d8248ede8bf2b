//! [`MainContext`]: what the main process's hooks get.

use std::sync::Arc;

use tokio::sync::mpsc;
use yukicomm_client::{ControlError, Node, TokenError};

/// The main process's handle: the registry (through `Deref` to [`Node`]) and control of
/// the children.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(ctx: yukicomm_supervisor::MainContext) -> yukicomm_client::Result<()> {
/// let active = ctx.get_channel::<String>("nonebot-active")?;
/// active.send("hello".to_string())?;
/// ctx.restart_process("nonebot")?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MainContext {
    pub(crate) node: Node,
    pub(crate) children: Arc<Vec<String>>,
    pub(crate) shutdown: mpsc::UnboundedSender<()>,
    pub(crate) socket: Arc<std::path::Path>,
    pub(crate) remote: Option<Arc<crate::remote::Endpoint>>,
    pub(crate) redis_socket: Option<Arc<std::path::Path>>,
    pub(crate) redis_addr: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for MainContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainContext")
            .field("children", &self.children)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for MainContext {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl MainContext {
    /// The registry and channel functions (also reachable through `Deref`).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The hub's socket, for processes that join on their own (see `docs/PROTOCOL.md`).
    pub fn socket_path(&self) -> &std::path::Path {
        &self.socket
    }

    /// The Unix socket of the Redis protocol endpoint ([`App::redis`](crate::App::redis)),
    /// if it has one: `redis-cli -s PATH`.
    pub fn redis_socket_path(&self) -> Option<&std::path::Path> {
        self.redis_socket.as_deref()
    }

    /// The TCP address of the Redis protocol endpoint, if it has one.
    pub fn redis_addr(&self) -> Option<std::net::SocketAddr> {
        self.redis_addr
    }

    /// The names of every child, in the order they were added.
    pub fn children(&self) -> &[String] {
        &self.children
    }

    /// Restarts every child.
    ///
    /// # Errors
    ///
    /// The first [`ControlError`] met; the other children are still restarted.
    pub fn restart_all(&self) -> Result<(), ControlError> {
        let mut first = Ok(());
        for name in self.children.iter() {
            if let Err(e) = self.node.restart_process(name) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// A join token for a remote process named `name`, valid once, for `ttl`. Give it
    /// to the process (`YUKICOMM_JOIN=...` or `yukicomm::join(url, token)`); with it, the
    /// process obtains its own certificate and joins. The token names the process and
    /// pins this deployment's authority; treat it as a secret (it is never logged).
    ///
    /// # Errors
    ///
    /// [`TokenError`] when this main process does not listen for remote processes
    /// ([`App::listen_remote`](crate::App::listen_remote)), when `name` is not a valid
    /// process name, or when a child of this main process has it.
    pub fn join_token(&self, name: &str, ttl: std::time::Duration) -> Result<String, TokenError> {
        match &self.remote {
            Some(endpoint) => endpoint.join_token(name, ttl),
            None => Err(TokenError::NotListening {
                name: name.to_string(),
            }),
        }
    }

    /// The address remote processes join at (`yk://` and this), if this main process
    /// listens for them: with the port the system chose if the one given was 0.
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.remote.as_ref().map(|e| e.local_addr())
    }

    /// Asks the whole program to shut down in order: every child is stopped (with its
    /// hooks), then the `on_after_shutdown` hooks run and `App::run` returns.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(());
    }
}
