//! yukicomm's hub: the router in the main process.
//!
//! The hub owns the channel registry and routes every channel message between
//! processes. It also holds the program's shared key-value store, with publish/subscribe
//! and watches ([`store`]). Each child has one connection to it, over a Unix domain socket in a private
//! directory (mode `0700`), or over a socket pair the supervisor made for it
//! ([`Hub::adopt_child`]); on the socket the hub checks the peer's user id and the
//! child's token before anything else. The main process talks to the hub through direct calls, with no
//! socket in between ([`Hub::local_frames`], [`Hub::local_request`]).
//!
//! The channel state lives in [`router`] behind one mutex, and the store in [`store`]
//! behind another (never held together), each held only for short non-blocking
//! sections; frames produced while one is held are written after it is released. Frames
//! for the main process's own ends are queued, in order, while the lock is held and
//! handed to it after the lock is released: no main-process code (and so no user code)
//! ever runs under a hub lock, and it may enter the hub again from there.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use yukicomm_hub::{Hub, HubConfig};
//! let hub = Hub::bind(HubConfig::default())?;
//! println!("children connect to {}", hub.socket_path().display());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod conn;
pub mod discovery;
mod observe;
pub mod resp;
pub mod router;
mod stats;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use yukicomm_wire::{ChanId, End, EndRef, Frame, ProcessName, Reply, Request};

use store::Store;
pub use store::{Clock, Fsync, ManualClock, StoreConfig};
use yukicomm_wire::store::{Op, OpReply};

mod config;
mod core;
mod dir;
mod services;
pub use services::{MAX_WAITING_BYTES, MAX_WAITING_CALLS};

use router::Router;
pub use router::{ConnId, HubEvent, LOCAL};

use crate::core::{First, Inner, LocalQueue};
use dir::private_dir;

pub use resp::RedisConfig;

pub use config::{HubConfig, DEFAULT_WINDOW_BYTES, ENV_MONITOR};
pub use observe::{BUFFER as TAP_BUFFER, HEAD as TAP_HEAD, SAMPLES_PER_TICK};
pub use stats::ProcessInfo;

/// Receives the frames the hub sends to the main process, a run at a time.
pub type LocalSink = Arc<dyn Fn(&mut dyn Iterator<Item = Frame>) + Send + Sync>;

/// The hub. Dropping it stops accepting connections and removes its socket.
pub struct Hub {
    inner: Arc<Inner>,
    dir: PathBuf,
    socket: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    tapper: tokio::task::JoinHandle<()>,
    events: Mutex<Option<mpsc::UnboundedReceiver<HubEvent>>>,
    /// This hub's advertisement for the `yukicomm` command, removed at shutdown.
    advert: Option<PathBuf>,
    /// The Redis protocol endpoint, if configured.
    redis: Mutex<Option<resp::Running>>,
    redis_unix: Option<PathBuf>,
    redis_tcp: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Makes the private socket directory, listens, and starts accepting children.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// If the directory or the socket cannot be created, or the store's journal cannot
    /// be opened.
    pub fn bind(config: HubConfig) -> std::io::Result<Hub> {
        let store = Store::open(config.store.clone())?;
        let dir = private_dir(config.socket_parent.clone())?;
        let socket = dir.join("hub.sock");
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            pumping: std::sync::atomic::AtomicBool::new(false),
            pump_wake: yukicomm_link::sys::pipe()?,
            router: Mutex::new(Router::new(config.window, config.window_bytes)),
            local_queue: Mutex::new(LocalQueue::default()),
            local_handed: parking_lot::Condvar::new(),
            store: Mutex::new(store),
            conns: RwLock::new(FxHashMap::default()),
            subscribers: RwLock::new(FxHashMap::default()),
            local: OnceLock::new(),
            events: tx,
            next_conn: AtomicU64::new(1),
            max_frame: config.max_frame,
            max_unread: config.max_unread,
            shared_memory: config.shared_memory,
            local_traffic: Default::default(),
            tap: observe::Tap::new(config.monitor_allowed()),
            process_info: OnceLock::new(),
            started: std::time::Instant::now(),
        });
        let redis_config = match config.redis.clone() {
            Some(c) => Some(c),
            None => resp::RedisConfig::from_env()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        };
        let redis = match redis_config {
            Some(c) => Some(resp::start(c, inner.clone(), &dir).inspect_err(|_| {
                let _ = std::fs::remove_file(&socket);
                let _ = std::fs::remove_dir(&dir);
            })?),
            None => None,
        };
        let redis_unix = redis.as_ref().and_then(|r| r.unix.clone());
        let redis_tcp = redis.as_ref().and_then(|r| r.tcp);
        let accept_inner = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        conn::accept(accept_inner.clone(), stream);
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let sweep_inner = inner.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 1u64.. {
                tick.tick().await;
                sweep_inner.with_store(|s, out| s.sweep(out));
                if n % 10 == 0 {
                    sweep_inner.sample_rates();
                }
            }
        });
        let tapper = tokio::spawn(observe::drain(inner.clone()));
        let advert = if config.advertise {
            let tag = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit('-').next())
                .unwrap_or("0")
                .to_string();
            match discovery::advertise(&socket, &tag) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("cannot advertise the hub for the yukicomm command: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Hub {
            inner,
            dir,
            socket,
            accept,
            sweeper,
            tapper,
            events: Mutex::new(Some(rx)),
            advert,
            redis: Mutex::new(redis),
            redis_unix,
            redis_tcp,
        })
    }

    /// The socket children connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The Unix socket of the Redis protocol endpoint, if it has one
    /// (`redis-cli -s PATH`).
    pub fn redis_socket_path(&self) -> Option<&Path> {
        self.redis_unix.as_deref()
    }

    /// The TCP address of the Redis protocol endpoint, if it has one (with the port
    /// chosen, when port 0 was asked for).
    pub fn redis_addr(&self) -> Option<std::net::SocketAddr> {
        self.redis_tcp
    }

    /// The largest frame the hub accepts.
    pub fn max_frame(&self) -> u32 {
        self.inner.max_frame
    }

    /// The credit window, in messages.
    pub fn window(&self) -> u32 {
        self.inner.router.lock().window()
    }

    /// The credit window, in bytes.
    pub fn window_bytes(&self) -> u64 {
        self.inner.router.lock().window_bytes()
    }

    /// Installs what the supervisor reports about its children in statistics. Only the
    /// first call has an effect.
    pub fn set_process_info(&self, info: ProcessInfo) {
        let _ = self.inner.process_info.set(info);
    }

    /// The report an observer gets (`yukicomm status --json` prints it).
    pub fn stats(&self) -> yukicomm_wire::stats::Stats {
        self.inner.stats()
    }

    /// Events for the supervisor. Can be taken once.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<HubEvent>> {
        self.events.lock().take()
    }

    /// Installs the main process's frame receiver. Only the first call has an effect.
    pub fn set_local(&self, sink: LocalSink) {
        let _ = self.inner.local.set(sink);
    }

    /// Announces a child (creating its `NAME-active` and `NAME-passive` channels) and
    /// returns a fresh token for its next start. Each token admits one connection.
    pub fn admit_child(&self, name: &ProcessName) -> String {
        let token: String = {
            let mut rng = rand::thread_rng();
            (0..32)
                .map(|_| format!("{:x}", rng.gen::<u8>() & 0xf))
                .collect()
        };
        let t = token.clone();
        self.inner.with_router(move |r, _| {
            if r.children.contains_key(name.as_str()) {
                r.set_token(name.as_str(), t);
            } else {
                r.add_child(name, t);
            }
        });
        token
    }

    /// Announces a process that joins from another machine, as
    /// [`admit_child`](Hub::admit_child) does for a child, except that nobody here starts
    /// or stops it: control requests (restart, stop) for it are refused.
    pub fn admit_remote(&self, name: &ProcessName) {
        self.admit_child(name);
        self.inner.with_router(|r, _| {
            if let Some(c) = r.children.get_mut(name.as_str()) {
                c.remote = true;
            }
        });
    }

    /// Makes a connection for the next start of a child and returns the child's end:
    /// a connected Unix stream socket (close-on-exec, blocking) for the supervisor to
    /// hand to the child as an inherited descriptor. The hub serves the other end as it
    /// serves accepted connections, except that the hello on it needs no token: it must
    /// name this child, and then admits it as [`admit_child`](Hub::admit_child)'s token
    /// would. That token is made here and never leaves the hub, so the socket path
    /// admits nobody for this child any more. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// When the socket pair cannot be made or set up.
    pub fn adopt_child(
        &self,
        name: &ProcessName,
    ) -> std::io::Result<std::os::unix::net::UnixStream> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let token = self.admit_child(name);
        let remote = self
            .inner
            .router
            .lock()
            .children
            .get(name.as_str())
            .is_some_and(|c| c.remote);
        conn::adopt(
            self.inner.clone(),
            ours,
            conn::Admission {
                name: name.as_str().to_string(),
                token,
                shared_memory: !remote,
            },
        )?;
        Ok(theirs)
    }

    /// The `NAME-active` and `NAME-passive` channels of a child.
    pub fn child_channels(&self, name: &str) -> Option<(ChanId, ChanId)> {
        self.inner
            .router
            .lock()
            .children
            .get(name)
            .map(|c| (c.active, c.passive))
    }

    /// Tells the hub a child will not be started again (stopped, failed, or not to be
    /// restarted). Until then, the child's own channels stay connected across the death
    /// of its process, and their receivers wait for the next one.
    pub fn child_gone(&self, name: &str) {
        self.inner.with_router(|r, out| r.child_gone(name, out));
    }

    /// Tells the hub a child's process could not be started: as
    /// [`child_gone`](Hub::child_gone), even if a restart was requested.
    pub fn child_failed(&self, name: &str) {
        self.inner.with_router(|r, out| {
            if let Some(c) = r.children.get_mut(name) {
                c.restart_requested = false;
            }
            r.child_gone(name, out)
        });
    }

    /// Closes a child's connection, if it has one.
    pub fn disconnect_child(&self, name: &str) {
        let conn = self
            .inner
            .router
            .lock()
            .children
            .get(name)
            .and_then(|c| c.conn);
        if let Some(id) = conn {
            if let Some(c) = self.inner.conns.read().get(&id).cloned() {
                c.shut();
            }
        }
    }

    /// Sends a message from the main process, already encoded (so that no user code
    /// runs while the router is locked). When nothing is queued ahead of it and a child
    /// receives at `to` with credit, the message goes straight into that child's
    /// connection buffer; otherwise it is routed like any other.
    pub fn local_send(&self, chan: ChanId, to: End, body: bytes::Bytes, carried: Vec<EndRef>) {
        self.inner.local_traffic.add_in(1, body.len() as u64);
        if self.inner.tap.active() {
            self.inner.tap.offer_msg(chan, to, &body);
        }
        let m = yukicomm_wire::Msg {
            chan,
            to,
            carried,
            body,
        };
        self.inner.with_router_then(|r, out| {
            let direct = r
                .direct_target(LOCAL, chan, to)
                .filter(|_| m.carried.iter().all(|&k| r.holds_end(LOCAL, k)))
                .and_then(|target| Some((target, self.inner.conns.read().get(&target).cloned()?)));
            if let Some((target, conn)) = direct {
                if conn.append_msg(&m) {
                    r.delivered_direct(LOCAL, &m, target, out);
                    return ((), Some(First::Kick(conn)));
                }
                // The connection is broken: let the ordinary path deal with it.
            }
            if let Err(e) = r.frame(LOCAL, Frame::Msg(m), out) {
                tracing::error!("the main process broke the protocol: {e}");
            }
            ((), None)
        })
    }

    /// Frames from the main process (messages, credit, notices).
    pub fn local_frames(&self, frames: impl IntoIterator<Item = Frame>) {
        self.inner.local_frames(frames.into_iter().collect());
    }

    /// A request from the main process, answered at once.
    pub fn local_request(&self, request: Request) -> Reply {
        self.inner.local_request(request)
    }

    /// A call from the main process to a service. Returns the connection of the process
    /// it went to, if it went to another process at once (its caller may then wait with
    /// [`Hub::pump_conn`]).
    pub fn local_call(&self, call: yukicomm_wire::call::Call) -> Option<ConnId> {
        self.inner
            .with_router(|r, out| r.local_call(call, out))
            .filter(|&c| c != LOCAL)
    }

    /// Lets a thread of the main process that is about to block receiving at `key` read,
    /// itself, the connection of the child that last sent there, until `ready` holds or
    /// `deadline` passes: no hand-off to another thread on the way to it. `None` when
    /// there is no such connection or another reader holds it: wait on the queue.
    pub fn pump(
        &self,
        key: yukicomm_wire::EndRef,
        ready: &dyn Fn() -> bool,
        deadline: Option<std::time::Instant>,
    ) -> Option<bool> {
        let id = self.inner.router.lock().last_sender(key)?;
        self.pump_conn(id, ready, deadline)
    }

    /// Lets a thread of the main process that waits for something from the process at
    /// connection `id` read that connection itself, until `ready` holds or `deadline`
    /// passes; as [`Hub::pump`].
    pub fn pump_conn(
        &self,
        id: ConnId,
        ready: &dyn Fn() -> bool,
        deadline: Option<std::time::Instant>,
    ) -> Option<bool> {
        if id == LOCAL {
            return None;
        }
        let conn = self.inner.conns.read().get(&id).cloned()?;
        match conn.pump(&self.inner, ready, deadline) {
            yukicomm_link::reader::Pumped::Ready => Some(true),
            yukicomm_link::reader::Pumped::Timeout => Some(false),
            _ => None,
        }
    }

    /// An operation on the shared store from the main process, applied at once.
    pub fn store_op(&self, op: Op) -> OpReply {
        if self.inner.tap.active() {
            self.inner.tap.offer_op(LOCAL, &op);
        }
        self.inner
            .with_store(|s, out| s.apply(LOCAL, op, out).to_owned_reply())
    }

    /// Stops accepting connections, closes every child connection, and removes the
    /// socket and its directory.
    pub fn shutdown(&self) {
        self.accept.abort();
        self.sweeper.abort();
        self.tapper.abort();
        if let Some(mut r) = self.redis.lock().take() {
            r.shutdown();
        }
        if let Some(f) = &self.advert {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
        let conns: Vec<_> = self.inner.conns.read().values().cloned().collect();
        for c in conns {
            c.shut();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown();
    }
}
