//! Store benchmark: the shared key-value store and publish/subscribe, driven from child
//! processes, measured against Redis over its Unix socket in the same run.
//!
//! Every workload runs in a child process: the `client` child for set, get and publish,
//! the `subNN` children as subscribers. yukicomm's hub (and so its store) is in the
//! bench's main process; Redis is a `redis-server` the bench starts itself and drives
//! through the `redis` crate over its Unix socket. Keys are 16 bytes
//! (`key:000000000042`); values are 64 bytes as stored: a 62-byte `yukicomm::Payload`
//! (MessagePack `bin8`, 2-byte header) and 64 raw bytes for Redis.
//!
//! Measures:
//!
//! - SET and GET, ops/s, in three shapes: one client with one request at a time; 50
//!   clients each with one request at a time; 50 clients each with 16 requests in flight.
//!   GETs read keys that exist, and every value read back is checked;
//! - publish/subscribe: one publisher (the `client` child) publishes 64-byte messages
//!   in batches of 64 to 1, 8 and 32 subscriber processes; delivered
//!   messages/s = messages received by all subscribers / time from the first publish to
//!   the last message received by any subscriber. yukicomm drops what a subscription
//!   has no room for (1024 buffered by default) and counts it; a publish's reply says
//!   how many subscriptions took the message, so the publisher pauses when one did not
//!   (see `yuki_publish`). Misses and pauses are reported; the subscribers' counts must
//!   match the publish replies exactly, and every message must arrive intact, at most
//!   once (and, for Redis, every message must arrive);
//! - memory per key with 1,000,000 keys: growth of the main process's RSS (the hub)
//!   while a child sets 1,000,000 more keys, against the growth of `redis-server`'s RSS
//!   for the same keys in an empty database (its `used_memory` growth is shown for
//!   reference). Measured last, after the rates.
//!
//! How each shape is driven: for each system the fastest of the ways tried on the
//! 2-core development machine; `--alt` measures the alternatives instead. yukicomm's 50
//! tasks share one hub connection (a process has one), while Redis gets 50 connections
//! like `redis-benchmark -c 50`; so that shape also has "(ref.)" rows, measured in the
//! same rounds, with Redis's 50 tasks sharing one multiplexed connection.
//!
//! | shape | yukicomm | Redis | `--alt` |
//! |---|---|---|---|
//! | 1 client, 1 at a time | blocking `set`/`get` on one thread | blocking connection on one thread | one task with `*_async`; one task on a multiplexed connection |
//! | 50 clients, 1 at a time | 50 tasks sharing the store handle (so the process's one hub connection), `*_async` | 50 tasks, 50 multiplexed connections | 50 threads with blocking calls; 50 tasks sharing one multiplexed connection |
//! | 50 clients, 16 in flight | 50 tasks, each keeping 16 `*_async` in flight | 50 tasks, 50 connections, each sending pipelines of 16 | rounds of 16 awaited together; 16 concurrent commands per connection |
//! | publisher | `publish_many_async` batches of 64, one at a time | pipelines of 64 `PUBLISH` on a blocking connection | `publish_async`, 64 in flight; 64 concurrent `PUBLISH` on a multiplexed connection |
//! | subscriber | blocking `Subscriber::recv_timeout` | blocking `PubSub::get_message` | the same |
//!
//! Run it:
//!
//! ```text
//! cargo bench --bench store                  # full run, about 90 s
//! cargo bench --bench store -- --quick       # small counts, well under 30 s (CI)
//! cargo bench --bench store -- --markdown    # the results as a markdown table
//! cargo bench --bench store -- --only kv     # only some measurements (see below)
//! ```
//!
//! `--only` takes a comma-separated list of `kv`, `kv-1`, `kv-50`, `kv-50x16`,
//! `pubsub`, `pubsub-1`, `pubsub-8`, `pubsub-32`, `memory`. `--no-redis` skips the
//! comparison. `--rounds N` and `--window N` (messages per batch) change the plan;
//! `--verbose` prints every round's figures to stderr. `YUKICOMM_BENCH_QUICK=1`, `YUKICOMM_BENCH_MARKDOWN=1` and
//! `YUKICOMM_BENCH_ONLY=...` do the same as the flags. Unknown arguments (such as the
//! `--bench` that `cargo bench` passes) are ignored.
//!
//! Redis is optional: without `redis-server` on `PATH` the bench says the comparison is
//! skipped and measures yukicomm alone. With it, the bench starts its own server (no
//! TCP port, a Unix socket in a private temporary directory, no persistence), kills it
//! when done (also on a panic, and if the bench dies: it gets `SIGKILL` when the bench's
//! main thread ends) and interleaves the two systems in every round. Every wait has a
//! deadline: a dead or silent child or server fails the bench with an error and a
//! non-zero exit status instead of hanging.

mod support;

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use yukicomm::store::SubscriberError;
use yukicomm::{
    App, Channel, Context, Error, MainContext, Payload, RestartPolicy, SendError, Store,
};

/// The child that runs the set/get workloads and publishes.
const CLIENT: &str = "client";
/// Subscriber processes started (the largest fan-out measured).
const MAX_SUBSCRIBERS: usize = 32;
/// The fan-outs measured.
const FAN_OUTS: [usize; 3] = [1, 8, 32];
/// Concurrent clients in the "50 clients" shapes.
const CLIENTS: u64 = 50;
/// Requests in flight per client in the pipelined shape.
const IN_FLIGHT: usize = 16;
/// Bytes of a value as stored (and of a published message).
const VALUE: usize = 64;
/// Bytes of the yukicomm payload whose MessagePack encoding is `VALUE` bytes.
const PAYLOAD: usize = VALUE - 2;
/// Bytes of a key.
const KEY: usize = 16;
/// Publish requests in flight.
const PUBLISH_WINDOW: usize = 64;
/// Requests in flight (yukicomm) or per pipeline (Redis) when filling the store.
const FILL_WINDOW: usize = 1024;

/// The longest wait for an acknowledgement or a first message.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a child may take for one workload.
const WORK_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest a child waits for its next command.
const IDLE_TIMEOUT: Duration = Duration::from_secs(900);
/// A subscriber that received messages stops after this long without one (messages
/// dropped at the end are never announced).
const TAIL_IDLE: Duration = Duration::from_secs(2);

type Result<T> = std::result::Result<T, Error>;

fn other(message: impl Into<String>) -> Error {
    Error::Other(message.into())
}

fn rerr(context: &'static str) -> impl Fn(redis::RedisError) -> Error {
    move |e| other(format!("redis: {context}: {e}"))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

// ---------------------------------------------------------------------------------
// Messages between the main process and the children

/// Which store a workload runs against.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
enum Target {
    Yukicomm,
    /// Redis at this URL (`unix:///path/redis.sock`, with `?db=N` for another
    /// database).
    Redis(String),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Yukicomm => "yukicomm",
            Target::Redis(_) => "Redis",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One client, one request at a time.
    One,
    /// `CLIENTS` clients, each one request at a time.
    Many,
    /// `CLIENTS` clients, each `IN_FLIGHT` requests in flight.
    Pipelined,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::One, Shape::Many, Shape::Pipelined];

    fn name(self) -> &'static str {
        match self {
            Shape::One => "kv-1",
            Shape::Many => "kv-50",
            Shape::Pipelined => "kv-50x16",
        }
    }

    fn describe(self) -> String {
        match self {
            Shape::One => "1 client, 1 at a time".into(),
            Shape::Many => format!("{CLIENTS} clients, 1 at a time each"),
            Shape::Pipelined => format!("{CLIENTS} clients, {IN_FLIGHT} in flight each"),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum KvOp {
    Set,
    Get,
    Delete,
}

impl KvOp {
    fn name(self) -> &'static str {
        match self {
            KvOp::Set => "SET",
            KvOp::Get => "GET",
            KvOp::Delete => "DEL",
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    /// Child to main: the child's loop is running.
    Ready,
    /// Main to client: run `count` operations on keys `(start + i) % keyspace`, in a
    /// shape; `alt` picks the other way of driving it.
    Kv {
        target: Target,
        shape: Shape,
        op: KvOp,
        start: u64,
        count: u64,
        keyspace: u64,
        alt: bool,
    },
    /// Client to main: the workload's duration.
    KvDone {
        elapsed_ns: u64,
    },
    /// Main to client: set (or delete) keys `prefix` 0..count, pipelined.
    Fill {
        target: Target,
        prefix: String,
        count: u64,
        op: KvOp,
    },
    FillDone,
    /// Main to client: publish messages 0..count to `topic`, `window` in flight, to
    /// `subscribers` subscriptions.
    Publish {
        target: Target,
        topic: String,
        count: u64,
        window: u32,
        subscribers: u32,
        alt: bool,
    },
    /// Client to main: monotonic times of the first publish and of the last reply, and
    /// the subscriptions reached, summed over the messages.
    PubDone {
        first_ns: u64,
        end_ns: u64,
        reached: u64,
        /// Times the publisher paused because a subscription had no room.
        pauses: u64,
    },
    /// Main to a subscriber: subscribe to `topic`, tell `Subscribed`, count messages.
    Subscribe {
        target: Target,
        topic: String,
        count: u64,
    },
    Subscribed,
    /// Subscriber to main: what it received, the misses it was told of, the monotonic
    /// time of its last message.
    SubDone {
        received: u64,
        missed: u64,
        last_ns: u64,
    },
    /// Child to main: the command failed.
    Failed(String),
    /// Main to child: stop.
    Quit,
}

fn describe(m: &Msg) -> String {
    match m {
        Msg::Failed(e) => format!("a failure: {e}"),
        other => {
            let s = format!("{other:?}");
            s.split([' ', '(', '{']).next().unwrap_or("").to_string()
        }
    }
}

fn unexpected(from: &str, expected: &str, got: &Msg) -> Error {
    match got {
        Msg::Failed(e) => other(format!("{from} failed: {e}")),
        _ => other(format!(
            "expected {expected} from {from}, received {}",
            describe(got)
        )),
    }
}

/// Sends without waiting when there is room, else waits for room.
fn send(ch: &Channel<Msg>, m: Msg) -> Result<()> {
    match ch.try_send(m) {
        Ok(()) => Ok(()),
        Err(SendError::Full { value, .. }) => Ok(ch.send_timeout(value, STEP_TIMEOUT)?),
        Err(e) => Err(e.into()),
    }
}

fn recv(ch: &Channel<Msg>, limit: Duration) -> Result<Msg> {
    ch.recv_timeout(limit)
        .map_err(|e| other(format!("waiting on '{}': {e}", ch.name())))
}

// ---------------------------------------------------------------------------------
// Keys, values, time

/// `prefix` (4 bytes) and `n` in 12 digits: 16 bytes.
fn key_into(buf: &mut String, prefix: &str, n: u64) {
    buf.clear();
    let _ = write!(buf, "{prefix}{n:012}");
    debug_assert_eq!(buf.len(), KEY);
}

fn key(prefix: &str, n: u64) -> String {
    let mut k = String::with_capacity(KEY);
    key_into(&mut k, prefix, n);
    k
}

/// The value of key (or message) `n`: `n` in its first 8 bytes, then a pattern.
fn value(n: u64) -> [u8; VALUE] {
    let mut v = [0u8; VALUE];
    v[..8].copy_from_slice(&n.to_le_bytes());
    for (j, b) in v[8..].iter_mut().enumerate() {
        *b = (n as u8).wrapping_add(j as u8) ^ 0x5A;
    }
    v
}

fn payload(n: u64) -> Payload {
    Payload::from(value(n)[..PAYLOAD].to_vec())
}

fn check_value(key: &str, n: u64, got: Option<&[u8]>, len: usize) -> Result<()> {
    match got {
        Some(b) if b == &value(n)[..len] => Ok(()),
        Some(b) => Err(other(format!(
            "GET {key}: wrong value read back ({} bytes)",
            b.len()
        ))),
        None => Err(other(format!("GET {key}: the key is missing"))),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Resident set size of this process (`None`) or of `pid`, in bytes.
fn rss(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        None => PathBuf::from("/proc/self/status"),
        Some(p) => PathBuf::from(format!("/proc/{p}/status")),
    };
    let status = std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| other(format!("no VmRSS in {}", path.display())))
}

// ---------------------------------------------------------------------------------
// Redis

/// A `redis-server` this bench started; killed and cleaned up when dropped.
struct RedisServer {
    child: std::process::Child,
    dir: PathBuf,
    info: RedisInfo,
}

#[derive(Clone, Debug)]
struct RedisInfo {
    socket: String,
    pid: u32,
    version: String,
}

impl RedisInfo {
    /// The URL of database `db`.
    fn url(&self, db: u8) -> String {
        match db {
            0 => format!("unix://{}", self.socket),
            db => format!("unix://{}?db={db}", self.socket),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn redis_client(url: &str) -> Result<redis::Client> {
    redis::Client::open(url).map_err(rerr("client"))
}

fn redis_connect(url: &str) -> Result<redis::Connection> {
    let con = redis_client(url)?
        .get_connection_with_timeout(STEP_TIMEOUT)
        .map_err(rerr("connect"))?;
    con.set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(rerr("set_read_timeout"))?;
    con.set_write_timeout(Some(STEP_TIMEOUT))
        .map_err(rerr("set_write_timeout"))?;
    Ok(con)
}

async fn redis_connect_async(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(STEP_TIMEOUT))
        .set_response_timeout(Some(STEP_TIMEOUT));
    redis_client(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(rerr("connect"))
}

/// Starts `redis-server` on a Unix socket in a private temporary directory and waits
/// until it answers.
fn start_redis(program: &Path) -> Result<RedisServer> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "yukicomm-store-bench-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
    let socket = dir.join("redis.sock");
    let mut cmd = std::process::Command::new(program);
    cmd.args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args([
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "no", "--loglevel", "warning", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe. The server gets SIGKILL when the thread that
    // started it (the bench's main thread, alive until the bench exits) ends, so it
    // never outlives the bench, even if the bench is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io(format!("start {}", program.display())))?;
    let pid = child.id();
    let mut server = RedisServer {
        child,
        dir,
        info: RedisInfo {
            socket: socket.to_string_lossy().into_owned(),
            pid,
            version: String::new(),
        },
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut con = loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(other(format!("redis-server exited at start: {status}")));
        }
        if socket.exists() {
            if let Ok(c) = redis_connect(&server.info.url(0)) {
                break c;
            }
        }
        if Instant::now() >= deadline {
            return Err(other("redis-server did not answer within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .map_err(rerr("INFO server"))?;
    server.info.version = info_field(&info, "redis_version")
        .unwrap_or("?")
        .to_string();
    Ok(server)
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn redis_used_memory(con: &mut redis::Connection) -> Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(con)
        .map_err(rerr("INFO memory"))?;
    info_field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| other("INFO memory has no used_memory"))
}

// ---------------------------------------------------------------------------------
// Options and counts

#[derive(Clone, Debug)]
struct Options {
    quick: bool,
    markdown: bool,
    no_redis: bool,
    alt: bool,
    verbose: bool,
    rounds: Option<u32>,
    window: Option<u32>,
    only: Vec<String>,
}

const NAMES: [&str; 9] = [
    "kv",
    "kv-1",
    "kv-50",
    "kv-50x16",
    "pubsub",
    "pubsub-1",
    "pubsub-8",
    "pubsub-32",
    "memory",
];

impl Options {
    fn from_env() -> std::result::Result<Options, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let env_on = |name: &str| env(name).is_some_and(|v| v != "0");
        let mut o = Options {
            quick: env_on("YUKICOMM_BENCH_QUICK"),
            markdown: env_on("YUKICOMM_BENCH_MARKDOWN"),
            no_redis: false,
            alt: false,
            verbose: false,
            rounds: None,
            window: None,
            only: Vec::new(),
        };
        let mut only = env("YUKICOMM_BENCH_ONLY").into_iter().collect::<Vec<_>>();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--markdown" => o.markdown = true,
                "--no-redis" => o.no_redis = true,
                "--alt" => o.alt = true,
                "--verbose" => o.verbose = true,
                "--only" => only.extend(args.next()),
                "--window" => {
                    let n = args.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
                    o.window = Some(n.ok_or("--window takes a positive number")?);
                }
                "--rounds" => {
                    let n = args.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
                    o.rounds = Some(n.ok_or("--rounds takes a positive number")?);
                }
                _ => {
                    if let Some(v) = a.strip_prefix("--only=") {
                        only.push(v.to_string());
                    }
                }
            }
        }
        for list in only {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !NAMES.contains(&name) {
                    return Err(format!(
                        "--only: unknown measurement '{name}'; known: {}",
                        NAMES.join(", ")
                    ));
                }
                o.only.push(name.to_string());
            }
        }
        Ok(o)
    }

    /// Whether the measurement `name` (such as `kv-50` or `pubsub-8`) runs.
    fn selected(&self, name: &str) -> bool {
        let group = name.split('-').next().unwrap_or(name);
        self.only.is_empty() || self.only.iter().any(|o| o == name || o == group)
    }

    fn any_pubsub(&self) -> bool {
        FAN_OUTS
            .iter()
            .any(|n| self.selected(&format!("pubsub-{n}")))
    }

    fn any_kv(&self) -> bool {
        Shape::ALL.iter().any(|s| self.selected(s.name()))
    }
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Each round measures every rate once for each system; rates are the median
    /// round.
    rounds: u32,
    /// Keys the set/get workloads use (set beforehand, so GETs find them).
    keyspace: u64,
    /// Operations per measurement, by shape.
    one: u64,
    many: u64,
    pipelined: u64,
    /// Messages published per measurement, by fan-out (1, 8, 32).
    messages: [u64; 3],
    /// Keys for the memory measurement.
    memory_keys: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                keyspace: 10_000,
                one: 4_000,
                many: 20_000,
                pipelined: 100_000,
                messages: [20_000, 10_000, 4_000],
                memory_keys: 100_000,
            }
        } else {
            Plan {
                rounds: 5,
                keyspace: 100_000,
                one: 40_000,
                many: 150_000,
                pipelined: 500_000,
                messages: [400_000, 150_000, 50_000],
                memory_keys: 1_000_000,
            }
        }
    }

    fn ops(&self, shape: Shape) -> u64 {
        match shape {
            Shape::One => self.one,
            Shape::Many => self.many,
            Shape::Pipelined => self.pipelined,
        }
    }
}

// ---------------------------------------------------------------------------------
// Child processes

/// The `client` child: set/get workloads, fills and publishing, on command.
async fn client_main(ctx: Context) -> yukicomm::Result<()> {
    let active = ctx.active_channel::<Msg>();
    let store = ctx.store();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || serve(&active, |m| client_command(&store, &rt, m)))
        .await
        .map_err(|e| other(format!("the client's bench thread failed: {e}")))?
}

/// A subscriber child.
async fn subscriber_main(ctx: Context) -> yukicomm::Result<()> {
    let active = ctx.active_channel::<Msg>();
    let store = ctx.store();
    let ch = active.clone();
    tokio::task::spawn_blocking(move || {
        serve(&active, |m| match m {
            Msg::Subscribe {
                target: Target::Yukicomm,
                topic,
                count,
            } => yuki_subscribe(&ch, &store, &topic, count),
            Msg::Subscribe {
                target: Target::Redis(socket),
                topic,
                count,
            } => redis_subscribe(&ch, &socket, &topic, count),
            other => Err(unexpected("main", "Subscribe", &other)),
        })
    })
    .await
    .map_err(|e| other(format!("the subscriber's bench thread failed: {e}")))?
}

/// A child's command loop: runs each command and sends its answer, or `Failed`.
fn serve(ch: &Channel<Msg>, mut run: impl FnMut(Msg) -> Result<Msg>) -> Result<()> {
    send(ch, Msg::Ready)?;
    loop {
        let m = recv(ch, IDLE_TIMEOUT)?;
        if matches!(m, Msg::Quit) {
            return Ok(());
        }
        match run(m) {
            Ok(answer) => send(ch, answer)?,
            Err(e) => {
                let _ = send(ch, Msg::Failed(e.to_string()));
                return Err(e);
            }
        }
    }
}

fn client_command(store: &Store, rt: &tokio::runtime::Handle, m: Msg) -> Result<Msg> {
    match m {
        Msg::Kv {
            target,
            shape,
            op,
            start,
            count,
            keyspace,
            alt,
        } => {
            let w = Work {
                op,
                start,
                count,
                keyspace,
            };
            let elapsed = match target {
                Target::Yukicomm => yuki_kv(store, rt, shape, w, alt)?,
                Target::Redis(socket) => redis_kv(&socket, rt, shape, w, alt)?,
            };
            Ok(Msg::KvDone {
                elapsed_ns: elapsed.as_nanos() as u64,
            })
        }
        Msg::Fill {
            target,
            prefix,
            count,
            op,
        } => {
            match target {
                Target::Yukicomm => rt.block_on(yuki_fill(store, &prefix, count, op))?,
                Target::Redis(socket) => redis_fill(&socket, &prefix, count, op)?,
            }
            Ok(Msg::FillDone)
        }
        Msg::Publish {
            target,
            topic,
            count,
            window,
            subscribers,
            alt,
        } => match target {
            Target::Yukicomm if alt => rt.block_on(yuki_publish(
                store,
                &topic,
                count,
                window as usize,
                subscribers as usize,
            )),
            Target::Yukicomm => rt.block_on(yuki_publish_batches(
                store,
                &topic,
                count,
                window as usize,
                subscribers as usize,
            )),
            Target::Redis(url) if alt => {
                rt.block_on(redis_publish_async(&url, &topic, count, window as usize))
            }
            Target::Redis(url) => redis_publish(&url, &topic, count, window as usize),
        },
        other => Err(unexpected("main", "a command", &other)),
    }
}

/// One set/get workload: `count` operations on keys `(start + i) % keyspace`.
#[derive(Clone, Copy, Debug)]
struct Work {
    op: KvOp,
    start: u64,
    count: u64,
    keyspace: u64,
}

impl Work {
    /// The key numbers client `c` of `clients` handles, in order.
    fn share(self, c: u64, clients: u64) -> impl Iterator<Item = u64> {
        (self.start + c..self.start + self.count)
            .step_by(clients as usize)
            .map(move |i| i % self.keyspace)
    }
}

// --- yukicomm set/get

fn yuki_op(store: &Store, op: KvOp, key: &str, n: u64) -> Result<()> {
    match op {
        KvOp::Set => Ok(store.set(key, &payload(n))?),
        KvOp::Get => {
            let v: Option<Payload> = store.get(key)?;
            check_value(key, n, v.as_deref(), PAYLOAD)
        }
        KvOp::Delete => match store.delete(key)? {
            true => Ok(()),
            false => Err(other(format!("DEL {key}: the key is missing"))),
        },
    }
}

async fn yuki_op_async(store: &Store, op: KvOp, key: &str, n: u64) -> Result<()> {
    match op {
        KvOp::Set => Ok(store.set_async(key, &payload(n)).await?),
        KvOp::Get => {
            let v: Option<Payload> = store.get_async(key).await?;
            check_value(key, n, v.as_deref(), PAYLOAD)
        }
        KvOp::Delete => match store.delete_async(key).await? {
            true => Ok(()),
            false => Err(other(format!("DEL {key}: the key is missing"))),
        },
    }
}

fn yuki_kv(
    store: &Store,
    rt: &tokio::runtime::Handle,
    shape: Shape,
    w: Work,
    alt: bool,
) -> Result<Duration> {
    let start = Instant::now();
    match (shape, alt) {
        (Shape::One, false) => {
            let mut k = String::with_capacity(KEY);
            for n in w.share(0, 1) {
                key_into(&mut k, "key:", n);
                yuki_op(store, w.op, &k, n)?;
            }
        }
        // One task on the runtime, `*_async` calls one at a time.
        (Shape::One, true) => rt.block_on(yuki_task(store.clone(), w, 0, 1, 1))?,
        (Shape::Many, false) => rt.block_on(yuki_tasks(store, w, 1))?,
        // `CLIENTS` threads with blocking calls.
        (Shape::Many, true) => std::thread::scope(|s| {
            let threads: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    s.spawn(move || {
                        let mut k = String::with_capacity(KEY);
                        for n in w.share(c, CLIENTS) {
                            key_into(&mut k, "key:", n);
                            yuki_op(store, w.op, &k, n)?;
                        }
                        Ok::<(), Error>(())
                    })
                })
                .collect();
            threads.into_iter().try_for_each(|t| {
                t.join()
                    .map_err(|_| other("a client thread panicked"))
                    .and_then(|r| r)
            })
        })?,
        (Shape::Pipelined, false) => rt.block_on(yuki_tasks(store, w, IN_FLIGHT))?,
        (Shape::Pipelined, true) => rt.block_on(yuki_rounds(store, w))?,
    }
    Ok(start.elapsed())
}

/// One client as a task: `in_flight` calls in flight, refilled as each completes.
async fn yuki_task(store: Store, w: Work, c: u64, clients: u64, in_flight: usize) -> Result<()> {
    let store = &store;
    futures::stream::iter(w.share(c, clients))
        .map(|n| async move { yuki_op_async(store, w.op, &key("key:", n), n).await })
        .buffer_unordered(in_flight)
        .try_collect::<()>()
        .await
}

/// `CLIENTS` tasks.
async fn yuki_tasks(store: &Store, w: Work, in_flight: usize) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        set.spawn(yuki_task(store.clone(), w, c, CLIENTS, in_flight));
    }
    join_all(set).await
}

/// `CLIENTS` tasks, each sending rounds of `IN_FLIGHT` calls and waiting for all.
async fn yuki_rounds(store: &Store, w: Work) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let store = store.clone();
        set.spawn(async move {
            let mine: Vec<u64> = w.share(c, CLIENTS).collect();
            for round in mine.chunks(IN_FLIGHT) {
                let calls: FuturesUnordered<_> = round
                    .iter()
                    .map(|&n| {
                        let store = &store;
                        async move { yuki_op_async(store, w.op, &key("key:", n), n).await }
                    })
                    .collect();
                calls.try_collect::<()>().await?;
            }
            Ok(())
        });
    }
    join_all(set).await
}

async fn join_all(mut set: tokio::task::JoinSet<Result<()>>) -> Result<()> {
    while let Some(r) = set.join_next().await {
        r.map_err(|e| other(format!("a client task failed: {e}")))??;
    }
    Ok(())
}

async fn yuki_fill(store: &Store, prefix: &str, count: u64, op: KvOp) -> Result<()> {
    futures::stream::iter(0..count)
        .map(|n| async move { yuki_op_async(store, op, &key(prefix, n), n).await })
        .buffer_unordered(FILL_WINDOW)
        .try_collect::<()>()
        .await
}

// --- Redis set/get

fn redis_cmd(op: KvOp, key: &str, n: u64) -> redis::Cmd {
    let mut c = redis::cmd(op.name());
    c.arg(key);
    if op == KvOp::Set {
        c.arg(&value(n)[..]);
    }
    c
}

/// Checks one reply.
fn redis_reply(op: KvOp, key: &str, n: u64, reply: redis::Value) -> Result<()> {
    use redis::Value as V;
    match (op, reply) {
        (KvOp::Set, V::Okay) => Ok(()),
        (KvOp::Get, V::BulkString(b)) => check_value(key, n, Some(&b), VALUE),
        (KvOp::Get, V::Nil) => check_value(key, n, None, VALUE),
        (KvOp::Delete, V::Int(1)) => Ok(()),
        (op, reply) => Err(other(format!(
            "redis: {} {key}: unexpected reply {reply:?}",
            op.name()
        ))),
    }
}

fn redis_op(con: &mut redis::Connection, op: KvOp, key: &str, n: u64) -> Result<()> {
    let reply = redis_cmd(op, key, n).query(con).map_err(rerr("command"))?;
    redis_reply(op, key, n, reply)
}

async fn redis_op_async(
    con: &mut redis::aio::MultiplexedConnection,
    op: KvOp,
    key: &str,
    n: u64,
) -> Result<()> {
    let reply = redis_cmd(op, key, n)
        .query_async(con)
        .await
        .map_err(rerr("command"))?;
    redis_reply(op, key, n, reply)
}

/// Sends the operations on `ns` as one pipeline and checks every reply.
fn redis_pipe(op: KvOp, ns: &[u64]) -> (redis::Pipeline, Vec<String>) {
    let mut p = redis::pipe();
    let keys: Vec<String> = ns.iter().map(|&n| key("key:", n)).collect();
    for (k, &n) in keys.iter().zip(ns) {
        p.add_command(redis_cmd(op, k, n));
    }
    (p, keys)
}

fn redis_replies(op: KvOp, keys: &[String], ns: &[u64], replies: Vec<redis::Value>) -> Result<()> {
    if replies.len() != ns.len() {
        return Err(other(format!(
            "redis: {} replies to a pipeline of {}",
            replies.len(),
            ns.len()
        )));
    }
    for ((k, &n), r) in keys.iter().zip(ns).zip(replies) {
        redis_reply(op, k, n, r)?;
    }
    Ok(())
}

fn redis_kv(
    url: &str,
    rt: &tokio::runtime::Handle,
    shape: Shape,
    w: Work,
    alt: bool,
) -> Result<Duration> {
    match (shape, alt) {
        (Shape::One, false) => {
            let mut con = redis_connect(url)?;
            let start = Instant::now();
            let mut k = String::with_capacity(KEY);
            for n in w.share(0, 1) {
                key_into(&mut k, "key:", n);
                redis_op(&mut con, w.op, &k, n)?;
            }
            Ok(start.elapsed())
        }
        (Shape::One, true) => rt.block_on(async {
            let mut con = redis_connect_async(url).await?;
            let start = Instant::now();
            let mut k = String::with_capacity(KEY);
            for n in w.share(0, 1) {
                key_into(&mut k, "key:", n);
                redis_op_async(&mut con, w.op, &k, n).await?;
            }
            Ok(start.elapsed())
        }),
        (Shape::Many, false) => rt.block_on(redis_tasks(url, w, Feed::OneAtATime, true)),
        (Shape::Many, true) => rt.block_on(redis_tasks(url, w, Feed::OneAtATime, false)),
        (Shape::Pipelined, false) => rt.block_on(redis_tasks(url, w, Feed::Pipelines, true)),
        (Shape::Pipelined, true) => rt.block_on(redis_tasks(url, w, Feed::Concurrent, true)),
    }
}

/// How a Redis client task sends its commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// One command, then wait for its reply.
    OneAtATime,
    /// Pipelines of `IN_FLIGHT` commands, each sent once the previous one is answered.
    Pipelines,
    /// `IN_FLIGHT` concurrent commands, each replaced as it is answered (the
    /// multiplexed connection pipelines them).
    Concurrent,
}

/// `CLIENTS` tasks, each with its own connection (`own`) or all sharing one
/// multiplexed connection.
async fn redis_tasks(url: &str, w: Work, feed: Feed, own: bool) -> Result<Duration> {
    let mut cons = Vec::new();
    for _ in 0..if own { CLIENTS } else { 1 } {
        cons.push(redis_connect_async(url).await?);
    }
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mut con = cons[c as usize % cons.len()].clone();
        set.spawn(async move {
            match feed {
                Feed::OneAtATime => {
                    let mut k = String::with_capacity(KEY);
                    for n in w.share(c, CLIENTS) {
                        key_into(&mut k, "key:", n);
                        redis_op_async(&mut con, w.op, &k, n).await?;
                    }
                    Ok(())
                }
                Feed::Pipelines => {
                    let mine: Vec<u64> = w.share(c, CLIENTS).collect();
                    for ns in mine.chunks(IN_FLIGHT) {
                        let (p, keys) = redis_pipe(w.op, ns);
                        let replies: Vec<redis::Value> =
                            p.query_async(&mut con).await.map_err(rerr("pipeline"))?;
                        redis_replies(w.op, &keys, ns, replies)?;
                    }
                    Ok(())
                }
                Feed::Concurrent => {
                    let con = &con;
                    futures::stream::iter(w.share(c, CLIENTS))
                        .map(|n| async move {
                            let mut con = con.clone();
                            redis_op_async(&mut con, w.op, &key("key:", n), n).await
                        })
                        .buffer_unordered(IN_FLIGHT)
                        .try_collect::<()>()
                        .await
                }
            }
        });
    }
    join_all(set).await?;
    Ok(start.elapsed())
}

fn redis_fill(socket: &str, prefix: &str, count: u64, op: KvOp) -> Result<()> {
    let mut con = redis_connect(socket)?;
    let all: Vec<u64> = (0..count).collect();
    for ns in all.chunks(FILL_WINDOW) {
        let mut p = redis::pipe();
        let keys: Vec<String> = ns.iter().map(|&n| key(prefix, n)).collect();
        for (k, &n) in keys.iter().zip(ns) {
            p.add_command(redis_cmd(op, k, n));
        }
        let replies: Vec<redis::Value> = p.query(&mut con).map_err(rerr("pipeline"))?;
        redis_replies(op, &keys, ns, replies)?;
    }
    Ok(())
}

// --- Publish/subscribe

/// The publisher's pauses when a subscription had no room: 200 µs, doubling while it
/// keeps happening, at most 3.2 ms, back to 200 µs after `4 * window` messages without.
struct Pauses {
    next: Duration,
    last_at: u64,
    count: u64,
}

impl Pauses {
    const FIRST: Duration = Duration::from_micros(200);

    fn new() -> Pauses {
        Pauses {
            next: Self::FIRST,
            last_at: 0,
            count: 0,
        }
    }

    /// Before publishing message `seq`: pauses if `short` (only this thread sleeps:
    /// replies are read by the connection's reader).
    fn at(&mut self, seq: u64, short: bool, window: usize) {
        if short {
            std::thread::sleep(self.next);
            self.count += 1;
            self.next = (self.next * 2).min(Self::FIRST * 16);
            self.last_at = seq;
        } else if seq - self.last_at > 4 * window as u64 {
            self.next = Self::FIRST;
        }
    }
}

/// Batches of `window` messages with `publish_many_async`, one batch at a time (as
/// Redis's pipelines). A reply counting fewer than `subscribers` deliveries per message
/// means a subscription had no room: the publisher then pauses as `yuki_publish` does.
async fn yuki_publish_batches(
    store: &Store,
    topic: &str,
    count: u64,
    window: usize,
    subscribers: usize,
) -> Result<Msg> {
    let (mut reached, mut pauses) = (0u64, Pauses::new());
    let first_ns = now_ns();
    let mut seq = 0;
    while seq < count {
        let end = (seq + window as u64).min(count);
        let r = store
            .publish_many_async(topic, (seq..end).map(payload))
            .await? as u64;
        reached += r;
        let short = r < (end - seq) * subscribers as u64;
        seq = end;
        pauses.at(seq, short, window);
    }
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: pauses.count,
    })
}

/// `window` `publish_async` in flight. A reply counting fewer than `subscribers`
/// subscriptions means one had no room and missed the message: the publisher then lets
/// its requests in flight finish and pauses (200 µs, doubling while it keeps
/// happening, at most 3.2 ms) so that the subscribers catch up.
async fn yuki_publish(
    store: &Store,
    topic: &str,
    count: u64,
    window: usize,
    subscribers: usize,
) -> Result<Msg> {
    let mut inflight = FuturesUnordered::new();
    let (mut reached, mut pauses, mut short) = (0u64, Pauses::new(), false);
    let first_ns = now_ns();
    for seq in 0..count {
        if inflight.len() >= window {
            if let Some(r) = inflight.next().await {
                let r = r?;
                reached += r as u64;
                short |= r < subscribers;
            }
        }
        if short {
            while let Some(r) = inflight.next().await {
                reached += r? as u64;
            }
        }
        pauses.at(seq, std::mem::take(&mut short), window);
        let msg = payload(seq);
        inflight.push(async move { store.publish_async(topic, &msg).await });
    }
    while let Some(r) = inflight.next().await {
        reached += r? as u64;
    }
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: pauses.count,
    })
}

/// Pipelines of `window` PUBLISH on one blocking connection.
fn redis_publish(socket: &str, topic: &str, count: u64, window: usize) -> Result<Msg> {
    let mut con = redis_connect(socket)?;
    let mut reached = 0u64;
    let first_ns = now_ns();
    let mut seq = 0;
    while seq < count {
        let end = (seq + window as u64).min(count);
        let mut p = redis::pipe();
        for s in seq..end {
            p.cmd("PUBLISH").arg(topic).arg(&value(s)[..]);
        }
        let replies: Vec<i64> = p.query(&mut con).map_err(rerr("PUBLISH"))?;
        reached += replies.iter().sum::<i64>() as u64;
        seq = end;
    }
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: 0,
    })
}

/// `window` concurrent PUBLISH on one multiplexed connection.
async fn redis_publish_async(socket: &str, topic: &str, count: u64, window: usize) -> Result<Msg> {
    let con = redis_connect_async(socket).await?;
    let first_ns = now_ns();
    let reached = futures::stream::iter(0..count)
        .map(|seq| {
            let mut con = con.clone();
            async move {
                redis::cmd("PUBLISH")
                    .arg(topic)
                    .arg(&value(seq)[..])
                    .query_async::<i64>(&mut con)
                    .await
                    .map_err(rerr("PUBLISH"))
            }
        })
        .buffer_unordered(window)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n as u64) })
        .await?;
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: 0,
    })
}

/// A subscriber's count: every message must arrive intact, and at most once. (Order is
/// not checked: a publisher with many requests in flight need not send in order.)
struct Tally {
    count: u64,
    received: u64,
    missed: u64,
    /// One bit per message number: which arrived.
    seen: Vec<u64>,
    last_ns: u64,
}

impl Tally {
    fn new(count: u64) -> Tally {
        Tally {
            count,
            received: 0,
            missed: 0,
            seen: vec![0; count.div_ceil(64) as usize],
            last_ns: 0,
        }
    }

    fn message(&mut self, body: &[u8], len: usize) -> Result<()> {
        self.last_ns = now_ns();
        let seq = body
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .unwrap_or(u64::MAX);
        if seq >= self.count || body != &value(seq)[..len] {
            return Err(other(format!(
                "subscriber: message {seq} of {} bytes is not one that was published",
                body.len(),
            )));
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            return Err(other(format!("subscriber: message {seq} arrived twice")));
        }
        self.seen[word] |= bit;
        self.received += 1;
        Ok(())
    }

    fn done(&self) -> Msg {
        Msg::SubDone {
            received: self.received,
            missed: self.missed,
            last_ns: self.last_ns,
        }
    }
}

fn yuki_subscribe(ch: &Channel<Msg>, store: &Store, topic: &str, count: u64) -> Result<Msg> {
    let sub = store.subscriber::<Payload>(topic)?;
    send(ch, Msg::Subscribed)?;
    let mut t = Tally::new(count);
    let mut wait = STEP_TIMEOUT;
    while t.received + t.missed < count {
        match sub.recv_timeout(wait) {
            Ok(p) => {
                t.message(&p.value, PAYLOAD)?;
                wait = TAIL_IDLE;
            }
            Err(SubscriberError::Missed { count, .. }) => t.missed += count,
            Err(SubscriberError::Timeout { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(t.done())
}

fn redis_subscribe(ch: &Channel<Msg>, socket: &str, topic: &str, count: u64) -> Result<Msg> {
    let mut con = redis_connect(socket)?;
    let mut ps = con.as_pubsub();
    ps.subscribe(topic).map_err(rerr("SUBSCRIBE"))?;
    send(ch, Msg::Subscribed)?;
    let mut t = Tally::new(count);
    while t.received < count {
        match ps.get_message() {
            Ok(m) => {
                t.message(m.get_payload_bytes(), VALUE)?;
                if t.received == 1 {
                    ps.set_read_timeout(Some(TAIL_IDLE))
                        .map_err(rerr("set_read_timeout"))?;
                }
            }
            Err(e) if e.is_timeout() => break,
            Err(e) => return Err(rerr("subscriber")(e)),
        }
    }
    // Unsubscribing waits for Redis's answer; the connection just closes instead.
    std::mem::forget(ps);
    drop(con);
    Ok(t.done())
}

// ---------------------------------------------------------------------------------
// Main process

/// The rates of one measurement, one per round.
#[derive(Default)]
struct Rates {
    yuki: Vec<f64>,
    redis: Vec<f64>,
    /// For 50 clients one at a time: Redis with the 50 tasks sharing one multiplexed
    /// connection, as yukicomm's share one hub connection.
    redis_shared: Vec<f64>,
}

struct KvRow {
    shape: Shape,
    op: KvOp,
    rates: Rates,
}

struct PubsubRow {
    subscribers: usize,
    messages: u64,
    rates: Rates,
    /// Messages yukicomm dropped for subscribers without room, over all rounds.
    yuki_missed: u64,
    /// Times yukicomm's publisher paused for them, over all rounds.
    yuki_pauses: u64,
}

struct Memory {
    keys: u64,
    yuki_rss: f64,
    redis: Option<RedisMemory>,
}

struct RedisMemory {
    rss: f64,
    used_memory: f64,
}

struct Report {
    plan: Plan,
    options: Options,
    redis: std::result::Result<RedisInfo, String>,
    kv: Vec<KvRow>,
    pubsub: Vec<PubsubRow>,
    memory: Option<Memory>,
}

struct Main<'a> {
    ctx: &'a MainContext,
    plan: Plan,
    alt: bool,
    verbose: bool,
    /// Publish requests in flight.
    window: u32,
    client: Channel<Msg>,
    subs: Vec<Channel<Msg>>,
    redis: Option<RedisInfo>,
    topics: u64,
}

fn progress(what: &str) {
    eprintln!("store bench: {what}");
}

impl Main<'_> {
    /// Sends a command to the client and waits for its answer.
    fn ask_client(&self, m: Msg) -> Result<Msg> {
        send(&self.client, m)?;
        recv(&self.client, WORK_TIMEOUT)
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = vec![Target::Yukicomm];
        if let Some(r) = &self.redis {
            t.push(Target::Redis(r.url(0)));
        }
        t
    }

    /// Yukicomm then Redis in even rounds, the other way round in odd ones.
    fn ordered(&self, round: u32) -> Vec<Target> {
        let mut t = self.targets();
        if round % 2 == 1 {
            t.reverse();
        }
        t
    }

    fn fill(&self, target: &Target, prefix: &str, count: u64, op: KvOp) -> Result<()> {
        match self.ask_client(Msg::Fill {
            target: target.clone(),
            prefix: prefix.into(),
            count,
            op,
        })? {
            Msg::FillDone => Ok(()),
            m => Err(unexpected(CLIENT, "FillDone", &m)),
        }
    }

    fn kv(&self, target: &Target, shape: Shape, op: KvOp, round: u32, alt: bool) -> Result<f64> {
        let count = self.plan.ops(shape);
        let m = self.ask_client(Msg::Kv {
            target: target.clone(),
            shape,
            op,
            start: round as u64 * count,
            count,
            keyspace: self.plan.keyspace,
            alt,
        })?;
        match m {
            Msg::KvDone { elapsed_ns } => {
                let rate = count as f64 / (elapsed_ns.max(1) as f64 / 1e9);
                if self.verbose {
                    progress(&format!(
                        "  {}{} {} {}: {}",
                        target.name(),
                        if alt { " (alt)" } else { "" },
                        op.name(),
                        shape.name(),
                        ops(rate)
                    ));
                }
                Ok(rate)
            }
            m => Err(unexpected(CLIENT, "KvDone", &m)),
        }
    }

    /// One publish/subscribe measurement: delivered messages/s, the misses and the
    /// publisher's pauses.
    fn pubsub(&mut self, target: &Target, n: usize, count: u64) -> Result<(f64, u64, u64)> {
        self.topics += 1;
        let topic = format!("bench.{}", self.topics);
        let subs = &self.subs[..n];
        for s in subs {
            send(
                s,
                Msg::Subscribe {
                    target: target.clone(),
                    topic: topic.clone(),
                    count,
                },
            )?;
        }
        for s in subs {
            match recv(s, STEP_TIMEOUT)? {
                Msg::Subscribed => {}
                m => return Err(unexpected(&s.name(), "Subscribed", &m)),
            }
        }
        let (first_ns, end_ns, reached, pauses) = match self.ask_client(Msg::Publish {
            target: target.clone(),
            topic,
            count,
            window: self.window,
            subscribers: n as u32,
            alt: self.alt,
        })? {
            Msg::PubDone {
                first_ns,
                end_ns,
                reached,
                pauses,
            } => (first_ns, end_ns, reached, pauses),
            m => return Err(unexpected(CLIENT, "PubDone", &m)),
        };
        let (mut received, mut told, mut last) = (0u64, 0u64, first_ns);
        for s in subs {
            match recv(s, WORK_TIMEOUT)? {
                Msg::SubDone {
                    received: r,
                    missed,
                    last_ns,
                } => {
                    if r + missed > count {
                        return Err(other(format!(
                            "{}: {r} received and {missed} missed of {count} published",
                            s.name()
                        )));
                    }
                    received += r;
                    told += missed;
                    last = last.max(last_ns);
                }
                m => return Err(unexpected(&s.name(), "SubDone", &m)),
            }
        }
        let sent = n as u64 * count;
        // Every message the hub (or Redis) handed to a subscription must have arrived.
        if received != reached {
            return Err(other(format!(
                "{}: {n} subscriber(s): the publisher's replies count {reached} deliveries, \
                 the subscribers received {received} (of {sent})",
                target.name()
            )));
        }
        let missed = sent - received;
        if matches!(target, Target::Redis(_)) && missed > 0 {
            return Err(other(format!(
                "Redis: {n} subscriber(s) received {received} of {sent} messages"
            )));
        }
        if told > missed {
            return Err(other(format!(
                "yukicomm: subscribers were told of {told} misses, {missed} messages are missing"
            )));
        }
        if received == 0 {
            return Err(other(format!("{}: no message arrived", target.name())));
        }
        let secs = (last.saturating_sub(first_ns)).max(1) as f64 / 1e9;
        if self.verbose {
            let publishing = (end_ns.saturating_sub(first_ns)).max(1) as f64 / 1e9;
            progress(&format!(
                "  {} pub/sub to {n}: {} delivered, {missed} missed, {pauses} pauses; \
                 publisher {:.0} k publishes/s; last message {:.1} ms after the last reply",
                target.name(),
                msgs(received as f64 / secs),
                count as f64 / publishing / 1e3,
                last.saturating_sub(end_ns) as f64 / 1e6,
            ));
        }
        Ok((received as f64 / secs, missed, pauses))
    }

    fn memory(&self) -> Result<Memory> {
        let keys = self.plan.memory_keys;
        progress(&format!("memory: yukicomm, {keys} keys"));
        let store = self.ctx.store();
        let len0 = store.len()?;
        settle();
        let before = rss(None)?;
        self.fill(&Target::Yukicomm, "mem:", keys, KvOp::Set)?;
        settle();
        let after = rss(None)?;
        let len1 = store.len()?;
        if len1 != len0 + keys as usize {
            return Err(other(format!(
                "yukicomm: {len1} keys after setting {keys} to a store of {len0}"
            )));
        }
        for n in [0, keys / 2, keys - 1] {
            let k = key("mem:", n);
            let v: Option<Payload> = store.get(&k)?;
            check_value(&k, n, v.as_deref(), PAYLOAD)?;
        }
        let yuki_rss = after.saturating_sub(before) as f64 / keys as f64;

        let redis = match &self.redis {
            None => None,
            Some(r) => {
                progress(&format!("memory: Redis, {keys} keys"));
                // Database 1, empty: Redis gets a dictionary of its own for these keys,
                // sized for them alone. (yukicomm's one table, holding the set/get keys
                // too, needs the same size for 1,000,000 keys as for 1,100,000.)
                let mut con = redis_connect(&r.url(1))?;
                let size = |con: &mut redis::Connection| -> Result<u64> {
                    redis::cmd("DBSIZE").query(con).map_err(rerr("DBSIZE"))
                };
                let len0 = size(&mut con)?;
                settle();
                let (before, used0) = (rss(Some(r.pid))?, redis_used_memory(&mut con)?);
                let target = Target::Redis(r.url(1));
                self.fill(&target, "mem:", keys, KvOp::Set)?;
                settle();
                let (after, used1) = (rss(Some(r.pid))?, redis_used_memory(&mut con)?);
                let len1 = size(&mut con)?;
                if len1 != len0 + keys {
                    return Err(other(format!(
                        "Redis: {len1} keys after setting {keys} to a database of {len0}"
                    )));
                }
                for n in [0, keys / 2, keys - 1] {
                    let k = key("mem:", n);
                    let v: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&k)
                        .query(&mut con)
                        .map_err(rerr("GET"))?;
                    check_value(&k, n, v.as_deref(), VALUE)?;
                }
                Some(RedisMemory {
                    rss: after.saturating_sub(before) as f64 / keys as f64,
                    used_memory: used1.saturating_sub(used0) as f64 / keys as f64,
                })
            }
        };
        Ok(Memory {
            keys,
            yuki_rss,
            redis,
        })
    }
}

/// Lets freed memory and late writes settle before reading a memory figure.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run_main(
    ctx: &MainContext,
    options: &Options,
    redis: std::result::Result<RedisInfo, String>,
) -> Result<Report> {
    let mut plan = Plan::new(options.quick);
    if let Some(n) = options.rounds {
        plan.rounds = n;
    }
    // A 62-byte payload must be stored as 64 bytes, like the Redis values.
    let encoded = rmp_serde::to_vec_named(&payload(0))
        .map_err(|e| other(format!("cannot encode a payload: {e}")))?;
    if encoded.len() != VALUE {
        return Err(other(format!(
            "a {PAYLOAD}-byte payload encodes as {} bytes, not {VALUE}",
            encoded.len()
        )));
    }
    let client = ctx.get_channel::<Msg>(&format!("{CLIENT}-active"))?;
    let subs = if options.any_pubsub() {
        (0..MAX_SUBSCRIBERS)
            .map(|i| ctx.get_channel::<Msg>(&format!("{}-active", sub_name(i))))
            .collect::<std::result::Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    for ch in std::iter::once(&client).chain(&subs) {
        match recv(ch, STEP_TIMEOUT)? {
            Msg::Ready => {}
            m => return Err(unexpected(&ch.name(), "Ready", &m)),
        }
    }
    let mut m = Main {
        ctx,
        plan,
        alt: options.alt,
        verbose: options.verbose,
        window: options.window.unwrap_or(PUBLISH_WINDOW as u32),
        client,
        subs,
        redis: redis.as_ref().ok().cloned(),
        topics: 0,
    };

    let mut kv: Vec<KvRow> = Vec::new();
    if options.any_kv() {
        for t in m.targets() {
            progress(&format!("{}: setting {} keys", t.name(), plan.keyspace));
            m.fill(&t, "key:", plan.keyspace, KvOp::Set)?;
        }
        for shape in Shape::ALL
            .into_iter()
            .filter(|s| options.selected(s.name()))
        {
            for op in [KvOp::Set, KvOp::Get] {
                kv.push(KvRow {
                    shape,
                    op,
                    rates: Rates::default(),
                });
            }
        }
    }
    let mut pubsub: Vec<PubsubRow> = FAN_OUTS
        .iter()
        .zip(plan.messages)
        .filter(|(n, _)| options.selected(&format!("pubsub-{n}")))
        .map(|(&subscribers, messages)| PubsubRow {
            subscribers,
            messages,
            rates: Rates::default(),
            yuki_missed: 0,
            yuki_pauses: 0,
        })
        .collect();

    for round in 0..plan.rounds {
        progress(&format!("round {} of {}", round + 1, plan.rounds));
        for row in &mut kv {
            for t in m.ordered(round) {
                let rate = m.kv(&t, row.shape, row.op, round, m.alt)?;
                match t {
                    Target::Yukicomm => row.rates.yuki.push(rate),
                    Target::Redis(_) => row.rates.redis.push(rate),
                }
            }
            if row.shape == Shape::Many && !m.alt {
                if let Some(t @ Target::Redis(_)) = m.targets().pop() {
                    let rate = m.kv(&t, row.shape, row.op, round, true)?;
                    row.rates.redis_shared.push(rate);
                }
            }
        }
        for row in &mut pubsub {
            for t in m.ordered(round) {
                let (rate, missed, pauses) = m.pubsub(&t, row.subscribers, row.messages)?;
                match t {
                    Target::Yukicomm => {
                        row.rates.yuki.push(rate);
                        row.yuki_missed += missed;
                        row.yuki_pauses += pauses;
                    }
                    Target::Redis(_) => row.rates.redis.push(rate),
                }
            }
        }
    }
    // Memory last: the rates are measured on stores holding only their own keys.
    let memory = if options.selected("memory") {
        Some(m.memory()?)
    } else {
        None
    };
    send(&m.client, Msg::Quit)?;
    for s in &m.subs {
        send(s, Msg::Quit)?;
    }
    Ok(Report {
        plan,
        options: options.clone(),
        redis,
        kv,
        pubsub,
        memory,
    })
}

fn sub_name(i: usize) -> String {
    format!("sub{i:02}")
}

// ---------------------------------------------------------------------------------
// Output

struct Row {
    measure: String,
    yuki: String,
    redis: String,
    ratio: String,
    target: String,
    met: String,
}

fn ops(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M ops/s", x / 1e6)
    } else {
        format!("{:.1} k ops/s", x / 1e3)
    }
}

fn msgs(x: f64) -> String {
    format!("{:.2} M msg/s", x / 1e6)
}

/// A row comparing two figures against a ratio target; `higher` says which way is
/// better.
fn compare(
    measure: String,
    yuki: (f64, String),
    redis: Option<(f64, String)>,
    goal: f64,
    higher: bool,
) -> Row {
    let target = if higher {
        format!("≥ {goal:.1}x")
    } else {
        format!("≤ {goal:.1}x")
    };
    match redis {
        Some((r, text)) => {
            let ratio = yuki.0 / r;
            let met = if higher { ratio >= goal } else { ratio <= goal };
            Row {
                measure,
                yuki: yuki.1,
                redis: text,
                ratio: ratio_text(ratio, goal),
                target,
                met: if met { "yes" } else { "no" }.into(),
            }
        }
        None => Row {
            measure,
            yuki: yuki.1,
            redis: "skipped".into(),
            ratio: "—".into(),
            target,
            met: "—".into(),
        },
    }
}

/// The ratio with two decimals, or three where two would round it onto the goal (so a
/// "1.00x" never stands beside "no").
fn ratio_text(ratio: f64, goal: f64) -> String {
    if format!("{ratio:.2}") == format!("{goal:.2}") && ratio != goal {
        format!("{ratio:.3}x")
    } else {
        format!("{ratio:.2}x")
    }
}

fn rows(r: &Report) -> Vec<Row> {
    let mut rows = Vec::new();
    let have_redis = r.redis.is_ok();
    for row in &r.kv {
        let y = median(row.rates.yuki.clone());
        let red = have_redis.then(|| {
            let x = median(row.rates.redis.clone());
            (x, ops(x))
        });
        let goal = if row.shape == Shape::One { 1.3 } else { 1.0 };
        rows.push(compare(
            format!("{}, {}", row.op.name(), row.shape.describe()),
            (y, ops(y)),
            red,
            goal,
            true,
        ));
        if !row.rates.redis_shared.is_empty() {
            let x = median(row.rates.redis_shared.clone());
            let mut extra = compare(
                format!(
                    "{}, {}; Redis on one shared connection",
                    row.op.name(),
                    row.shape.describe()
                ),
                (y, ops(y)),
                Some((x, ops(x))),
                goal,
                true,
            );
            extra.target = format!("(ref.) {}", extra.target);
            rows.push(extra);
        }
    }
    for row in &r.pubsub {
        let y = median(row.rates.yuki.clone());
        let red = have_redis.then(|| {
            let x = median(row.rates.redis.clone());
            (x, msgs(x))
        });
        let subs = match row.subscribers {
            1 => "1 subscriber".to_string(),
            n => format!("{n} subscribers"),
        };
        rows.push(compare(
            format!("pub/sub 64 B to {subs}, delivered"),
            (
                y,
                format!(
                    "{} ({} missed, {} pauses)",
                    msgs(y),
                    row.yuki_missed,
                    row.yuki_pauses
                ),
            ),
            red,
            1.0,
            true,
        ));
    }
    if let Some(m) = &r.memory {
        let red = m.redis.as_ref().map(|x| {
            (
                x.rss,
                format!("{:.0} B (used_memory {:.0} B)", x.rss, x.used_memory),
            )
        });
        rows.push(compare(
            format!("memory per key, {} keys (RSS growth)", thousands(m.keys)),
            (m.yuki_rss, format!("{:.0} B", m.yuki_rss)),
            red,
            1.0,
            false,
        ));
    }
    rows
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

fn redis_column(r: &Report) -> String {
    match &r.redis {
        Ok(info) => format!("Redis {}", info.version),
        Err(_) => "Redis".into(),
    }
}

fn settings(r: &Report) -> String {
    let p = &r.plan;
    let mut s = format!(
        "mode: {}{}; {} round(s), rates are the median round; keys {KEY} B, values {VALUE} B \
         ({PAYLOAD}-byte Payload for yukicomm); {} keys in use; ops per measurement: {} (1 client), \
         {} ({CLIENTS} clients), {} ({CLIENTS}x{IN_FLIGHT}); messages published: {} / {} / {} \
         (1 / 8 / 32 subscribers), published in batches of {}; all clients, the publisher and \
         the subscribers are child processes",
        if r.options.quick { "quick" } else { "full" },
        if r.options.alt { ", alternative drivers (--alt)" } else { "" },
        p.rounds,
        thousands(p.keyspace),
        thousands(p.one),
        thousands(p.many),
        thousands(p.pipelined),
        thousands(p.messages[0]),
        thousands(p.messages[1]),
        thousands(p.messages[2]),
        r.options.window.unwrap_or(PUBLISH_WINDOW as u32),
    );
    match &r.redis {
        Ok(info) => {
            let _ = write!(s, "; Redis {} over its Unix socket, same run", info.version);
        }
        Err(why) => {
            let _ = write!(s, "; Redis comparison skipped: {why}");
        }
    }
    s
}

const RATIO_NOTE: &str = "ratio = yukicomm / Redis: for rates higher is better, for memory \
                          lower is better.";

/// How the clients were driven.
fn drivers(r: &Report) -> &'static str {
    if r.options.alt {
        "drivers (--alt): yukicomm: 1 client = one task with *_async calls; 50 clients = 50 \
         threads with blocking calls; 16 in flight = rounds of 16 calls awaited together. \
         Redis: 1 client = one task on a multiplexed connection; 50 clients = 50 tasks \
         sharing one multiplexed connection; 16 in flight = 16 concurrent commands on each \
         of 50 multiplexed connections; publisher = concurrent PUBLISH on a multiplexed \
         connection. yukicomm's publisher: publish_async calls in flight."
    } else {
        "drivers: yukicomm: 1 client = blocking calls on one thread; 50 clients = 50 tokio \
         tasks sharing the store handle (one hub connection); 16 in flight = 50 tasks each \
         keeping 16 *_async calls in flight; publisher = publish_many_async batches, one at \
         a time, pausing when a reply shows a subscription without room. Redis (redis crate): \
         1 client = a blocking connection; 50 clients = 50 tasks on 50 multiplexed \
         connections (the (ref.) rows: 50 tasks sharing one multiplexed connection, as \
         yukicomm's tasks share one hub connection); 16 in flight = pipelines of 16 on each of 50 connections; publisher \
         = pipelines of PUBLISH on a blocking connection; subscribers (both) = a blocking \
         receive loop in each subscriber process."
    }
}

fn text_table(r: &Report) -> String {
    let rows = rows(r);
    let head = [
        "measure".to_string(),
        "yukicomm".to_string(),
        redis_column(r),
        "ratio".to_string(),
        "target".to_string(),
        "met".to_string(),
    ];
    let cells = |row: &Row| {
        [
            row.measure.clone(),
            row.yuki.clone(),
            row.redis.clone(),
            row.ratio.clone(),
            row.target.clone(),
            row.met.clone(),
        ]
    };
    let mut widths = head.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(cells(row)) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, cols: [String; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 || i == 5 {
                let _ = write!(s, "{c}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(s, "{}{c}  ", " ".repeat(pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    let mut out = String::new();
    let _ = writeln!(out, "yukicomm store benchmark: clients in child processes");
    let _ = writeln!(out, "{}\n", settings(r));
    line(&mut out, head);
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in &rows {
        line(&mut out, cells(row));
    }
    let _ = writeln!(out, "\n{RATIO_NOTE}\n\n{}", drivers(r));
    out
}

fn markdown_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", settings(r));
    let _ = writeln!(
        out,
        "| measure | yukicomm | {} | ratio | target | met |",
        redis_column(r)
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|---|");
    for row in rows(r) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.measure, row.yuki, row.redis, row.ratio, row.target, row.met
        );
    }
    let _ = writeln!(out, "\n{RATIO_NOTE}\n\n{}", drivers(r));
    out
}

// ---------------------------------------------------------------------------------

fn main() -> ExitCode {
    support::init_logging();
    let is_main = support::is_main();
    let options = match Options::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("store bench: {e}");
            return ExitCode::FAILURE;
        }
    };

    // The Redis server lives on this (the main) thread's stack: dropped, so killed, when
    // `main` returns or unwinds.
    let mut _server = None;
    let mut redis = Err("not started".to_string());
    if is_main {
        let limit = Duration::from_secs(if options.quick { 120 } else { 900 });
        support::deadline("store bench", limit);
        redis = if options.no_redis {
            Err("--no-redis".to_string())
        } else {
            match find_in_path("redis-server") {
                None => Err("redis-server is not on PATH".to_string()),
                Some(program) => match start_redis(&program) {
                    Ok(server) => {
                        let info = server.info.clone();
                        _server = Some(server);
                        Ok(info)
                    }
                    Err(e) => {
                        eprintln!("store bench: cannot start redis-server: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            }
        };
        if let Err(why) = &redis {
            eprintln!("store bench: {why}; the Redis comparison is skipped");
        }
    }

    let mut app = App::new();
    app.add_target(CLIENT, client_main)
        .restart(RestartPolicy::Never)
        .stop_timeout(Duration::from_secs(5));
    // Children declare every target (they dispatch on their name); the main process
    // starts subscribers only when a pub/sub measurement runs.
    let subscribers = if !is_main || options.any_pubsub() {
        MAX_SUBSCRIBERS
    } else {
        0
    };
    for i in 0..subscribers {
        app.add_target(&sub_name(i), subscriber_main)
            .restart(RestartPolicy::Never)
            .stop_timeout(Duration::from_secs(5));
    }
    support::run("store bench", app, move |ctx| {
        let report = run_main(ctx, &options, redis).map_err(|e| e.to_string())?;
        Ok(if options.markdown {
            markdown_table(&report)
        } else {
            text_table(&report)
        })
    })
}
