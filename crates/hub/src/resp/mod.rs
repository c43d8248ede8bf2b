//! The Redis protocol endpoint: `redis-cli`, `redis-benchmark` and Redis clients in any
//! language use the hub's shared store and its publish/subscribe, over RESP2 or RESP3.
//!
//! Off unless configured ([`RedisConfig`], in [`HubConfig::redis`](crate::HubConfig),
//! or the environment variable `YUKICOMM_REDIS`). It listens on a Unix socket in the
//! hub's private directory (`redis.sock`, reachable only by the user the main process
//! runs as, whose uid is also checked), and/or on TCP: on a loopback address, or on any
//! address if a password is set (as Redis's protected mode), checked by `AUTH` or
//! `HELLO ... AUTH` with the user `default`.
//!
//! - [`proto`]: the parser (multibulk and inline commands, pipelined, every length
//!   checked before anything is allocated) and the RESP2/RESP3 encoder.
//! - [`value`]: how values cross between RESP's byte strings and the store's
//!   MessagePack (one store, two faces).
//! - `command`: the commands, applied to the store under its lock.
//!
//! # Threads and I/O
//!
//! The endpoint serves every connection from one thread of its own (`yukicomm-redis`,
//! a single-threaded runtime), as Redis does, apart from the hub's runtime. Each
//! connection is one task: it reads what has arrived, runs up to 256 commands under
//! one taking of the store's lock (their keys' entries are prefetched into the cache
//! first), and writes their replies itself in one write, without waiting; only when
//! the socket is full does the rest wait for it to drain. While it is the endpoint's
//! only connection and has no subscriptions, a connection watches its socket up to
//! 50 µs for the next command before sleeping (not on a single processor): that spares
//! the wake-up that is most of a round trip for a client sending one command at a time.
//!
//! # Buffers
//!
//! Input: at most one command is buffered beyond what has been read and not yet run
//! (its limits are [`proto::Limits`]); the connection reads no more while its replies
//! waiting to be written pass 1 MiB.
//! Output: replies are bounded by that; published messages are not (a subscriber does
//! not send commands), so a connection whose unwritten output passes
//! [`RedisConfig::output_limit`] (default 32 MiB, Redis's `pubsub` class) is closed,
//! with a warning naming it, and publishers never wait for it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use yukicomm_hub::{Hub, HubConfig, RedisConfig};
//! let hub = Hub::bind(HubConfig {
//!     redis: Some(RedisConfig::unix()),
//!     ..HubConfig::default()
//! })?;
//! println!("redis-cli -s {}", hub.redis_socket_path().unwrap().display());
//! # Ok(())
//! # }
//! ```

mod command;
pub mod proto;
pub mod value;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::os::fd::AsFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use crate::core::Inner;
use crate::router::ConnId;
use proto::{Encoder, Limits, Version};

/// The Redis version the endpoint reports (`HELLO`, `INFO`): the one whose commands it
/// follows. Clients use it to choose features; `INFO` also says `yukicomm_version`.
pub const REDIS_VERSION: &str = "7.0.0";

/// The environment variable that turns the endpoint on without code: `unix` (a socket
/// in the hub's private directory), `unix:PATH`, `tcp:ADDR`, or several of them
/// separated by commas (`unix,tcp:127.0.0.1:6379`).
pub const ENV_REDIS: &str = "YUKICOMM_REDIS";
/// The environment variable holding the endpoint's password, if any.
pub const ENV_REDIS_PASSWORD: &str = "YUKICOMM_REDIS_PASSWORD";

/// Where the endpoint's Unix socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixPlace {
    /// `redis.sock` in the hub's private directory (mode `0700`).
    Private,
    /// This path (the socket is made mode `0600`; an existing file there is replaced
    /// only if it is a socket nobody listens on).
    Path(PathBuf),
}

/// Settings of the Redis protocol endpoint.
#[derive(Clone)]
pub struct RedisConfig {
    /// The Unix socket, if any.
    pub unix: Option<UnixPlace>,
    /// The TCP address, if any. Without a password it must be a loopback address.
    pub tcp: Option<SocketAddr>,
    /// The password of the user `default`; `None`: no `AUTH` needed (and TCP only on
    /// loopback).
    pub password: Option<String>,
    /// Most connections at once; the next one gets `-ERR max number of clients
    /// reached` and is closed. Default 10,000 (Redis's default).
    pub max_clients: usize,
    /// Limits on one command.
    pub limits: Limits,
    /// Most bytes of output that may wait for a connection before it is closed (see
    /// "Buffers" above). Default 32 MiB.
    pub output_limit: usize,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password itself.
        f.debug_struct("RedisConfig")
            .field("unix", &self.unix)
            .field("tcp", &self.tcp)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("max_clients", &self.max_clients)
            .field("limits", &self.limits)
            .field("output_limit", &self.output_limit)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            unix: None,
            tcp: None,
            password: None,
            max_clients: 10_000,
            limits: Limits::default(),
            output_limit: 32 << 20,
        }
    }
}

impl RedisConfig {
    /// A socket in the hub's private directory.
    pub fn unix() -> RedisConfig {
        RedisConfig {
            unix: Some(UnixPlace::Private),
            ..RedisConfig::default()
        }
    }

    /// A TCP address (a loopback one unless a password is set).
    pub fn tcp(addr: SocketAddr) -> RedisConfig {
        RedisConfig {
            tcp: Some(addr),
            ..RedisConfig::default()
        }
    }

    /// Parses the value of `YUKICOMM_REDIS` (see [`ENV_REDIS`]).
    ///
    /// # Errors
    ///
    /// A part that is not `unix`, `unix:PATH` or `tcp:ADDR`.
    pub fn parse(spec: &str) -> Result<RedisConfig, String> {
        let mut c = RedisConfig::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "unix" {
                c.unix = Some(UnixPlace::Private);
            } else if let Some(p) = part.strip_prefix("unix:") {
                c.unix = Some(UnixPlace::Path(PathBuf::from(p)));
            } else if let Some(a) = part.strip_prefix("tcp:") {
                c.tcp = Some(
                    a.parse()
                        .map_err(|e| format!("{ENV_REDIS}: bad address '{a}': {e}"))?,
                );
            } else {
                return Err(format!(
                    "{ENV_REDIS}: '{part}' is not 'unix', 'unix:PATH' or 'tcp:ADDR'"
                ));
            }
        }
        Ok(c)
    }

    /// The endpoint the environment asks for, if any (`YUKICOMM_REDIS`, with
    /// `YUKICOMM_REDIS_PASSWORD`).
    ///
    /// # Errors
    ///
    /// As [`parse`](RedisConfig::parse).
    pub fn from_env() -> Result<Option<RedisConfig>, String> {
        let Some(spec) = std::env::var_os(ENV_REDIS) else {
            return Ok(None);
        };
        let mut c = RedisConfig::parse(&spec.to_string_lossy())?;
        c.password = std::env::var(ENV_REDIS_PASSWORD)
            .ok()
            .filter(|p| !p.is_empty());
        Ok(Some(c))
    }

    fn check(&self) -> std::io::Result<()> {
        if let Some(a) = self.tcp {
            if self.password.is_none() && !a.ip().is_loopback() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the Redis endpoint may listen on {a}, not a loopback address, only with a password (protected mode)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The running endpoint; dropping it stops accepting and closes its connections.
pub(crate) struct Endpoint {
    pub(crate) config: RedisConfig,
    inner: Arc<Inner>,
    pub(crate) clients: Mutex<FxHashMap<u64, Arc<Client>>>,
    next_id: AtomicU64,
    pub(crate) started: std::time::Instant,
    /// Whether a lone connection watches its socket before sleeping (more than one
    /// processor).
    spin: bool,
}

/// The handle the hub keeps: listeners, and where they are.
pub(crate) struct Running {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) unix: Option<PathBuf>,
    pub(crate) tcp: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the endpoint's thread once its connections have closed.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Stops accepting and closes every connection; removes the socket.
    pub(crate) fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(p) = self.unix.take() {
            let _ = std::fs::remove_file(p);
        }
        let clients: Vec<_> = self.endpoint.clients.lock().values().cloned().collect();
        for c in clients {
            c.kill();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The endpoint's thread: its own single-threaded runtime, as Redis serves every
/// connection from one thread. Each command takes the store's lock as the hub's
/// connections do; keeping the endpoint's connections on one thread saves the wake-ups
/// of a second worker and their contention for that lock. The thread ends when `stop`
/// is sent (or dropped), once the connections it served have cleaned up (at most a
/// second).
fn spawn_thread(
    endpoint: Arc<Endpoint>,
) -> std::io::Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("yukicomm-redis".into())
        .spawn(move || {
            rt.block_on(async move {
                let _ = stopped.await;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while !endpoint.clients.lock().is_empty() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            });
        })?;
    Ok((handle, stop))
}

/// Starts the endpoint; `dir` is the hub's private directory.
pub(crate) fn start(
    config: RedisConfig,
    inner: Arc<Inner>,
    dir: &std::path::Path,
) -> std::io::Result<Running> {
    config.check()?;
    let endpoint = Arc::new(Endpoint {
        config: config.clone(),
        inner,
        clients: Mutex::new(FxHashMap::default()),
        next_id: AtomicU64::new(1),
        started: std::time::Instant::now(),
        spin: std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
    });
    let (rt, stop) = spawn_thread(endpoint.clone())?;
    let _in_rt = rt.enter();
    let mut tasks = Vec::new();
    let mut unix = None;
    if let Some(place) = &config.unix {
        let path = match place {
            UnixPlace::Private => dir.join("redis.sock"),
            UnixPlace::Path(p) => {
                if std::os::unix::net::UnixStream::connect(p).is_err()
                    && std::fs::symlink_metadata(p).is_ok_and(|m| {
                        use std::os::unix::fs::FileTypeExt;
                        m.file_type().is_socket()
                    })
                {
                    let _ = std::fs::remove_file(p);
                }
                p.clone()
            }
        };
        let listener = tokio::net::UnixListener::bind(&path)?;
        if let UnixPlace::Path(_) = place {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        tracing::info!(socket = %path.display(), "Redis protocol endpoint listening");
        let ep = endpoint.clone();
        let uid = rustix::process::geteuid().as_raw();
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let peer = stream.peer_cred().map(|c| c.uid());
                        if peer.as_ref().ok() != Some(&uid) {
                            tracing::warn!(
                                "refused a Redis protocol connection from another user ({peer:?})"
                            );
                            continue;
                        }
                        ep.clone().admit(Sock::Unix(stream), "unix".to_string());
                    }
                    Err(e) => {
                        tracing::warn!("Redis endpoint: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }));
        unix = Some(path);
    }
    let mut tcp = None;
    if let Some(addr) = config.tcp {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "Redis protocol endpoint listening");
        let ep = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        ep.clone().admit(Sock::Tcp(stream), peer.to_string());
                    }
                    Err(e) => {
                        tracing::warn!("Redis endpoint: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }));
        tcp = Some(local);
    }
    Ok(Running {
        endpoint,
        unix,
        tcp,
        tasks,
        stop: Some(stop),
    })
}

/// What a connection's task and the store (through
/// [`Subscriber`](crate::store::Subscriber)) share.
pub(crate) struct Client {
    pub(crate) id: u64,
    conn: ConnId,
    addr: String,
    created: std::time::Instant,
    pub(crate) state: Mutex<ClientState>,
    output_limit: usize,
    /// A publication was appended to the output.
    wake: Notify,
    /// The connection is to close at once.
    killed: AtomicBool,
    kill_notify: Notify,
}

/// A connection's state under its lock (taken under the store's lock, never the other
/// way round).
pub(crate) struct ClientState {
    /// Output waiting to be written, after `unsent`.
    out: Vec<u8>,
    /// Bytes the connection's task has taken from `out` and not yet written (an upper
    /// bound: updated when the task takes `out` and when the socket is full).
    unsent: usize,
    pub(crate) version: Version,
    /// Its subscriptions: the channel or pattern, and whether it is a pattern.
    subs: FxHashMap<u32, (Bytes, bool)>,
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
    /// The name of the last command, for `CLIENT LIST`.
    last: Bytes,
}

/// While more than this many reply bytes wait to be written, no more commands are read.
const REPLY_HIGH_WATER: usize = 1 << 20;

/// Most commands run under one taking of the store's lock.
const BATCH: usize = 256;

impl Client {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.kill_notify.notify_waiters();
        self.wake.notify_one();
    }

    async fn killed(&self) {
        loop {
            let n = self.kill_notify.notified();
            if self.killed.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }

    pub(crate) fn add_sub(&self, sub: u32, name: Bytes, pattern: bool) {
        self.state.lock().subs.insert(sub, (name, pattern));
    }

    pub(crate) fn remove_sub(&self, sub: u32) {
        self.state.lock().subs.remove(&sub);
    }

    /// One line of `CLIENT LIST`.
    pub(crate) fn describe(&self) -> String {
        let st = self.state.lock();
        let s = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let (chans, pats) =
            st.subs.values().fold(
                (0, 0),
                |(c, p), (_, pat)| if *pat { (c, p + 1) } else { (c + 1, p) },
            );
        format!(
            "id={} addr={} laddr=? fd=-1 name={} age={} idle=0 flags=N db=0 sub={} psub={} ssub=0 multi=-1 qbuf=0 obl=0 oll=0 omem={} resp={} lib-name={} lib-ver={} cmd={}",
            self.id,
            self.addr,
            s(&st.name),
            self.created.elapsed().as_secs(),
            chans,
            pats,
            st.out.len() + st.unsent,
            if st.version == Version::Resp3 { 3 } else { 2 },
            s(&st.lib_name),
            s(&st.lib_ver),
            String::from_utf8_lossy(&st.last).to_ascii_lowercase(),
        )
    }

    /// Appends replies to the output (the connection's own task writes them).
    fn append(&self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.state.lock().out.extend_from_slice(bytes);
        }
    }
}

impl crate::store::Subscriber for Client {
    fn publication(&self, sub: u32, topic: &[u8], body: &[u8]) {
        let mut st = self.state.lock();
        if self.killed.load(Ordering::Relaxed) {
            return;
        }
        let Some((name, pattern)) = st.subs.get(&sub).cloned() else {
            return;
        };
        let body = value::to_resp(body);
        if st.out.len() + st.unsent + topic.len() + body.len() + name.len() + 64 > self.output_limit
        {
            tracing::warn!(
                client = self.id,
                addr = %self.addr,
                limit = self.output_limit,
                "closing a Redis protocol connection: its output passed the limit (it does not read what it subscribed to)"
            );
            drop(st);
            self.kill();
            return;
        }
        let version = st.version;
        let mut e = Encoder {
            out: &mut st.out,
            version,
        };
        if pattern {
            e.push(4);
            e.bulk(b"pmessage");
            e.bulk(&name);
            e.bulk(topic);
        } else {
            e.push(3);
            e.bulk(b"message");
            e.bulk(topic);
        }
        e.bulk(&body);
        drop(st);
        self.wake.notify_one();
    }
}

impl Endpoint {
    /// `CLIENT LIST`: one line per connection, by id.
    pub(crate) fn client_list(&self) -> String {
        let mut clients: Vec<Arc<Client>> = self.clients.lock().values().cloned().collect();
        clients.sort_by_key(|c| c.id);
        let mut s = String::new();
        for c in clients {
            s.push_str(&c.describe());
            s.push('\n');
        }
        s
    }

    /// Takes a new connection, or refuses it when there are too many.
    fn admit(self: Arc<Self>, sock: Sock, addr: String) {
        let conn = self.inner.next_conn_id();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client {
            id,
            conn,
            addr,
            created: std::time::Instant::now(),
            state: Mutex::new(ClientState {
                out: Vec::new(),
                unsent: 0,
                version: Version::Resp2,
                subs: FxHashMap::default(),
                name: None,
                lib_name: None,
                lib_ver: None,
                last: Bytes::new(),
            }),
            output_limit: self.config.output_limit,
            wake: Notify::new(),
            killed: AtomicBool::new(false),
            kill_notify: Notify::new(),
        });
        {
            let mut clients = self.clients.lock();
            if clients.len() >= self.config.max_clients {
                drop(clients);
                tracing::warn!(
                    max = self.config.max_clients,
                    "refused a Redis protocol connection: too many connections"
                );
                tokio::spawn(async move {
                    let mut w = Output::default();
                    w.buf
                        .extend_from_slice(b"-ERR max number of clients reached\r\n");
                    let deadline = tokio::time::sleep(std::time::Duration::from_secs(5));
                    tokio::pin!(deadline);
                    while !w.is_empty() {
                        tokio::select! {
                            r = sock.ready(Interest::WRITABLE) => if r.is_err() || w.write_some(&sock).is_err() {
                                return;
                            },
                            _ = &mut deadline => return,
                        }
                    }
                    sock.shutdown_write();
                });
                return;
            }
            clients.insert(id, client.clone());
        }
        self.inner
            .subscribers
            .write()
            .insert(conn, client.clone() as Arc<dyn crate::store::Subscriber>);
        tokio::spawn(async move {
            self.serve(&client, &sock).await;
            self.inner.subscribers.write().remove(&conn);
            self.inner.store.lock().drop_conn(conn);
            self.clients.lock().remove(&id);
        });
    }

    /// Serves a connection until the peer closes, quits, breaks the protocol, or the
    /// connection is killed. One task reads the commands, runs them and writes their
    /// replies (and what its subscriptions receive) straight to the socket, as much as
    /// it takes without blocking; it waits only for the socket.
    async fn serve(&self, client: &Client, sock: &Sock) {
        let mut input = Input {
            buf: BytesMut::with_capacity(16 << 10),
            session: command::Session {
                conn: client.conn,
                authed: self.config.password.is_none(),
                channels: FxHashMap::default(),
                patterns: FxHashMap::default(),
                next_sub: 1,
                quit: false,
                scratch: Vec::new(),
            },
            version: Version::Resp2,
            batch: Vec::new(),
            reply: Vec::new(),
            queued: 0,
        };
        let mut output = Output::default();
        // No more input: the peer closed, quit, or broke the protocol.
        let mut eof = false;
        // A read without the poller stopped before the socket was empty.
        let mut unreported = false;
        loop {
            if client.killed.load(Ordering::SeqCst) {
                return;
            }
            // Run what has arrived, while the output waiting is small.
            while !eof && output.unsent() + input.queued <= REPLY_HIGH_WATER {
                let step = self.run_batch(client, &mut input);
                // Each batch's replies are written at once, as far as the socket takes
                // them.
                if output.is_empty() {
                    output.take(client);
                    input.queued = 0;
                }
                if output.write_some(sock).is_err() {
                    return;
                }
                match step {
                    Step::More => {}
                    Step::NeedInput => break,
                    Step::Close => eof = true,
                }
            }
            // Write what is waiting, as far as the socket takes it.
            loop {
                if output.is_empty() {
                    input.queued = 0;
                    if !output.take(client) {
                        break;
                    }
                }
                match output.write_some(sock) {
                    Ok(true) => {}
                    Ok(false) => {
                        client.state.lock().unsent = output.unsent();
                        break;
                    }
                    Err(()) => return,
                }
            }
            if eof && output.is_empty() {
                sock.shutdown_write();
                return;
            }
            let want_read = !eof && output.unsent() + input.queued <= REPLY_HIGH_WATER;
            // The endpoint's only connection, one command at a time: the next command
            // comes within microseconds of the reply. Watching the socket for it a
            // little while, instead of sleeping at once, spares the wake-up that is
            // most of a round trip. Never with subscriptions (their messages would
            // wait) nor on a single processor.
            let spin = output.is_empty()
                && input.session.subscriptions() == 0
                && self.spin
                && self.clients.lock().len() == 1;
            // (After a read that stopped early, input may be waiting that the poller
            // will not report again: it is read now.)
            if want_read && (spin || unreported) {
                let (spun, more) = sock.spin_read(
                    &mut input.buf,
                    if spin {
                        SPIN
                    } else {
                        std::time::Duration::ZERO
                    },
                );
                unreported = more;
                match spun {
                    Spun::Read => continue,
                    Spun::Closed => {
                        eof = true;
                        continue;
                    }
                    Spun::Nothing => {}
                    Spun::Broken => return,
                }
            }
            let mut interest = None;
            if want_read {
                interest = Some(Interest::READABLE);
            }
            if !output.is_empty() {
                interest = Some(interest.map_or(Interest::WRITABLE, |i| i | Interest::WRITABLE));
            }
            let woken = client.wake.notified();
            tokio::select! {
                r = sock.ready(interest.unwrap_or(Interest::READABLE)), if interest.is_some() => match r {
                    Ok(ready) if want_read && (ready.is_readable() || ready.is_read_closed()) => {
                        if input.buf.capacity() - input.buf.len() < 4096 {
                            input.buf.reserve(16 << 10);
                        }
                        let room = input.buf.capacity() - input.buf.len();
                        match sock.try_read_buf(&mut input.buf) {
                            Ok(0) => eof = true,
                            // Less than there was room for: the socket is empty, and
                            // the next wait goes straight to the poller (as tokio's own
                            // reads do), which lets the other connections run first.
                            Ok(n) if n < room => sock.clear_read_readiness(),
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = woken => {}
                _ = client.killed() => return,
            }
        }
    }

    /// Runs the commands that have arrived, up to [`BATCH`], under one taking of the
    /// store's lock; their replies are appended to the connection's output.
    fn run_batch(&self, client: &Client, input: &mut Input) -> Step {
        let mut broken = None;
        while input.batch.len() < BATCH {
            match proto::parse(&mut input.buf, &self.config.limits) {
                Ok(Some(cmd)) => input.batch.push(cmd),
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        let full = input.batch.len() == BATCH;
        if !input.batch.is_empty() {
            let mut cx = command::Ctx {
                endpoint: self,
                client,
                version: input.version,
            };
            let session = &mut input.session;
            let reply = &mut input.reply;
            let batch = &mut input.batch;
            let queued = &mut input.queued;
            self.inner.with_store(|store, out| {
                if batch.len() > 1 {
                    // Each key's entry on its way into the cache before the first
                    // command runs: the misses overlap instead of following each other.
                    for cmd in batch.iter() {
                        if let Some(k) = cmd.get(1) {
                            store.prefetch(k);
                        }
                    }
                }
                let mut last = Bytes::new();
                for cmd in batch.drain(..) {
                    command::exec(session, &mut cx, &cmd, store, out, reply);
                    last = cmd.into_iter().next().unwrap_or_default();
                    // A connection with subscriptions may receive a message from its
                    // own next command: each reply goes before it.
                    if session.subscriptions() > 0 {
                        client.append(reply);
                        reply.clear();
                    }
                    if session.quit {
                        break;
                    }
                }
                // Appended under the store's lock: a subscription's first message never
                // overtakes its confirmation.
                let mut st = client.state.lock();
                st.out.extend_from_slice(reply);
                st.last = last;
                *queued = st.out.len();
            });
            input.reply.clear();
            input.batch.clear();
            input.version = cx.version;
            if input.session.quit {
                return Step::Close;
            }
        }
        if let Some(e) = broken {
            tracing::debug!(client = client.id, "Redis protocol error: {e}");
            let mut out = Vec::new();
            Encoder {
                out: &mut out,
                version: input.version,
            }
            .error(&format!("ERR {e}"));
            client.append(&out);
            input.queued += out.len();
            return Step::Close;
        }
        if full {
            Step::More
        } else {
            Step::NeedInput
        }
    }
}

/// What a connection has read and not yet run.
struct Input {
    buf: BytesMut,
    session: command::Session,
    version: Version,
    batch: Vec<Vec<Bytes>>,
    reply: Vec<u8>,
    /// The connection's output not yet taken for writing, when its replies were last
    /// appended.
    queued: usize,
}

/// What [`Endpoint::run_batch`] leaves to do.
enum Step {
    /// Commands may be waiting in the buffer.
    More,
    /// Every whole command has run.
    NeedInput,
    /// The connection closes once its output is written.
    Close,
}

/// Output taken from the connection's state, being written.
#[derive(Default)]
struct Output {
    buf: Vec<u8>,
    pos: usize,
}

impl Output {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn unsent(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the connection's output once everything taken before is written: whether
    /// there is something to write.
    fn take(&mut self, client: &Client) -> bool {
        if !self.is_empty() {
            return true;
        }
        self.buf.clear();
        self.pos = 0;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        let mut st = client.state.lock();
        std::mem::swap(&mut st.out, &mut self.buf);
        st.unsent = self.buf.len();
        !self.buf.is_empty()
    }

    /// Writes as much as the socket takes without blocking: `Ok(true)` if it took
    /// everything, `Ok(false)` if it is full, `Err` if the connection is broken.
    fn write_some(&mut self, sock: &Sock) -> Result<bool, ()> {
        while !self.is_empty() {
            match sock.try_write(&self.buf[self.pos..]) {
                Ok(0) => return Err(()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        Ok(true)
    }
}

/// How long the only connection's task watches its socket for the next command
/// before sleeping.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// What [`Sock::spin_read`] found.
enum Spun {
    Read,
    Closed,
    Nothing,
    Broken,
}

/// A connection's socket.
enum Sock {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Sock {
    async fn ready(&self, interest: Interest) -> std::io::Result<tokio::io::Ready> {
        match self {
            Sock::Unix(s) => s.ready(interest).await,
            Sock::Tcp(s) => s.ready(interest).await,
        }
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.try_read_buf(buf),
            Sock::Tcp(s) => s.try_read_buf(buf),
        }
    }

    fn try_write(&self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.try_write(b),
            Sock::Tcp(s) => s.try_write(b),
        }
    }

    /// Reads what arrives within `spin`, without blocking and without the poller:
    /// everything there is (until a read is short), so that no input is left that the
    /// poller would not report again.
    /// Also whether it stopped before the socket was empty (the poller may not report
    /// what is left).
    fn spin_read(&self, buf: &mut BytesMut, spin: std::time::Duration) -> (Spun, bool) {
        let fd = match self {
            Sock::Unix(s) => s.as_fd(),
            Sock::Tcp(s) => s.as_fd(),
        };
        let until = std::time::Instant::now() + spin;
        let mut chunk = [0u8; 4096];
        let mut got = 0;
        loop {
            match rustix::net::recv(fd, &mut chunk[..], rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => return (Spun::Closed, false),
                Ok((n, _)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    got += n;
                    if n < chunk.len() {
                        return (Spun::Read, false);
                    }
                    if got >= 64 << 10 {
                        return (Spun::Read, true);
                    }
                }
                Err(rustix::io::Errno::AGAIN) if got > 0 => return (Spun::Read, false),
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                    if std::time::Instant::now() >= until {
                        return (Spun::Nothing, false);
                    }
                    std::hint::spin_loop();
                }
                Err(_) => return (Spun::Broken, false),
            }
        }
    }

    /// Forgets that the socket was readable, until the poller says so again.
    fn clear_read_readiness(&self) {
        let would_block = || -> std::io::Result<()> { Err(std::io::ErrorKind::WouldBlock.into()) };
        let _ = match self {
            Sock::Unix(s) => s.try_io(Interest::READABLE, would_block),
            Sock::Tcp(s) => s.try_io(Interest::READABLE, would_block),
        };
    }

    /// Ends the output (the peer reads what was written, then the end).
    fn shutdown_write(&self) {
        let _ = match self {
            Sock::Unix(s) => rustix::net::shutdown(s, rustix::net::Shutdown::Write),
            Sock::Tcp(s) => rustix::net::shutdown(s, rustix::net::Shutdown::Write),
        };
    }
}
