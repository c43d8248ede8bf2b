//! The main process's endpoint for processes on other machines ([`App::listen_remote`]):
//! the deployment's authority, the join tokens it issues, and the listener whose
//! sessions the hub serves as it serves a local child's connection.
//!
//! [`App::listen_remote`]: crate::App::listen_remote

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use yukicomm_client::TokenError;
use yukicomm_hub::Hub;
use yukicomm_remote::authority::Authority;
use yukicomm_remote::server::{Host, ListenConfig, Listener};
use yukicomm_remote::token::Tokens;
use yukicomm_wire::ProcessName;

use crate::status::Board;

/// How the main process listens for processes on other machines: set with
/// [`App::listen_remote`](crate::App::listen_remote), which gives the address.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub(crate) addr: String,
    state_dir: Option<PathBuf>,
    authority: Option<(PathBuf, PathBuf)>,
    listen: ListenConfig,
}

impl RemoteOptions {
    pub(crate) fn new(addr: String) -> RemoteOptions {
        RemoteOptions {
            addr,
            state_dir: None,
            authority: None,
            listen: ListenConfig::default(),
        }
    }

    /// Where the deployment's authority is kept (created, mode `0700`, on first use).
    /// By default `$XDG_STATE_HOME/yukicomm/hub` (or `~/.local/state/yukicomm/hub`).
    pub fn state_dir(&mut self, dir: impl Into<PathBuf>) -> &mut RemoteOptions {
        self.state_dir = Some(dir.into());
        self
    }

    /// Uses the authority of `cert` and `key` (PEM files) instead of the one in the state
    /// directory.
    pub fn authority(
        &mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> &mut RemoteOptions {
        self.authority = Some((cert.into(), key.into()));
        self
    }

    /// A link on which nothing arrives for this long is broken (3 s by default; pings
    /// go every quarter of it). Remote processes should use the same.
    pub fn heartbeat(&mut self, heartbeat: Duration) -> &mut RemoteOptions {
        self.listen.session.heartbeat = heartbeat;
        self
    }

    /// How long a remote process without a link is waited for before it counts as gone
    /// (30 s by default). Remote processes should use the same.
    pub fn grace(&mut self, grace: Duration) -> &mut RemoteOptions {
        self.listen.session.grace = grace;
        self
    }

    /// A connection that has not finished its TLS handshake and opening in this time is
    /// closed (10 s by default).
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut RemoteOptions {
        self.listen.handshake_timeout = timeout;
        self
    }

    /// Most remote processes at once (1024 by default).
    pub fn max_processes(&mut self, max: usize) -> &mut RemoteOptions {
        self.listen.max_sessions = max;
        self
    }
}

/// The running endpoint, shared by the main context.
pub(crate) struct Endpoint {
    hub: Arc<Hub>,
    authority: Arc<Authority>,
    tokens: Arc<Tokens>,
    children: Arc<HashSet<String>>,
    listener: Listener,
}

impl Endpoint {
    /// Starts listening as `options` say.
    pub(crate) async fn start(
        options: &RemoteOptions,
        hub: Arc<Hub>,
        board: Arc<Board>,
        children: Arc<HashSet<String>>,
    ) -> Result<Endpoint, String> {
        let addr: SocketAddr = tokio::net::lookup_host(&options.addr)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("'{}' is not an address to listen on", options.addr))?;
        let authority = match &options.authority {
            Some((cert, key)) => Authority::from_files(cert, key),
            None => Authority::open(
                &options
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| yukicomm_remote::authority::default_state_dir("hub")),
            ),
        }
        .map_err(|e| e.to_string())?;
        let authority = Arc::new(authority);
        let tokens = Arc::new(Tokens::default());
        let host = Arc::new(RemoteHost {
            hub: hub.clone(),
            board,
            children: children.clone(),
        });
        let listener = Listener::bind(
            addr,
            authority.clone(),
            tokens.clone(),
            host,
            options.listen,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Endpoint {
            hub,
            authority,
            tokens,
            children,
            listener,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Stops listening; waits up to `within` for the sessions to end.
    pub(crate) async fn close(self, within: Duration) {
        self.listener.close(within).await;
    }

    /// A token for `name`. The hub expects the process from then on: its two channels
    /// exist, and what is sent to them waits for it (within the channels' windows).
    pub(crate) fn join_token(&self, name: &str, ttl: Duration) -> Result<String, TokenError> {
        let process = ProcessName::new(name).map_err(|e| TokenError::BadName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        if self.children.contains(name) {
            return Err(TokenError::ChildName {
                name: name.to_string(),
            });
        }
        if self.hub.child_channels(name).is_none() {
            self.hub.admit_remote(&process);
        }
        Ok(self
            .tokens
            .issue(name, ttl, &self.authority.fingerprint())
            .text())
    }
}

/// Sessions become the hub's connections.
struct RemoteHost {
    hub: Arc<Hub>,
    board: Arc<Board>,
    children: Arc<HashSet<String>>,
}

impl Host for RemoteHost {
    fn open(&self, name: &str) -> Result<std::os::unix::net::UnixStream, String> {
        if self.children.contains(name) {
            return Err(format!("'{name}' is a child of this main process"));
        }
        let process = ProcessName::new(name).map_err(|e| format!("'{name}': {e}"))?;
        self.hub.admit_remote(&process);
        let stream = self
            .hub
            .adopt_child(&process)
            .map_err(|e| format!("cannot make a connection for '{name}': {e}"))?;
        self.board.remote_joined(name);
        Ok(stream)
    }

    fn closed(&self, name: &str) {
        self.hub.child_gone(name);
        self.board.remote_left(name);
    }
}
