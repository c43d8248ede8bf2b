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
pub mod router;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use yukicomm_wire::{ChanId, End, EndRef, Frame, ProcessName, Reply, Request, DEFAULT_MAX_FRAME};

use conn::Conn;
use store::Store;
pub use store::{Clock, Fsync, ManualClock, StoreConfig};
use yukicomm_wire::store::{Op, OpReply};

thread_local! {
    /// The buffer a run of store replies is encoded into (reused).
    static REPLIES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Buffers `with_router` reuses.
    static SCRATCH: std::cell::RefCell<(Vec<Out>, Vec<Arc<Conn>>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}
pub use router::{ConnId, HubEvent, LOCAL};
use router::{Out, Router};

/// The default of [`HubConfig::window_bytes`]: 32 MiB.
pub const DEFAULT_WINDOW_BYTES: u64 = 32 << 20;

/// Settings of a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Credit window per channel end, in messages: the most messages a process may have
    /// in flight from one end, and the most a receiving process buffers for one end.
    /// Default 4096.
    ///
    /// A sender that has used up its window waits for credit, which comes back in
    /// batches of half a window; a smaller window means more of those waits in a
    /// stream of small messages (1024 costs about a fifth of the throughput of 64-byte
    /// messages here).
    pub window: u32,
    /// Credit window per channel end, in bytes of message bodies. Default 32 MiB.
    ///
    /// A process may send from an end only while fewer than this many bytes it sent
    /// from there are undelivered, and the hub delivers to a receiving process only
    /// while fewer than this many bytes wait there unread. So one sending process holds
    /// at most `window_bytes` plus one message in the hub per channel end (also while
    /// the receiver is a child being restarted, or stopped), and a receiving process
    /// buffers at most as much per end. What happens when a sender's window is used up
    /// is the channel's `FullPolicy`: wait, or fail at once.
    pub window_bytes: u64,
    /// Largest frame accepted, in bytes. Default 16 MiB. A larger frame closes the
    /// connection that sent it.
    pub max_frame: u32,
    /// Directory in which the private socket directory is made. Default:
    /// `$XDG_RUNTIME_DIR`, else the system temporary directory. The hub removes the
    /// directory when it shuts down; at start, it also removes the ones left there by
    /// main processes that were killed (their process gone, their socket dead).
    pub socket_parent: Option<PathBuf>,
    /// Bytes that may wait in the hub to be written to one process before the hub
    /// gives up on it and closes its connection. Default 256 MiB.
    ///
    /// Credit bounds what the hub sends a process that reads its connection; a process
    /// that stops reading it while others keep sending to it, or keeps making requests
    /// without reading the replies, reaches this and is disconnected (its channels see
    /// it leave, as when it dies) instead of growing the main process's memory.
    pub max_unread: usize,
    /// The shared store's settings.
    pub store: StoreConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            window: 4096,
            window_bytes: DEFAULT_WINDOW_BYTES,
            max_frame: DEFAULT_MAX_FRAME,
            socket_parent: None,
            max_unread: 256 << 20,
            store: StoreConfig::default(),
        }
    }
}

/// What `with_router_then` does with a connection after routing.
enum First {
    /// Append this frame before anything else routed, then write.
    Frame(Arc<Conn>, Frame),
    /// Write what was appended.
    Kick(Arc<Conn>),
}

/// Receives the frames the hub sends to the main process, a run at a time.
pub type LocalSink = Arc<dyn Fn(&mut dyn Iterator<Item = Frame>) + Send + Sync>;

/// Frames for the main process, queued in the order the router and the store produced
/// them (under their locks) and handed to it after those locks are released, by one
/// thread at a time, so that they arrive in that order and no main-process code runs
/// under a hub lock.
///
/// A thread that queued frames returns only once they are handed over (by itself, or
/// by the thread handing over at the time, which it waits for), so that a call into the
/// hub has had its effects on the main process's ends when it returns, as if they were
/// applied under the lock. The one exception is a call made by the handing-over thread
/// itself, from what it hands over: its frames follow as soon as that returns.
#[derive(Default)]
struct LocalQueue {
    frames: Vec<Frame>,
    /// Frames ever queued, and ever handed over.
    queued: u64,
    handed: u64,
    /// The thread handing frames over, if any.
    drainer: Option<std::thread::ThreadId>,
}

impl LocalQueue {
    /// Queues `frames`; returns the count to wait for.
    fn push(&mut self, frames: impl Iterator<Item = Frame>) -> u64 {
        let before = self.frames.len();
        self.frames.extend(frames);
        self.queued += (self.frames.len() - before) as u64;
        self.queued
    }
}

pub(crate) struct Inner {
    /// Set while a thread of the main process reads a connection itself (one at a time;
    /// see `Conn::pump`).
    pub(crate) pumping: std::sync::atomic::AtomicBool,
    /// Wakes that thread when something reaches the main process another way.
    pub(crate) pump_wake: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    router: Mutex<Router>,
    /// The shared store. Never locked together with `router`.
    store: Mutex<Store>,
    /// What waits to be handed to the main process. Locked last, briefly.
    local_queue: Mutex<LocalQueue>,
    /// Signalled whenever frames were handed over.
    local_handed: parking_lot::Condvar,
    conns: RwLock<FxHashMap<ConnId, Arc<Conn>>>,
    local: OnceLock<LocalSink>,
    events: mpsc::UnboundedSender<HubEvent>,
    next_conn: AtomicU64,
    pub(crate) max_frame: u32,
    pub(crate) max_unread: usize,
}

impl Inner {
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `f` on the router and hands what it produced to the connections (and to
    /// the main process's queue) while the lock is still held, so that frames reach
    /// each connection in the order the router decided; socket writes, and the
    /// main process's frames, are handed over after the lock is released.
    fn with_router<R>(&self, f: impl FnOnce(&mut Router, &mut Vec<Out>) -> R) -> R {
        self.with_router_then(|r, out| (f(r, out), None))
    }

    /// As `with_router`; `f` may also return a connection and a first frame for it (the
    /// welcome), which then precede anything else sent to it, or a connection that it
    /// appended to itself, to be written after the lock is released.
    fn with_router_then<R>(
        &self,
        f: impl FnOnce(&mut Router, &mut Vec<Out>) -> (R, Option<First>),
    ) -> R {
        // Reused buffers: this runs for every batch of frames.
        let (mut out, mut kicks) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let (result, events, local) = {
            let mut router = self.router.lock();
            let (r, first) = f(&mut router, &mut out);
            match first {
                Some(First::Frame(conn, frame)) => {
                    conn.append_all(std::iter::once(&frame));
                    kicks.push(conn);
                }
                Some(First::Kick(conn)) => kicks.push(conn),
                None => {}
            }
            let events = std::mem::take(&mut router.events);
            let local = self.hand_over(&mut out, &mut kicks);
            (r, events, local)
        };
        for c in kicks.drain(..) {
            c.kick();
        }
        SCRATCH.with(|s| *s.borrow_mut() = (out, kicks));
        for e in events {
            let _ = self.events.send(e);
        }
        if let Some(upto) = local {
            self.deliver_local(upto);
        }
        result
    }

    /// Hands what is queued for the main process to it, in order, until the first
    /// `upto` frames ever queued are handed over; waits while another thread hands them
    /// over. Runs with no hub lock held: what the main process does with a frame
    /// (release a handle, send) may enter the hub again.
    fn deliver_local(&self, upto: u64) {
        let me = std::thread::current().id();
        let mut q = self.local_queue.lock();
        loop {
            if q.handed >= upto || q.drainer == Some(me) {
                // Handed over; or queued from what this thread is handing over, which
                // it hands over next.
                return;
            }
            if q.drainer.is_none() {
                break;
            }
            self.local_handed.wait(&mut q);
        }
        q.drainer = Some(me);
        /// Lets another thread hand over if this one panics while the queue is unlocked.
        struct Drainer<'a>(&'a Inner);
        impl Drop for Drainer<'_> {
            fn drop(&mut self) {
                self.0.local_queue.lock().drainer = None;
                self.0.local_handed.notify_all();
            }
        }
        let mut batch = Vec::new();
        while !q.frames.is_empty() {
            std::mem::swap(&mut q.frames, &mut batch);
            drop(q);
            let n = batch.len() as u64;
            let unwinding = Drainer(self);
            match self.local.get() {
                Some(local) => local(&mut batch.drain(..)),
                None => batch.clear(),
            }
            std::mem::forget(unwinding);
            if self.pumping.load(Ordering::SeqCst) && !conn::IS_PUMPING.with(|p| p.get()) {
                yukicomm_link::sys::poke(&self.pump_wake.1);
            }
            q = self.local_queue.lock();
            q.handed += n;
            self.local_handed.notify_all();
        }
        q.drainer = None;
        drop(q);
        self.local_handed.notify_all();
    }

    /// Appends frames to their connections, and moves the main process's own to its
    /// queue (`out` is left empty), returning the count to wait for if there were any;
    /// called with the router locked.
    fn hand_over(&self, out: &mut Vec<Out>, kicks: &mut Vec<Arc<Conn>>) -> Option<u64> {
        if out.is_empty() {
            return None;
        }
        let mut local = 0;
        {
            let conns = self.conns.read();
            let mut i = 0;
            while i < out.len() {
                let target = out[i].0;
                let mut j = i + 1;
                while j < out.len() && out[j].0 == target {
                    j += 1;
                }
                if target == LOCAL {
                    local += j - i;
                } else if let Some(c) = conns.get(&target) {
                    c.append_all(out[i..j].iter().map(|(_, f)| f));
                    if !kicks.iter().any(|k| Arc::ptr_eq(k, c)) {
                        kicks.push(c.clone());
                    }
                }
                i = j;
            }
        }
        if local == 0 {
            out.clear();
            return None;
        }
        let mut q = self.local_queue.lock();
        q.frames.reserve(local);
        Some(
            q.push(
                out.drain(..)
                    .filter_map(|(target, f)| (target == LOCAL).then_some(f)),
            ),
        )
    }

    /// Frames from the main process.
    fn local_frames(&self, frames: Vec<Frame>) {
        self.with_router(|r, out| {
            for f in frames {
                if let Err(e) = r.frame(LOCAL, f, out) {
                    tracing::error!("the main process broke the protocol: {e}");
                }
            }
        });
    }

    /// A child said hello: check it and register its connection.
    pub(crate) fn accept(
        &self,
        conn: Arc<Conn>,
        req_id: u32,
        version: u32,
        name: &str,
        token: &str,
    ) -> bool {
        let id = conn.id;
        let outcome = self.with_router_then(|router, out| {
            match router.hello(id, version, name, token, self.max_frame, out) {
                Ok((welcome, old)) => {
                    let old = {
                        let mut conns = self.conns.write();
                        conns.insert(id, conn.clone());
                        old.and_then(|o| conns.remove(&o))
                    };
                    let first = Frame::Reply {
                        id: req_id,
                        body: welcome,
                    };
                    (Ok(old), Some(First::Frame(conn.clone(), first)))
                }
                Err(refusal) => {
                    let first = Frame::Reply {
                        id: req_id,
                        body: refusal.clone(),
                    };
                    (Err(refusal), Some(First::Frame(conn.clone(), first)))
                }
            }
        });
        match outcome {
            Ok(old) => {
                if let Some(o) = old {
                    o.shut();
                }
                true
            }
            Err(refusal) => {
                tracing::warn!(
                    child = %yukicomm_wire::abbreviate(name),
                    "refused a connection: {refusal:?}"
                );
                false
            }
        }
    }

    /// Frames from a connection, in order: channel frames under the router's lock,
    /// store operations under the store's, one lock per run (`frames` is left empty).
    pub(crate) fn frames(&self, id: ConnId, frames: &mut Vec<Frame>) -> Result<(), String> {
        let mut rest = frames.drain(..).peekable();
        while let Some(first) = rest.peek() {
            if matches!(first, Frame::Op { .. }) {
                let mut ops =
                    std::iter::from_fn(|| rest.next_if(|f| matches!(f, Frame::Op { .. })));
                // The replies of a run go to the connection in one append.
                let mut replies = REPLIES.with(|r| std::mem::take(&mut *r.borrow_mut()));
                self.with_store(|store, out| {
                    for f in &mut ops {
                        if let Frame::Op {
                            id: op_id,
                            quiet,
                            op,
                        } = f
                        {
                            // Credit is never answered.
                            let quiet = quiet || matches!(op, Op::Credit { .. });
                            let answer = store.apply(id, op, out);
                            if !quiet || answer.is_error() {
                                answer.encode(&mut replies, op_id);
                            }
                        }
                    }
                    if !replies.is_empty() {
                        out.encoded(id, &mut |buf| buf.extend_from_slice(&replies));
                    }
                });
                replies.clear();
                if replies.capacity() > 1 << 20 {
                    // Not worth keeping after a large `get_all`.
                    replies = Vec::new();
                }
                REPLIES.with(|r| *r.borrow_mut() = replies);
            } else {
                let mut run =
                    std::iter::from_fn(|| rest.next_if(|f| !matches!(f, Frame::Op { .. })));
                self.with_router(|r, out| {
                    for f in &mut run {
                        r.frame(id, f, out)?;
                    }
                    Ok::<(), String>(())
                })?;
            }
        }
        Ok(())
    }

    /// Runs `f` on the store; what it produced for the connections is appended under
    /// the lock (so each connection gets it in the store's order) and written, and what
    /// it produced for the main process is handed over, after the lock is released.
    fn with_store<R>(&self, f: impl FnOnce(&mut Store, &mut dyn store::Deliver) -> R) -> R {
        let conns = self.conns.read();
        let mut out = Outputs {
            conns: &conns,
            kicks: Vec::new(),
            local: Vec::new(),
        };
        let (r, local) = {
            let mut store = self.store.lock();
            let r = f(&mut store, &mut out);
            // Queued while the store is locked, so that they keep its order.
            let local =
                (!out.local.is_empty()).then(|| self.local_queue.lock().push(out.local.drain(..)));
            (r, local)
        };
        let Outputs { kicks, .. } = out;
        drop(conns);
        for c in kicks {
            c.kick();
        }
        if let Some(upto) = local {
            self.deliver_local(upto);
        }
        r
    }

    pub(crate) fn disconnected(&self, id: ConnId) {
        self.conns.write().remove(&id);
        self.store.lock().drop_conn(id);
        self.with_router(|r, out| r.drop_conn(id, out));
    }
}

/// Where the store's output goes while its lock is held.
struct Outputs<'a> {
    conns: &'a FxHashMap<ConnId, Arc<Conn>>,
    kicks: Vec<Arc<Conn>>,
    local: Vec<Frame>,
}

impl store::Deliver for Outputs<'_> {
    fn encoded(&mut self, conn: ConnId, encode: &mut dyn FnMut(&mut Vec<u8>)) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.append_with(|buf| {
            encode(buf);
            Ok::<(), ()>(())
        })
        .is_ok()
            && !self.kicks.iter().any(|k| k.id == conn)
        {
            self.kicks.push(c.clone());
        }
    }

    fn local(&mut self, frame: Frame) {
        self.local.push(frame);
    }
}

/// The hub. Dropping it stops accepting connections and removes its socket.
pub struct Hub {
    inner: Arc<Inner>,
    dir: PathBuf,
    socket: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    events: Mutex<Option<mpsc::UnboundedReceiver<HubEvent>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

fn private_dir(parent: Option<PathBuf>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = parent
        .or_else(|| {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
        })
        .unwrap_or_else(std::env::temp_dir);
    remove_stale_dirs(&parent);
    let mut rng = rand::thread_rng();
    for _ in 0..16 {
        let dir = parent.join(format!(
            "yukicomm-{}-{:08x}",
            std::process::id(),
            rng.gen::<u32>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free socket directory name",
    ))
}

/// Removes the socket directories that main processes killed before they could clean up
/// left in `parent`: a directory `yukicomm-<pid>-<8 hex digits>` of this user whose
/// process is gone and whose socket refuses connections. Anything else is left alone,
/// and failures are ignored: this is tidying, not a condition for starting.
fn remove_stale_dirs(parent: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let uid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("yukicomm-"))
            .and_then(|n| n.split_once('-'))
            .filter(|(_, tag)| tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let gone = rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH);
        let dir = entry.path();
        let mine = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if !gone || !mine {
            continue;
        }
        let socket = dir.join("hub.sock");
        match std::os::unix::net::UnixStream::connect(&socket) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&socket);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => continue,
        }
        if std::fs::remove_dir(&dir).is_ok() {
            tracing::debug!(dir = %dir.display(), "removed a stale socket directory");
        }
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
            local: OnceLock::new(),
            events: tx,
            next_conn: AtomicU64::new(1),
            max_frame: config.max_frame,
            max_unread: config.max_unread,
        });
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
            loop {
                tick.tick().await;
                sweep_inner.with_store(|s, out| s.sweep(out));
            }
        });
        Ok(Hub {
            inner,
            dir,
            socket,
            accept,
            sweeper,
            events: Mutex::new(Some(rx)),
        })
    }

    /// The socket children connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
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
        conn::adopt(
            self.inner.clone(),
            ours,
            conn::Admission {
                name: name.as_str().to_string(),
                token,
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
        self.inner.with_router(|r, out| {
            let mut replies = Vec::new();
            let _ = r.frame(
                LOCAL,
                Frame::Request {
                    id: 0,
                    body: request,
                },
                &mut replies,
            );
            let mut reply = None;
            for (c, f) in replies {
                match f {
                    Frame::Reply { body, .. } if c == LOCAL && reply.is_none() => {
                        reply = Some(body)
                    }
                    other => out.push((c, other)),
                }
            }
            reply.unwrap_or(Reply::Error {
                code: yukicomm_wire::ErrorCode::BadRequest,
                message: "no reply".into(),
            })
        })
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
        self.inner
            .with_store(|s, out| s.apply(LOCAL, op, out).to_owned_reply())
    }

    /// Stops accepting connections, closes every child connection, and removes the
    /// socket and its directory.
    pub fn shutdown(&self) {
        self.accept.abort();
        self.sweeper.abort();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A pid that no process has: a child's, after it has been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("run true");
        let pid = child.id();
        child.wait().expect("reap true");
        pid
    }

    #[test]
    fn only_dead_hubs_directories_are_removed() {
        let parent = std::env::temp_dir().join(format!("yukicomm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir(&parent).expect("make the parent");
        // A socket directory; its listener, while kept, accepts connections, and once
        // dropped leaves the socket file behind, refusing them.
        let make = |name: String| {
            let dir = parent.join(name);
            std::fs::create_dir(&dir).expect("make a socket directory");
            let listener = UnixListener::bind(dir.join("hub.sock")).expect("bind");
            (dir, listener)
        };
        let dead = dead_pid();
        let (stale, _) = make(format!("yukicomm-{dead}-0000abcd"));
        let empty = parent.join(format!("yukicomm-{dead}-0000abce"));
        std::fs::create_dir(&empty).expect("make an empty directory");
        let (listening, _listener) = make(format!("yukicomm-{dead}-0000abcf"));
        let (alive, _) = make(format!("yukicomm-{}-0000abd0", std::process::id()));
        let (other, _) = make(format!("yukicomm-{dead}-not-ours"));

        remove_stale_dirs(&parent);

        assert!(!stale.exists(), "a dead hub's directory is removed");
        assert!(
            !empty.exists(),
            "an empty directory of a dead hub is removed"
        );
        assert!(listening.exists(), "a socket that accepts is in use");
        assert!(alive.exists(), "a live process's directory is kept");
        assert!(other.exists(), "a name the hub does not make is left alone");
        std::fs::remove_dir_all(&parent).expect("clean up");
    }
}
