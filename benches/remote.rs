//! Remote benchmark: the main process and one process joined over TCP with mutual TLS
//! 1.3 (on 127.0.0.1), measured beside raw TCP and raw TLS between the same two
//! processes.
//!
//! The remote process is this bench binary started again with `YUKICOMM_HUB=yk://..`,
//! `YUKICOMM_JOIN=<token>` and `YUKICOMM_STATE_DIR` (a private directory under the
//! temporary directory, removed at the end); it joins with `yukicomm::connect`, as a
//! process on another machine would. Its channels are `bench-active` (main → remote)
//! and `bench-passive` (remote → main).
//!
//! Measures, each round measuring everything once so that both sides of every ratio see
//! the same conditions:
//!
//! - round trip of a 64-byte message: the main process sends on `bench-active` and
//!   waits with a blocking `recv` on `bench-passive`; the remote process echoes from a
//!   blocking `recv` loop (p50, p99); beside a raw TCP ping-pong of 64 bytes (std
//!   `TcpStream`, `TCP_NODELAY`), and a raw TLS ping-pong (each ping a TLS record);
//! - one-way throughput of 64-byte messages (msg/s), main → remote (timed from the first
//!   send to the remote's acknowledgement of the last) and remote → main (timed from the
//!   request to the last message received); beside raw TLS (rustls, the hub's TLS 1.3
//!   configurations, the deployment's certificates, blocking `rustls::StreamOwned`
//!   over std `TcpStream` with `TCP_NODELAY`) streaming 64-byte length-prefixed
//!   frames, one frame per write (one TLS record each) and 64 frames per write;
//! - one-way throughput of 64 KiB messages (MB/s, payload bytes), both directions;
//!   beside raw TLS streaming 64 KiB frames, one per write.
//!
//! ```text
//! cargo bench --bench remote                 # full run, about 25 s
//! cargo bench --bench remote -- --quick      # small counts, a few seconds (CI)
//! cargo bench --bench remote -- --markdown   # the results as a markdown table
//! cargo bench --bench remote -- --only big   # some of it: a comma-separated list of
//!                                            # `latency`, `small`, `big`
//! ```
//!
//! `YUKICOMM_BENCH_QUICK=1` and `YUKICOMM_BENCH_MARKDOWN=1` do the same as the flags.
//!
//! Every wait has a deadline: if the remote process dies or stops answering, the
//! benchmark fails with an error and a non-zero exit status instead of hanging.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use serde::{Deserialize, Serialize};
use yukicomm::{App, Channel, Error, MainContext, Payload, TryRecvError};
use yukicomm_remote::authority::{self, Authority, Identity};
use yukicomm_remote::token::JoinToken;

use support::options::Options;
use support::report::{mbs, msgs, ratio, us, Align, Table};
use support::stats::{Latency, Rate};
use support::{io, other};

/// The remote process's name; its channels are `bench-active` and `bench-passive`.
const REMOTE: &str = "bench";
/// Set in the remote process's environment: this binary plays the remote side.
const ROLE: &str = "YUKICOMM_BENCH_REMOTE";
/// The longest wait for any one message, acknowledgement, connection or socket read.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the remote process waits for the next command.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Small message payload.
const SMALL: usize = 64;
/// Large message payload.
const BIG: usize = 64 * 1024;
/// Frames per write in the batched raw TLS stream.
const BATCH: usize = 64;
/// Bytes of the raw frames' length prefix.
const PREFIX: usize = 4;

type Result<T> = std::result::Result<T, Error>;

/// Everything that travels on the remote process's two channels: commands on
/// `bench-active`, answers on `bench-passive`.
#[derive(Serialize, Deserialize)]
enum Msg {
    /// A payload: echoed, streamed or counted depending on the phase.
    #[serde(rename = "d")]
    Data(Payload),
    /// Remote to main: the remote's loop is running.
    Ready,
    /// Main to remote: `count` messages of `size` bytes follow; acknowledge with `Count`.
    Sink { count: u64, size: u32 },
    /// Main to remote: send `count` messages of `size` bytes, then `Count`.
    Source { count: u64, size: u32 },
    /// The number of messages received or sent.
    Count(u64),
    /// Main to remote: connect to this address twice, first plain TCP (the ping-pong),
    /// then TLS; answered by `Ready` once both are up.
    Connect(String),
    /// Main to remote: echo this many 64-byte pings on the plain TCP connection, or on
    /// the TLS one.
    RawPing { count: u64, tls: bool },
    /// Main to remote: read `frames` frames of `size` payload bytes from the TLS
    /// connection, then write their count (8 bytes, little-endian) on it.
    RawSink { frames: u64, size: u32 },
    /// Main to remote: write `frames` frames of `size` payload bytes, `per_write` per
    /// write, on the TLS connection.
    RawSource {
        frames: u64,
        size: u32,
        per_write: u32,
    },
    /// Remote to main: the remote process failed, and why.
    Failed(String),
    /// Main to remote: stop.
    Quit,
}

fn describe(m: &Msg) -> String {
    match m {
        Msg::Data(b) => format!("a data message of {} bytes", b.len()),
        Msg::Ready => "Ready".into(),
        Msg::Sink { count, size } => format!("Sink {{ count: {count}, size: {size} }}"),
        Msg::Source { count, size } => format!("Source {{ count: {count}, size: {size} }}"),
        Msg::Count(n) => format!("Count({n})"),
        Msg::Connect(a) => format!("Connect({a})"),
        Msg::RawPing { count, tls } => format!("RawPing {{ count: {count}, tls: {tls} }}"),
        Msg::RawSink { frames, size } => format!("RawSink {{ frames: {frames}, size: {size} }}"),
        Msg::RawSource {
            frames,
            size,
            per_write,
        } => format!("RawSource {{ frames: {frames}, size: {size}, per_write: {per_write} }}"),
        Msg::Failed(why) => format!("the remote process's failure: {why}"),
        Msg::Quit => "Quit".into(),
    }
}

fn unexpected(expected: &str, got: &Msg) -> Error {
    other(format!("expected {expected}, received {}", describe(got)))
}

/// Sends, waiting for room at most `STEP_TIMEOUT`.
fn send(ch: &Channel<Msg>, m: Msg) -> Result<()> {
    support::send(ch, m, STEP_TIMEOUT)
}

fn recv(ch: &Channel<Msg>) -> Result<Msg> {
    Ok(ch.recv_timeout(STEP_TIMEOUT)?)
}

// ---------------------------------------------------------------------------------
// Counts

#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Each round measures everything; latencies pool the samples of every round,
    /// rates take the median round.
    rounds: u32,
    /// Which measurements run (`--only`).
    only: Only,
    warmup: u64,
    round_trips: u64,
    small: u64,
    big: u64,
}

impl Plan {
    fn new(quick: bool, only: Only) -> Plan {
        if quick {
            Plan {
                only,
                rounds: 1,
                warmup: 200,
                round_trips: 1_000,
                small: 20_000,
                big: 200,
            }
        } else {
            Plan {
                only,
                rounds: 5,
                warmup: 500,
                round_trips: 4_000,
                small: 400_000,
                big: 4_000,
            }
        }
    }

    fn batched(&self) -> u64 {
        self.small / BATCH as u64 * BATCH as u64
    }
}

/// The measurements to run: all by default.
#[derive(Clone, Copy, Debug)]
struct Only {
    latency: bool,
    small: bool,
    big: bool,
}

impl Only {
    fn parse(list: &str) -> std::result::Result<Only, String> {
        let mut only = Only {
            latency: false,
            small: false,
            big: false,
        };
        for part in list.split(',') {
            match part.trim() {
                "latency" => only.latency = true,
                "small" => only.small = true,
                "big" => only.big = true,
                other => {
                    return Err(format!(
                        "--only: unknown measurement '{other}' (latency, small, big)"
                    ))
                }
            }
        }
        Ok(only)
    }
}

// ---------------------------------------------------------------------------------
// Results

/// One direction's throughputs, one entry per round.
#[derive(Default)]
struct Direction {
    small: Vec<Rate>,
    raw_single: Vec<Rate>,
    raw_batched: Vec<Rate>,
    big: Vec<Rate>,
    raw_big: Vec<Rate>,
}

/// The median rounds of the 64-byte throughputs of one direction.
struct Small {
    yukicomm: Rate,
    raw_single: Rate,
    raw_batched: Rate,
}

/// The median rounds of the 64 KiB throughputs of one direction.
struct Big {
    yukicomm: Rate,
    raw: Rate,
}

impl Direction {
    /// The median rounds (`None` where not measured).
    fn medians(self) -> (Option<Small>, Option<Big>) {
        let small = (!self.small.is_empty()).then(|| Small {
            yukicomm: Rate::median(self.small),
            raw_single: Rate::median(self.raw_single),
            raw_batched: Rate::median(self.raw_batched),
        });
        let big = (!self.big.is_empty()).then(|| Big {
            yukicomm: Rate::median(self.big),
            raw: Rate::median(self.raw_big),
        });
        (small, big)
    }
}

/// The round trips.
struct Latencies {
    yukicomm: Latency,
    /// The raw TCP ping-pong.
    tcp: Latency,
    /// The raw TLS ping-pong.
    tls: Latency,
}

/// What was measured: `None` for what `--only` left out.
struct Report {
    plan: Plan,
    quick: bool,
    latency: Option<Latencies>,
    /// Main → remote, then remote → main.
    small: Option<(Small, Small)>,
    big: Option<(Big, Big)>,
}

// ---------------------------------------------------------------------------------
// Main process

/// The remote process: killed and reaped if the bench ends before it does.
struct RemoteProcess(Child);

impl RemoteProcess {
    /// Fails if the process has exited.
    fn check(&mut self) -> Result<()> {
        match self.0.try_wait() {
            Ok(Some(status)) => Err(other(format!("the remote process exited ({status})"))),
            Ok(None) => Ok(()),
            Err(e) => Err(io("the remote process: wait")(e)),
        }
    }

    /// Waits up to `limit` for the process to exit by itself.
    fn wait(mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.0.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(other(format!("the remote process exited ({status})")))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(io("the remote process: wait")(e)),
            }
        }
        Err(other(format!(
            "the remote process did not exit within {limit:?} of Quit"
        )))
    }
}

impl Drop for RemoteProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts this binary as the remote process, joining the main process's listener with
/// a fresh token.
fn start_remote(ctx: &MainContext, state: &Path) -> Result<RemoteProcess> {
    let token = ctx.join_token(REMOTE, Duration::from_secs(600))?;
    let addr = ctx
        .remote_addr()
        .ok_or_else(|| other("the main process does not listen for remote processes"))?;
    let me = std::env::current_exe().map_err(io("this bench's executable"))?;
    let child = std::process::Command::new(me)
        .env(ROLE, "1")
        .env("YUKICOMM_HUB", format!("yk://{addr}"))
        .env("YUKICOMM_JOIN", token)
        .env("YUKICOMM_STATE_DIR", state)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(io("starting the remote process"))?;
    Ok(RemoteProcess(child))
}

/// The raw connections between the two processes.
struct Raw {
    tcp: TcpStream,
    tls: StreamOwned<ServerConnection, TcpStream>,
}

fn run_main(ctx: &MainContext, state: &Path, plan: Plan, quick: bool) -> Result<Report> {
    let mut remote = start_remote(ctx, &state.join("remote"))?;
    let active = ctx.get_channel::<Msg>(&format!("{REMOTE}-active"))?;
    let passive = ctx.get_channel::<Msg>(&format!("{REMOTE}-passive"))?;
    // The remote process enrols, joins, then says it is ready.
    match recv_checked(&passive, &mut remote)? {
        Msg::Ready => {}
        other => return Err(unexpected("Ready", &other)),
    }
    let mut raw = connect_raw(&active, &passive, &mut remote, &state.join("hub"))?;

    let (mut round_trip, mut tcp_ping, mut tls_ping) = (Vec::new(), Vec::new(), Vec::new());
    let (mut to_remote, mut to_main) = (Direction::default(), Direction::default());
    for _ in 0..plan.rounds {
        if plan.only.latency {
            round_trip.extend(round_trips(&active, &passive, plan)?);
            tcp_ping.extend(raw_pings(&mut raw.tcp, false, &active, plan)?);
            tls_ping.extend(raw_pings(&mut raw.tls, true, &active, plan)?);
        }
        if plan.only.small {
            small_round(
                &mut raw,
                &active,
                &passive,
                plan,
                &mut to_remote,
                &mut to_main,
            )?;
        }
        if plan.only.big {
            big_round(
                &mut raw,
                &active,
                &passive,
                plan,
                &mut to_remote,
                &mut to_main,
            )?;
        }
        remote.check()?;
    }
    send(&active, Msg::Quit)?;
    remote.wait(STEP_TIMEOUT)?;

    let latency = (!round_trip.is_empty()).then(|| Latencies {
        yukicomm: Latency::from_samples(round_trip),
        tcp: Latency::from_samples(tcp_ping),
        tls: Latency::from_samples(tls_ping),
    });
    let ((small_out, big_out), (small_in, big_in)) = (to_remote.medians(), to_main.medians());
    Ok(Report {
        plan,
        quick,
        latency,
        small: small_out.zip(small_in),
        big: big_out.zip(big_in),
    })
}

/// The 64-byte throughputs of one round, yukicomm then raw TLS.
fn small_round(
    raw: &mut Raw,
    active: &Channel<Msg>,
    passive: &Channel<Msg>,
    plan: Plan,
    to_remote: &mut Direction,
    to_main: &mut Direction,
) -> Result<()> {
    to_remote
        .small
        .push(to_remote_rate(active, passive, SMALL, plan.small)?);
    to_main
        .small
        .push(to_main_rate(active, passive, SMALL, plan.small)?);
    let (single, batched) = (plan.small, plan.batched());
    to_remote
        .raw_single
        .push(raw_to_remote(&mut raw.tls, active, SMALL, 1, single)?);
    to_remote
        .raw_batched
        .push(raw_to_remote(&mut raw.tls, active, SMALL, BATCH, batched)?);
    to_main
        .raw_single
        .push(raw_to_main(&mut raw.tls, active, SMALL, 1, single)?);
    to_main
        .raw_batched
        .push(raw_to_main(&mut raw.tls, active, SMALL, BATCH, batched)?);
    Ok(())
}

/// The 64 KiB throughputs of one round, yukicomm then raw TLS.
fn big_round(
    raw: &mut Raw,
    active: &Channel<Msg>,
    passive: &Channel<Msg>,
    plan: Plan,
    to_remote: &mut Direction,
    to_main: &mut Direction,
) -> Result<()> {
    to_remote
        .big
        .push(to_remote_rate(active, passive, BIG, plan.big)?);
    to_main
        .big
        .push(to_main_rate(active, passive, BIG, plan.big)?);
    to_remote
        .raw_big
        .push(raw_to_remote(&mut raw.tls, active, BIG, 1, plan.big)?);
    to_main
        .raw_big
        .push(raw_to_main(&mut raw.tls, active, BIG, 1, plan.big)?);
    Ok(())
}

/// Waits for the next message on `passive`, failing early if the remote process exits.
fn recv_checked(passive: &Channel<Msg>, remote: &mut RemoteProcess) -> Result<Msg> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match passive.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => return Ok(m),
            Err(yukicomm::RecvTimeoutError::Timeout { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        remote.check()?;
        if Instant::now() >= deadline {
            return Err(other(format!(
                "the remote process did not answer within {STEP_TIMEOUT:?}"
            )));
        }
    }
}

/// Listens on 127.0.0.1, has the remote process connect twice (plain TCP, then TLS with
/// its certificate) and completes the TLS handshake as the hub would, with a hub
/// certificate of the same authority.
fn connect_raw(
    active: &Channel<Msg>,
    passive: &Channel<Msg>,
    remote: &mut RemoteProcess,
    hub_state: &Path,
) -> Result<Raw> {
    let authority = Authority::open(hub_state).map_err(|e| other(e.to_string()))?;
    let config = yukicomm_remote::tls::server_config(authority.hub_identity(), authority.ca())
        .map_err(|e| other(e.to_string()))?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("raw: bind 127.0.0.1:0"))?;
    let addr = listener.local_addr().map_err(io("raw: local address"))?;
    send(active, Msg::Connect(addr.to_string()))?;
    let tcp = accept(&listener, passive, remote)?;
    let tls_tcp = accept(&listener, passive, remote)?;
    let conn = ServerConnection::new(config).map_err(|e| other(format!("raw TLS: {e}")))?;
    let mut tls = StreamOwned::new(conn, tls_tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(io("raw TLS: handshake"))?;
    }
    match recv_checked(passive, remote)? {
        Msg::Ready => {}
        other => return Err(unexpected("Ready after Connect", &other)),
    }
    Ok(Raw { tcp, tls })
}

/// Accepts the remote process's next connection, failing if it reports an error, exits,
/// or `STEP_TIMEOUT` passes.
fn accept(
    listener: &TcpListener,
    passive: &Channel<Msg>,
    remote: &mut RemoteProcess,
) -> Result<TcpStream> {
    listener
        .set_nonblocking(true)
        .map_err(io("raw: set_nonblocking"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(io("raw: set_nonblocking"))?;
                set_timeouts(&s, STEP_TIMEOUT)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io("raw: accept")(e)),
        }
        match passive.try_recv() {
            Ok(m) => return Err(unexpected("a raw connection", &m)),
            Err(TryRecvError::Empty { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        remote.check()?;
        if Instant::now() >= deadline {
            return Err(other(format!(
                "the remote process did not connect within {STEP_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn set_timeouts(s: &TcpStream, limit: Duration) -> Result<()> {
    s.set_nodelay(true).map_err(io("raw: TCP_NODELAY"))?;
    s.set_read_timeout(Some(limit))
        .map_err(io("raw: set_read_timeout"))?;
    s.set_write_timeout(Some(limit))
        .map_err(io("raw: set_write_timeout"))
}

/// A 64-byte payload carrying its sequence number.
fn numbered(i: u64) -> [u8; SMALL] {
    let mut p = [0x5Au8; SMALL];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

/// Ping-pong of 64-byte messages: sent on `bench-active`, echoed on `bench-passive`;
/// each echo must match what was sent.
fn round_trips(active: &Channel<Msg>, passive: &Channel<Msg>, plan: Plan) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    for i in 0..plan.warmup + plan.round_trips {
        let sent = Payload::from(numbered(i).to_vec());
        let start = Instant::now();
        send(active, Msg::Data(sent.clone()))?;
        let back = recv(passive)?;
        let elapsed = start.elapsed();
        match back {
            Msg::Data(b) if b == sent => {}
            Msg::Data(_) => {
                return Err(other(format!(
                    "round trip {i}: the echo differs from what was sent"
                )))
            }
            other => return Err(unexpected("the echo", &other)),
        }
        if i >= plan.warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// The same ping-pong on the plain TCP connection, or on the TLS one (each ping a TLS
/// record).
fn raw_pings<S: Read + Write>(
    s: &mut S,
    tls: bool,
    active: &Channel<Msg>,
    plan: Plan,
) -> Result<Vec<Duration>> {
    let count = plan.warmup + plan.round_trips;
    send(active, Msg::RawPing { count, tls })?;
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    let mut pong = [0u8; SMALL];
    for i in 0..count {
        let ping = numbered(i);
        let start = Instant::now();
        s.write_all(&ping).map_err(io("raw ping: write"))?;
        s.flush().map_err(io("raw ping: flush"))?;
        s.read_exact(&mut pong).map_err(io("raw ping: read"))?;
        let elapsed = start.elapsed();
        if ping != pong {
            return Err(other(format!(
                "raw ping {i}: the echo differs from what was sent"
            )));
        }
        if i >= plan.warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// Main sends `count` messages as fast as it can; timed until the remote process
/// acknowledges the last one.
fn to_remote_rate(
    active: &Channel<Msg>,
    passive: &Channel<Msg>,
    size: usize,
    count: u64,
) -> Result<Rate> {
    let data = Payload::from(vec![0x5A; size]);
    send(
        active,
        Msg::Sink {
            count,
            size: size as u32,
        },
    )?;
    let start = Instant::now();
    for _ in 0..count {
        send(active, Msg::Data(data.clone()))?;
    }
    expect_count(passive, count)?;
    Ok(Rate {
        count,
        size,
        elapsed: start.elapsed(),
    })
}

/// Receives the remote's `Count(count)`.
fn expect_count(ch: &Channel<Msg>, count: u64) -> Result<()> {
    match recv(ch)? {
        Msg::Count(n) if n == count => Ok(()),
        other => Err(unexpected(&format!("Count({count})"), &other)),
    }
}

/// The remote process sends `count` messages as fast as it can; timed from the request
/// until the last one is received.
fn to_main_rate(
    active: &Channel<Msg>,
    passive: &Channel<Msg>,
    size: usize,
    count: u64,
) -> Result<Rate> {
    let start = Instant::now();
    send(
        active,
        Msg::Source {
            count,
            size: size as u32,
        },
    )?;
    for i in 0..count {
        match recv(passive)? {
            Msg::Data(b) if b.len() == size => {}
            other => {
                return Err(unexpected(
                    &format!("data message {i} of {count} ({size} bytes)"),
                    &other,
                ))
            }
        }
    }
    let elapsed = start.elapsed();
    expect_count(passive, count)?;
    Ok(Rate {
        count,
        size,
        elapsed,
    })
}

/// A length-prefixed frame with `size` payload bytes.
fn frame(size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(PREFIX + size);
    f.extend_from_slice(&(size as u32).to_le_bytes());
    f.resize(PREFIX + size, 0x5A);
    f
}

/// Writes `frames` frames of `size` bytes, `per_write` per write (`frames` a multiple of
/// it); each write is encrypted into its own TLS record(s) and sent at once.
fn write_frames<W: Write>(w: &mut W, size: usize, per_write: usize, frames: u64) -> Result<()> {
    let buf = frame(size).repeat(per_write);
    for _ in 0..frames / per_write as u64 {
        w.write_all(&buf).map_err(io("raw TLS: write"))?;
    }
    w.flush().map_err(io("raw TLS: flush"))
}

/// Main streams frames over TLS; timed from the first write until the remote's count.
fn raw_to_remote<S: Read + Write>(
    tls: &mut S,
    active: &Channel<Msg>,
    size: usize,
    per_write: usize,
    frames: u64,
) -> Result<Rate> {
    send(
        active,
        Msg::RawSink {
            frames,
            size: size as u32,
        },
    )?;
    let start = Instant::now();
    write_frames(tls, size, per_write, frames)?;
    let mut ack = [0u8; 8];
    tls.read_exact(&mut ack)
        .map_err(io("raw TLS: waiting for the remote's count"))?;
    let elapsed = start.elapsed();
    let n = u64::from_le_bytes(ack);
    if n != frames {
        return Err(other(format!(
            "raw TLS: the remote counted {n} frames, {frames} were sent"
        )));
    }
    Ok(Rate {
        count: frames,
        size,
        elapsed,
    })
}

/// The remote streams frames over TLS; timed from the request until the last frame.
fn raw_to_main<S: Read + Write>(
    tls: &mut S,
    active: &Channel<Msg>,
    size: usize,
    per_write: usize,
    frames: u64,
) -> Result<Rate> {
    let start = Instant::now();
    send(
        active,
        Msg::RawSource {
            frames,
            size: size as u32,
            per_write: per_write as u32,
        },
    )?;
    let n = drain_frames(tls, frames, size)?;
    let elapsed = start.elapsed();
    if n != frames {
        return Err(other(format!(
            "raw TLS: {n} frames arrived, {frames} were sent"
        )));
    }
    Ok(Rate {
        count: frames,
        size,
        elapsed,
    })
}

/// Reads length-prefixed frames of `size` bytes until `count` have arrived; returns how
/// many did. Stops at a frame boundary: the stream carries nothing else meanwhile.
fn drain_frames<R: Read>(r: &mut R, count: u64, size: usize) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut frames = 0u64;
    let mut prefix = [0u8; PREFIX];
    let mut have = 0usize;
    let mut body_left = 0usize;
    while frames < count {
        let n = r.read(&mut buf).map_err(io("raw TLS: read"))?;
        if n == 0 {
            return Err(other(format!(
                "raw TLS: closed after {frames} of {count} frames"
            )));
        }
        let mut i = 0;
        while i < n {
            if body_left > 0 {
                let take = body_left.min(n - i);
                i += take;
                body_left -= take;
                if body_left == 0 {
                    frames += 1;
                }
                continue;
            }
            prefix[have] = buf[i];
            have += 1;
            i += 1;
            if have == PREFIX {
                have = 0;
                body_left = u32::from_le_bytes(prefix) as usize;
                if body_left != size {
                    return Err(other(format!(
                        "raw TLS: a frame of {body_left} bytes, expected {size}"
                    )));
                }
            }
        }
    }
    Ok(frames)
}

// ---------------------------------------------------------------------------------
// Remote process

/// The remote side: joins with the environment the main process set, then serves
/// commands until `Quit`. Returns the process's exit status.
fn remote_main() -> ExitCode {
    // A last resort: never outlive a bench that stopped talking.
    support::deadline("remote bench process", Duration::from_secs(900));
    match remote_run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remote bench process: {e}");
            ExitCode::FAILURE
        }
    }
}

fn remote_run() -> Result<()> {
    // `connect` removes the variables once read: what the raw TLS link needs first.
    let token = std::env::var("YUKICOMM_JOIN").map_err(|_| other("YUKICOMM_JOIN is not set"))?;
    let token = JoinToken::parse(&token).map_err(|e| other(e.to_string()))?;
    let state = std::env::var_os("YUKICOMM_STATE_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| other("YUKICOMM_STATE_DIR is not set"))?;
    let ctx = yukicomm::connect()?;
    let active = ctx.active_channel::<Msg>();
    let passive = ctx.passive_channel::<Msg>();
    let result = serve(&active, &passive, &token, &state);
    if let Err(e) = &result {
        let _ = passive.send_timeout(Msg::Failed(e.to_string()), Duration::from_secs(1));
    }
    result
}

/// The remote's connections for the raw measurements.
struct RawRemote {
    tcp: TcpStream,
    tls: StreamOwned<ClientConnection, TcpStream>,
}

fn serve(
    active: &Channel<Msg>,
    passive: &Channel<Msg>,
    token: &JoinToken,
    state: &Path,
) -> Result<()> {
    send(passive, Msg::Ready)?;
    let mut raw: Option<RawRemote> = None;
    loop {
        match active.recv_timeout(IDLE_TIMEOUT)? {
            Msg::Data(b) => send(passive, Msg::Data(b))?,
            Msg::Sink { count, size } => {
                for i in 0..count {
                    match recv(active)? {
                        Msg::Data(b) if b.len() == size as usize => {}
                        other => {
                            return Err(unexpected(
                                &format!("data message {i} of {count} ({size} bytes)"),
                                &other,
                            ))
                        }
                    }
                }
                send(passive, Msg::Count(count))?;
            }
            Msg::Source { count, size } => {
                let data = Payload::from(vec![0x5A; size as usize]);
                for _ in 0..count {
                    send(passive, Msg::Data(data.clone()))?;
                }
                send(passive, Msg::Count(count))?;
            }
            Msg::Connect(addr) => {
                raw = Some(connect_remote(&addr, token, state)?);
                send(passive, Msg::Ready)?;
            }
            Msg::RawPing { count, tls } => {
                let r = raw
                    .as_mut()
                    .ok_or_else(|| other("RawPing before Connect"))?;
                if tls {
                    echo(&mut r.tls, count)?;
                } else {
                    echo(&mut r.tcp, count)?;
                }
            }
            Msg::RawSink { frames, size } => {
                let r = raw
                    .as_mut()
                    .ok_or_else(|| other("RawSink before Connect"))?;
                let n = drain_frames(&mut r.tls, frames, size as usize)?;
                r.tls
                    .write_all(&n.to_le_bytes())
                    .map_err(io("raw TLS: write the count"))?;
                r.tls.flush().map_err(io("raw TLS: flush"))?;
            }
            Msg::RawSource {
                frames,
                size,
                per_write,
            } => {
                let r = raw
                    .as_mut()
                    .ok_or_else(|| other("RawSource before Connect"))?;
                write_frames(&mut r.tls, size as usize, per_write as usize, frames)?;
            }
            Msg::Quit => return Ok(()),
            other => return Err(unexpected("a command", &other)),
        }
    }
}

/// Echoes `count` 64-byte pings.
fn echo<S: Read + Write>(s: &mut S, count: u64) -> Result<()> {
    let mut buf = [0u8; SMALL];
    for _ in 0..count {
        s.read_exact(&mut buf).map_err(io("raw ping: read"))?;
        s.write_all(&buf).map_err(io("raw ping: write"))?;
        s.flush().map_err(io("raw ping: flush"))?;
    }
    Ok(())
}

/// Connects to the main process's raw listener twice: plain TCP, then TLS with this
/// process's certificate (kept in the state directory by the enrolment) and the client
/// configuration the link uses.
fn connect_remote(addr: &str, token: &JoinToken, state: &Path) -> Result<RawRemote> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| other(format!("raw: '{addr}': {e}")))?;
    let connect = || -> Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
            .map_err(io(format!("raw: connect to {addr}")))?;
        set_timeouts(&s, STEP_TIMEOUT)?;
        Ok(s)
    };
    let tcp = connect()?;
    let dir = state.join(&token.fingerprint[..16]).join(&token.name);
    let identity = Identity {
        chain: vec![authority::read_cert(&dir.join("cert.pem")).map_err(|e| other(e.to_string()))?],
        key: authority::read_key(&dir.join("key.pem")).map_err(|e| other(e.to_string()))?,
    };
    let config = yukicomm_remote::tls::client_config(&token.fingerprint, Some(&identity))
        .map_err(|e| other(e.to_string()))?;
    let conn = ClientConnection::new(Arc::clone(&config), yukicomm_remote::tls::hub_name())
        .map_err(|e| other(format!("raw TLS: {e}")))?;
    let mut tls = StreamOwned::new(conn, connect()?);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(io("raw TLS: handshake"))?;
    }
    Ok(RawRemote { tcp, tls })
}

// ---------------------------------------------------------------------------------
// Output

fn rows(r: &Report) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    if let Some(l) = &r.latency {
        for (q, value, tcp, tls) in [
            ("p50", l.yukicomm.p50, l.tcp.p50, l.tls.p50),
            ("p99", l.yukicomm.p99, l.tcp.p99, l.tls.p99),
        ] {
            for (what, floor) in [("raw TCP", tcp), ("raw TLS", tls)] {
                rows.push(vec![
                    format!("round trip 64 B, {q}"),
                    us(value),
                    format!("{what} ping-pong {q} {}", us(floor)),
                    ratio(value.as_secs_f64() / floor.as_secs_f64()),
                ]);
            }
        }
    }
    if let Some((out, back)) = &r.small {
        for (what, rates) in [("main → remote", out), ("remote → main", back)] {
            for (floor, raw) in [
                ("raw TLS, 1 frame per write", &rates.raw_single),
                ("raw TLS, 64 frames per write", &rates.raw_batched),
            ] {
                rows.push(vec![
                    format!("64 B messages, {what}"),
                    msgs(rates.yukicomm.msgs_per_s()),
                    format!("{floor} {}", msgs(raw.msgs_per_s())),
                    ratio(rates.yukicomm.msgs_per_s() / raw.msgs_per_s()),
                ]);
            }
        }
    }
    if let Some((out, back)) = &r.big {
        for (what, rates) in [("main → remote", out), ("remote → main", back)] {
            rows.push(vec![
                format!("64 KiB messages, {what}"),
                mbs(rates.yukicomm.mb_per_s()),
                format!("raw TLS 64 KiB writes {}", mbs(rates.raw.mb_per_s())),
                ratio(rates.yukicomm.mb_per_s() / rates.raw.mb_per_s()),
            ]);
        }
    }
    rows
}

fn table(r: &Report) -> Table {
    let p = &r.plan;
    Table {
        title: "yukicomm remote benchmark: main process <-> one process joined over TCP + TLS 1.3"
            .into(),
        settings: format!(
            "mode: {}; 127.0.0.1; {} rounds, each of: round trips: {} after {} warm-up; \
             64 B messages: {} ({} batched raw); 64 KiB messages: {}; raw comparisons in \
             the same direction as the row; latencies pool every round's samples, rates \
             are the median round",
            if r.quick { "quick" } else { "full" },
            p.rounds,
            p.round_trips,
            p.warmup,
            p.small,
            p.batched(),
            p.big,
        ),
        head: Table::head([
            ("compared with".into(), Align::Left),
            ("ratio".into(), Align::Right),
        ]),
        rows: rows(r),
        notes: vec![
            "ratio = yukicomm / the other: for latency, above 1 is slower; for \
             throughput, below 1 is slower."
                .into(),
            "Targets: round trip p50 at most 1.5x raw TCP; 64 B one-way at least \
             1,000,000 msg/s; 64 KiB one-way at least 0.7x raw TLS."
                .into(),
        ],
    }
}

// ---------------------------------------------------------------------------------

/// Removes the bench's state directory (the authority, the remote's certificate).
struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> ExitCode {
    support::init_logging();
    if std::env::var_os(ROLE).is_some() {
        return remote_main();
    }
    let mut only = None;
    let options = Options::parse(|arg, rest| {
        if arg == "--only" {
            let list = rest.next().ok_or("--only needs a list")?;
            only = Some(Only::parse(&list)?);
        }
        Ok::<(), String>(())
    });
    let options = match options {
        Ok(o) => o,
        Err(e) => {
            eprintln!("remote bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let only = only.unwrap_or(Only {
        latency: true,
        small: true,
        big: true,
    });
    let plan = Plan::new(options.quick, only);
    let limit = Duration::from_secs(if options.quick { 60 } else { 300 });
    support::deadline("remote bench", limit);

    let state = support::temp_path("yukicomm-bench-remote", "");
    if let Err(e) = authority::private_dir(&state) {
        eprintln!("remote bench: {e}");
        return ExitCode::FAILURE;
    }
    let _cleanup = RemoveDirOnDrop(state.clone());
    let mut app = App::new();
    app.listen_remote("127.0.0.1:0")
        .state_dir(state.join("hub"));
    support::run("remote bench", app, move |ctx| {
        let report = run_main(ctx, &state, plan, options.quick).map_err(|e| e.to_string())?;
        Ok(table(&report).render(options.markdown))
    })
}
