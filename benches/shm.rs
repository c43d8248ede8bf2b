//! Shared-memory benchmark: main process ↔ child with the child's connection in shared
//! memory (the default on one machine, `docs/PROTOCOL.md` §20) and with it kept on its
//! Unix socket (`YUKICOMM_SHM=0`), beside a pipe ping-pong floor and the shared-memory
//! libraries users would pick instead: iceoryx2 and shmem-ipc.
//!
//! The processes:
//!
//! - `shm`: a child started with `App::add_target` (this binary re-executed); its
//!   connection moves into shared memory by itself;
//! - `socket`: a child started with `App::add_command`, this binary re-executed with
//!   `YUKICOMM_SHM=0` in its environment, so its connection stays on its socket;
//! - the peer process: this binary re-executed by the main process with a plain
//!   `std::process::Command`, talking over a socket pair (its standard input) for
//!   commands and descriptors; every peer and the floor run between the main process
//!   and it.
//!
//! Each child reports whether `/proc/self/maps` holds a `yukicomm-ring` mapping; the
//! bench fails if a child is not on the transport it should be.
//!
//! Measures, each round measuring everything once (the two children in alternating
//! order) so that both sides of every ratio see the same conditions:
//!
//! - round trip of a 64-byte message: the main process sends and waits with a blocking
//!   `recv`; the child echoes from a blocking `recv` loop (p50, p99);
//! - one-way throughput of 64-byte messages (msg/s), main → child (timed from the first
//!   send to the child's acknowledgement of the last) and child → main (timed from the
//!   request to the last message received);
//! - one-way throughput of 64 KiB messages (MB/s, payload bytes), both directions;
//! - the floor: a ping-pong of 64 bytes over two pipes, blocking `read`/`write`: the
//!   kernel's wake-up floor;
//! - iceoryx2 publish-subscribe, main process → peer: 64 B and 64 KiB with `send_copy`,
//!   64 KiB loaned (`loan_uninit`, payload written in place, `send`), and a round trip
//!   over two services whose receivers block in their event listener;
//! - shmem-ipc's shared ring, main process → peer: 64 B and 64 KiB items, and a round
//!   trip over two rings, each side waiting on the ring's eventfd.
//!
//! Run it:
//!
//! ```text
//! cargo bench --bench shm                 # full run, well under 90 s
//! cargo bench --bench shm -- --quick      # small counts, a few seconds (CI)
//! cargo bench --bench shm -- --markdown   # the results as a markdown table
//! ```
//!
//! `YUKICOMM_BENCH_QUICK=1` and `YUKICOMM_BENCH_MARKDOWN=1` do the same as the flags.
//! Unknown arguments (such as the `--bench` that `cargo bench` passes) are ignored.
//! Every wait has a deadline: if a child or the peer dies or stops answering, the
//! benchmark fails with an error and a non-zero exit status instead of hanging.

mod support;

use std::fmt::Debug;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iceoryx2::node::Node;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::BackpressureAction;
use iceoryx2::prelude::{
    ipc, BackpressureStrategy, LogLevel, NodeBuilder, ServiceName, SignalHandlingMode, ZeroCopySend,
};
use serde::{Deserialize, Serialize};
use shmem_ipc::sharedring::{Receiver, Sender};
use yukicomm::{App, Channel, Context, Error, MainContext, Payload, RestartPolicy};
use yukicomm_link::shm::{recv_fds, send_fds};

use support::options::Options;
use support::report::{mbs, msgs, ratio, us, Align, Table};
use support::stats::{Latency, Rate};
use support::{io, other};

/// The child whose connection moves into shared memory; its channel is `shm-active`.
const SHM_CHILD: &str = "shm";
/// The child started with `YUKICOMM_SHM=0`; its channel is `socket-active`.
const SOCKET_CHILD: &str = "socket";
/// Set in a re-executed process's environment: `socket-child` or `peer`.
const ROLE: &str = "YUKICOMM_BENCH_SHM_ROLE";
/// The longest wait for any one message, acknowledgement, reply or measurement step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a child or the peer waits for the next command.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Small message payload.
const SMALL: usize = 64;
/// Large message payload.
const BIG: usize = 64 * 1024;
/// Byte of every payload.
const FILL: u8 = 0x5A;
/// iceoryx2: the subscriber's buffer, in samples, for 64 B and 64 KiB.
const ICE_SMALL_BUFFER: usize = 1024;
const ICE_BIG_BUFFER: usize = 16;
/// shmem-ipc: ring capacities in items (1 MiB each for the streams, as yukicomm's rings).
const RING_SMALL: usize = 16 * 1024;
const RING_BIG: usize = 16;
const RING_RT: usize = 64;
/// Descriptors the peer receives: two pipe ends, then three (memfd, "not empty" eventfd,
/// "not full" eventfd) per shmem-ipc ring: small, big, ping, pong.
const PEER_FDS: usize = 2 + 4 * 3;
/// Versions of the peers (as in Cargo.toml).
const ICEORYX2_VERSION: &str = "0.9.3";
const SHMEM_IPC_VERSION: &str = "0.3.0";

type Result<T> = std::result::Result<T, Error>;

/// Everything that travels on a child's `active` channel.
#[derive(Serialize, Deserialize)]
enum Msg {
    /// A payload: echoed, streamed or counted depending on the phase.
    #[serde(rename = "d")]
    Data(Payload),
    /// Child to main: the child's loop is running; `ring` says whether its connection
    /// is in shared memory.
    Ready { ring: bool },
    /// Main to child: `count` messages of `size` bytes follow; acknowledge with `Count`.
    Sink { count: u64, size: u32 },
    /// Main to child: send `count` messages of `size` bytes, then `Count`.
    Source { count: u64, size: u32 },
    /// The number of messages received or sent.
    Count(u64),
    /// Main to child: stop.
    Quit,
}

fn describe(m: &Msg) -> String {
    match m {
        Msg::Data(b) => format!("a data message of {} bytes", b.len()),
        Msg::Ready { ring } => format!("Ready {{ ring: {ring} }}"),
        Msg::Sink { count, size } => format!("Sink {{ count: {count}, size: {size} }}"),
        Msg::Source { count, size } => format!("Source {{ count: {count}, size: {size} }}"),
        Msg::Count(n) => format!("Count({n})"),
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

/// An iceoryx2 failure, with what was being done.
fn ice<E: Debug>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| other(format!("iceoryx2: {what}: {e:?}"))
}

/// A shmem-ipc failure, with what was being done.
fn ring(what: &'static str) -> impl FnOnce(shmem_ipc::Error) -> Error {
    move |e| other(format!("shmem-ipc: {what}: {e}"))
}

// ---------------------------------------------------------------------------------
// Counts

#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Each round measures everything; latencies pool the samples of every round,
    /// rates take the median round.
    rounds: u32,
    warmup: u64,
    round_trips: u64,
    small: u64,
    big: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                warmup: 100,
                round_trips: 1_000,
                small: 20_000,
                big: 200,
            }
        } else {
            // Nine rounds: the figures of a shared machine drift from round to round.
            Plan {
                rounds: 9,
                warmup: 500,
                round_trips: 4_000,
                small: 400_000,
                big: 4_000,
            }
        }
    }

    fn exchanges(&self) -> u64 {
        self.warmup + self.round_trips
    }
}

// ---------------------------------------------------------------------------------
// Results

/// One yukicomm transport's samples over the rounds.
#[derive(Default)]
struct Samples {
    rt: Vec<Duration>,
    small_to_child: Vec<Rate>,
    small_to_main: Vec<Rate>,
    big_to_child: Vec<Rate>,
    big_to_main: Vec<Rate>,
}

/// The peers' and the floor's samples over the rounds.
#[derive(Default)]
struct PeerSamples {
    pipe_rt: Vec<Duration>,
    ice_rt: Vec<Duration>,
    ice_small: Vec<Rate>,
    ice_big: Vec<Rate>,
    ice_loan: Vec<Rate>,
    ring_rt: Vec<Duration>,
    ring_small: Vec<Rate>,
    ring_big: Vec<Rate>,
}

/// One yukicomm transport's figures.
struct Side {
    rt: Latency,
    small_to_child: Rate,
    small_to_main: Rate,
    big_to_child: Rate,
    big_to_main: Rate,
}

impl Side {
    fn from(s: Samples) -> Side {
        Side {
            rt: Latency::from_samples(s.rt),
            small_to_child: Rate::median(s.small_to_child),
            small_to_main: Rate::median(s.small_to_main),
            big_to_child: Rate::median(s.big_to_child),
            big_to_main: Rate::median(s.big_to_main),
        }
    }
}

struct Report {
    plan: Plan,
    quick: bool,
    shm: Side,
    socket: Side,
    pipe_rt: Latency,
    ice_rt: Latency,
    ice_small: Rate,
    ice_big: Rate,
    ice_loan: Rate,
    ring_rt: Latency,
    ring_small: Rate,
    ring_big: Rate,
}

// ---------------------------------------------------------------------------------
// Main process

fn run_main(ctx: &MainContext, plan: Plan, quick: bool) -> Result<Report> {
    let shm = ctx.get_channel::<Msg>(&format!("{SHM_CHILD}-active"))?;
    let socket = ctx.get_channel::<Msg>(&format!("{SOCKET_CHILD}-active"))?;
    expect_ready(&shm, SHM_CHILD, true)?;
    expect_ready(&socket, SOCKET_CHILD, false)?;
    let mut peer = Peer::start()?;

    let (mut on_shm, mut on_socket) = (Samples::default(), Samples::default());
    let mut peers = PeerSamples::default();
    for round in 0..plan.rounds {
        let mut children = [(&shm, &mut on_shm), (&socket, &mut on_socket)];
        if round % 2 == 1 {
            children.reverse();
        }
        for (ch, samples) in children {
            samples.rt.extend(round_trips(ch, plan)?);
            samples
                .small_to_child
                .push(to_child(ch, SMALL, plan.small)?);
            samples.small_to_main.push(to_main(ch, SMALL, plan.small)?);
            samples.big_to_child.push(to_child(ch, BIG, plan.big)?);
            samples.big_to_main.push(to_main(ch, BIG, plan.big)?);
        }
        peers
            .pipe_rt
            .extend(peer.guarded("the pipe ping-pong", |p| p.pipe_round_trips(plan))?);
        peers.ice_small.push(peer.guarded("iceoryx2 64 B", |p| {
            p.ice_stream::<SMALL>(Loan::Copy, plan.small)
        })?);
        peers.ice_big.push(peer.guarded("iceoryx2 64 KiB", |p| {
            p.ice_stream::<BIG>(Loan::Copy, plan.big)
        })?);
        peers
            .ice_loan
            .push(peer.guarded("iceoryx2 loaned 64 KiB", |p| {
                p.ice_stream::<BIG>(Loan::InPlace, plan.big)
            })?);
        peers
            .ice_rt
            .extend(peer.guarded("the iceoryx2 round trips", |p| p.ice_round_trips(plan))?);
        peers
            .ring_small
            .push(peer.guarded("shmem-ipc 64 B", |p| p.ring_stream_small(plan.small))?);
        peers
            .ring_big
            .push(peer.guarded("shmem-ipc 64 KiB", |p| p.ring_stream_big(plan.big))?);
        peers
            .ring_rt
            .extend(peer.guarded("the shmem-ipc round trips", |p| p.ring_round_trips(plan))?);
    }
    send(&shm, Msg::Quit)?;
    send(&socket, Msg::Quit)?;
    peer.quit()?;

    Ok(Report {
        plan,
        quick,
        shm: Side::from(on_shm),
        socket: Side::from(on_socket),
        pipe_rt: Latency::from_samples(peers.pipe_rt),
        ice_rt: Latency::from_samples(peers.ice_rt),
        ice_small: Rate::median(peers.ice_small),
        ice_big: Rate::median(peers.ice_big),
        ice_loan: Rate::median(peers.ice_loan),
        ring_rt: Latency::from_samples(peers.ring_rt),
        ring_small: Rate::median(peers.ring_small),
        ring_big: Rate::median(peers.ring_big),
    })
}

/// The child's `Ready`: fails unless its connection is on the transport it should be.
fn expect_ready(ch: &Channel<Msg>, name: &str, want_ring: bool) -> Result<()> {
    let transport = |ring: bool| {
        if ring {
            "in shared memory"
        } else {
            "on its socket"
        }
    };
    match recv(ch)? {
        Msg::Ready { ring } if ring == want_ring => Ok(()),
        Msg::Ready { ring } => Err(other(format!(
            "child '{name}': its connection is {}, it should be {}",
            transport(ring),
            transport(want_ring)
        ))),
        other => Err(unexpected("Ready", &other)),
    }
}

/// Ping-pong of 64-byte messages; each payload carries its sequence number and the echo
/// must match it.
fn round_trips(ch: &Channel<Msg>, plan: Plan) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    let mut payload = [FILL; SMALL];
    for i in 0..plan.exchanges() {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        let sent = Payload::from(payload.to_vec());
        let start = Instant::now();
        send(ch, Msg::Data(sent.clone()))?;
        let back = recv(ch)?;
        let elapsed = start.elapsed();
        match back {
            Msg::Data(b) if b == sent => {}
            Msg::Data(_) => {
                return Err(other(format!(
                    "round trip {i} on '{}': the echo differs from what was sent",
                    ch.name()
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

/// Main sends `count` messages as fast as it can; timed until the child acknowledges
/// the last one.
fn to_child(ch: &Channel<Msg>, size: usize, count: u64) -> Result<Rate> {
    let data = Payload::from(vec![FILL; size]);
    send(
        ch,
        Msg::Sink {
            count,
            size: size as u32,
        },
    )?;
    let start = Instant::now();
    for _ in 0..count {
        send(ch, Msg::Data(data.clone()))?;
    }
    expect_count(ch, count)?;
    Ok(Rate {
        count,
        size,
        elapsed: start.elapsed(),
    })
}

/// Receives the child's `Count(count)`.
fn expect_count(ch: &Channel<Msg>, count: u64) -> Result<()> {
    match recv(ch)? {
        Msg::Count(n) if n == count => Ok(()),
        other => Err(unexpected(&format!("Count({count})"), &other)),
    }
}

/// The child sends `count` messages as fast as it can; timed from the request until
/// the last one is received.
fn to_main(ch: &Channel<Msg>, size: usize, count: u64) -> Result<Rate> {
    let start = Instant::now();
    send(
        ch,
        Msg::Source {
            count,
            size: size as u32,
        },
    )?;
    for i in 0..count {
        match recv(ch)? {
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
    expect_count(ch, count)?;
    Ok(Rate {
        count,
        size,
        elapsed,
    })
}

// ---------------------------------------------------------------------------------
// The peer process, seen from the main process

/// Kills the peer process when a measurement step outlives `STEP_TIMEOUT`, so that a
/// blocking read (on a pipe) ends with an error instead of waiting forever.
struct Watchdog {
    state: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    armed: Option<(Instant, String)>,
    fired: Option<String>,
    stop: bool,
}

impl Watchdog {
    fn start(pid: u32) -> Result<Watchdog> {
        let pid = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| other("the peer process has no id"))?;
        let state = Arc::new(Mutex::new(WatchState::default()));
        let watched = state.clone();
        std::thread::Builder::new()
            .name("shm-bench-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(20));
                let mut s = watched.lock().unwrap_or_else(|e| e.into_inner());
                if s.stop {
                    return;
                }
                if let Some((deadline, what)) = &s.armed {
                    if Instant::now() >= *deadline {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        s.fired = Some(what.clone());
                        s.armed = None;
                    }
                }
            })
            .map_err(io("starting the watchdog thread"))?;
        Ok(Watchdog { state })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.lock().stop = true;
    }
}

/// Whether a 64 KiB iceoryx2 sample is sent with `send_copy` or written in place.
#[derive(Clone, Copy)]
enum Loan {
    Copy,
    InPlace,
}

/// The main process's iceoryx2 ports. The node goes last (fields drop in order).
struct IceMain {
    small: Publisher<ipc::Service, [u8; SMALL], ()>,
    big: Publisher<ipc::Service, [u8; BIG], ()>,
    ping: Publisher<ipc::Service, [u8; SMALL], ()>,
    ping_event: Notifier<ipc::Service>,
    pong: Subscriber<ipc::Service, [u8; SMALL], ()>,
    pong_event: Listener<ipc::Service>,
    _node: Node<ipc::Service>,
}

/// The main process's shmem-ipc rings.
struct RingsMain {
    small: Sender<[u8; SMALL]>,
    big: Sender<[u8; BIG]>,
    ping: Sender<[u8; SMALL]>,
    pong: Receiver<[u8; SMALL]>,
}

/// The peer process, its control socket, and the main process's ends of everything
/// shared with it. Killed and reaped if the bench ends before it does.
struct Peer {
    child: Child,
    lines: BufReader<UnixStream>,
    control: UnixStream,
    watchdog: Watchdog,
    /// Pipe to the peer (ping), pipe from the peer (pong).
    pipe_out: File,
    pipe_in: File,
    ice: IceMain,
    rings: RingsMain,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `service` names a service of this run: the prefix keeps runs apart.
fn service_name(prefix: &str, service: &str) -> Result<ServiceName> {
    ServiceName::new(&format!("{prefix}/{service}")).map_err(ice("a service name"))
}

fn ice_node() -> Result<Node<ipc::Service>> {
    // The bench's processes keep their own signal handling (the supervisor's).
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(ice("creating a node"))
}

/// A publisher of a publish-subscribe service that never drops samples: while the
/// subscriber's buffer is full it retries (spinning, yielding, then sleeping) until
/// `STEP_TIMEOUT`, then fails.
fn ice_publisher<T: Debug + ZeroCopySend + 'static>(
    node: &Node<ipc::Service>,
    prefix: &str,
    name: &str,
    buffer: usize,
) -> Result<Publisher<ipc::Service, T, ()>> {
    ice_service::<T>(node, prefix, name, buffer)?
        .publisher_builder()
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .set_backpressure_handler(|info: &iceoryx2::port::BackpressureInfo| {
            if info.elapsed_time < STEP_TIMEOUT {
                BackpressureAction::Retry
            } else {
                BackpressureAction::DiscardDataAndFail
            }
        })
        .create()
        .map_err(ice("creating a publisher"))
}

fn ice_subscriber<T: Debug + ZeroCopySend + 'static>(
    node: &Node<ipc::Service>,
    prefix: &str,
    name: &str,
    buffer: usize,
) -> Result<Subscriber<ipc::Service, T, ()>> {
    ice_service::<T>(node, prefix, name, buffer)?
        .subscriber_builder()
        .buffer_size(buffer)
        .create()
        .map_err(ice("creating a subscriber"))
}

fn ice_service<T: Debug + ZeroCopySend + 'static>(
    node: &Node<ipc::Service>,
    prefix: &str,
    name: &str,
    buffer: usize,
) -> Result<iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, T, ()>> {
    node.service_builder(&service_name(prefix, name)?)
        .publish_subscribe::<T>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(buffer)
        .history_size(0)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()
        .map_err(ice("creating or opening a publish-subscribe service"))
}

fn ice_event(
    node: &Node<ipc::Service>,
    prefix: &str,
    name: &str,
) -> Result<iceoryx2::service::port_factory::event::PortFactory<ipc::Service>> {
    node.service_builder(&service_name(prefix, name)?)
        .event()
        .open_or_create()
        .map_err(ice("creating or opening an event service"))
}

impl IceMain {
    fn create(prefix: &str) -> Result<IceMain> {
        let node = ice_node()?;
        Ok(IceMain {
            small: ice_publisher(&node, prefix, "small", ICE_SMALL_BUFFER)?,
            big: ice_publisher(&node, prefix, "big", ICE_BIG_BUFFER)?,
            ping: ice_publisher(&node, prefix, "ping", 1)?,
            ping_event: ice_event(&node, prefix, "ping-event")?
                .notifier_builder()
                .create()
                .map_err(ice("creating a notifier"))?,
            pong: ice_subscriber(&node, prefix, "pong", 1)?,
            pong_event: ice_event(&node, prefix, "pong-event")?
                .listener_builder()
                .create()
                .map_err(ice("creating a listener"))?,
            _node: node,
        })
    }
}

impl RingsMain {
    fn create() -> Result<RingsMain> {
        Ok(RingsMain {
            small: Sender::new(RING_SMALL).map_err(ring("creating a ring"))?,
            big: Sender::new(RING_BIG).map_err(ring("creating a ring"))?,
            ping: Sender::new(RING_RT).map_err(ring("creating a ring"))?,
            pong: Receiver::new(RING_RT).map_err(ring("creating a ring"))?,
        })
    }
}

impl Peer {
    /// Creates what the peer shares with the main process, starts it and hands it the
    /// descriptors; returns once it has opened the iceoryx2 services.
    fn start() -> Result<Peer> {
        let prefix = format!("yukicomm-bench-shm/{}", std::process::id());
        let ice = IceMain::create(&prefix)?;
        let rings = RingsMain::create()?;
        let to_peer = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| io("pipe")(e.into()))?;
        let from_peer = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| io("pipe")(e.into()))?;
        let (control, theirs) = UnixStream::pair().map_err(io("socketpair"))?;

        let me = std::env::current_exe().map_err(io("this bench's executable"))?;
        let child = Command::new(me)
            .env(ROLE, "peer")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(io("starting the peer process"))?;
        let watchdog = Watchdog::start(child.id())?;
        control
            .set_read_timeout(Some(STEP_TIMEOUT))
            .map_err(io("control socket: set_read_timeout"))?;
        control
            .set_write_timeout(Some(STEP_TIMEOUT))
            .map_err(io("control socket: set_write_timeout"))?;
        let lines = BufReader::new(control.try_clone().map_err(io("control socket: clone"))?);
        let mut peer = Peer {
            child,
            lines,
            control,
            watchdog,
            pipe_out: File::from(to_peer.1),
            pipe_in: File::from(from_peer.0),
            ice,
            rings,
        };

        // The peer's ends go over the control socket, then close here: the peer's
        // death then ends the main process's reads and writes on the pipes.
        let (peer_in, peer_out) = (to_peer.0, from_peer.1);
        let r = &peer.rings;
        let fds = [
            peer_in.as_fd(),
            peer_out.as_fd(),
            r.small.memfd().as_file().as_fd(),
            r.small.empty_signal().as_fd(),
            r.small.full_signal().as_fd(),
            r.big.memfd().as_file().as_fd(),
            r.big.empty_signal().as_fd(),
            r.big.full_signal().as_fd(),
            r.ping.memfd().as_file().as_fd(),
            r.ping.empty_signal().as_fd(),
            r.ping.full_signal().as_fd(),
            r.pong.memfd().as_file().as_fd(),
            r.pong.empty_signal().as_fd(),
            r.pong.full_signal().as_fd(),
        ];
        debug_assert_eq!(fds.len(), PEER_FDS);
        let sent = send_fds(peer.control.as_fd(), b"F", &fds)
            .map_err(io("control socket: sending the descriptors"))?;
        if sent != 1 {
            return Err(other("control socket: the descriptors did not go"));
        }
        drop((peer_in, peer_out));
        peer.guarded("the peer's setup", |p| {
            p.send_line(&format!("setup {prefix}"))?;
            p.expect("ready")
        })?;
        Ok(peer)
    }

    /// Runs `f` with the watchdog armed for `STEP_TIMEOUT`.
    fn guarded<T>(&mut self, what: &str, f: impl FnOnce(&mut Peer) -> Result<T>) -> Result<T> {
        self.watchdog.lock().armed = Some((Instant::now() + STEP_TIMEOUT, what.to_string()));
        let result = f(self);
        self.watchdog.lock().armed = None;
        result.map_err(|e| match self.watchdog.lock().fired.take() {
            Some(what) => other(format!(
                "{e} (the peer had not finished {what} within {STEP_TIMEOUT:?} and was killed)"
            )),
            None => match self.child.try_wait() {
                Ok(Some(status)) => other(format!("{e} (the peer process exited: {status})")),
                _ => e,
            },
        })
    }

    fn send_line(&mut self, line: &str) -> Result<()> {
        self.control
            .write_all(format!("{line}\n").as_bytes())
            .map_err(io(format!("control socket: sending '{line}'")))
    }

    /// The peer's next reply; its `error: ...` as an error.
    fn reply(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .lines
            .read_line(&mut line)
            .map_err(io("control socket: waiting for the peer's reply"))?;
        if n == 0 {
            return Err(other("the peer closed its control socket"));
        }
        let line = line.trim_end().to_string();
        match line.strip_prefix("error: ") {
            Some(e) => Err(other(format!("the peer failed: {e}"))),
            None => Ok(line),
        }
    }

    fn expect(&mut self, want: &str) -> Result<()> {
        let got = self.reply()?;
        if got == want {
            Ok(())
        } else {
            Err(other(format!(
                "the peer replied '{got}', expected '{want}'"
            )))
        }
    }

    fn quit(mut self) -> Result<()> {
        self.guarded("quitting", |p| {
            p.send_line("quit")?;
            p.expect("bye")
        })?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(other(format!("the peer process exited ({status})")))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => return Err(other("the peer process did not exit after quit")),
                Err(e) => return Err(io("the peer process: wait")(e)),
            }
        }
    }

    /// Ping-pong of 64 bytes over two pipes, blocking reads and writes.
    fn pipe_round_trips(&mut self, plan: Plan) -> Result<Vec<Duration>> {
        self.send_line(&format!("pipe {}", plan.exchanges()))?;
        let mut samples = Vec::with_capacity(plan.round_trips as usize);
        let mut ping = [FILL; SMALL];
        let mut pong = [0u8; SMALL];
        for i in 0..plan.exchanges() {
            ping[..8].copy_from_slice(&i.to_le_bytes());
            let start = Instant::now();
            self.pipe_out
                .write_all(&ping)
                .map_err(io("pipe ping-pong: write"))?;
            self.pipe_in
                .read_exact(&mut pong)
                .map_err(io("pipe ping-pong: read"))?;
            let elapsed = start.elapsed();
            if ping != pong {
                return Err(other(format!(
                    "pipe ping-pong {i}: the echo differs from what was sent"
                )));
            }
            if i >= plan.warmup {
                samples.push(elapsed);
            }
        }
        self.expect("done")?;
        Ok(samples)
    }

    /// `count` samples of `N` bytes to the peer's subscriber; timed until the peer
    /// reports the last one received.
    fn ice_stream<const N: usize>(&mut self, loan: Loan, count: u64) -> Result<Rate>
    where
        IceMain: IcePublisherOf<N>,
    {
        let source = vec![FILL; N];
        let value: Box<[u8; N]> = source
            .clone()
            .into_boxed_slice()
            .try_into()
            .map_err(|_| other("payload size"))?;
        let command = if N == SMALL { "ice-small" } else { "ice-big" };
        self.send_line(&format!("{command} {count}"))?;
        let publisher = self.ice.publisher();
        let start = Instant::now();
        for i in 0..count {
            let delivered = match loan {
                Loan::Copy => publisher.send_copy(*value),
                Loan::InPlace => {
                    let mut sample = publisher.loan_uninit().map_err(ice("loan_uninit"))?;
                    // SAFETY: the loaned payload is N bytes; all N are written here
                    // before it is marked initialised.
                    let sample = unsafe {
                        std::ptr::copy_nonoverlapping(
                            source.as_ptr(),
                            sample.payload_mut().as_mut_ptr().cast::<u8>(),
                            N,
                        );
                        sample.assume_init()
                    };
                    sample.send()
                }
            }
            .map_err(ice("send"))?;
            if delivered != 1 {
                return Err(other(format!(
                    "iceoryx2: sample {i} of {count} reached {delivered} subscribers, not 1"
                )));
            }
        }
        self.expect(&format!("count {count}"))?;
        Ok(Rate {
            count,
            size: N,
            elapsed: start.elapsed(),
        })
    }

    /// Round trips of 64 bytes: publish on `ping` and notify; the peer echoes on `pong`
    /// and notifies; each side blocks in its listener's `timed_wait_all` until a sample is
    /// there.
    fn ice_round_trips(&mut self, plan: Plan) -> Result<Vec<Duration>> {
        self.send_line(&format!("ice-rt {}", plan.exchanges()))?;
        let mut samples = Vec::with_capacity(plan.round_trips as usize);
        let mut ping = [FILL; SMALL];
        for i in 0..plan.exchanges() {
            ping[..8].copy_from_slice(&i.to_le_bytes());
            let start = Instant::now();
            self.ice.ping.send_copy(ping).map_err(ice("send"))?;
            self.ice.ping_event.notify().map_err(ice("notify"))?;
            let pong = ice_take(&self.ice.pong, &self.ice.pong_event)?;
            let elapsed = start.elapsed();
            if ping != pong {
                return Err(other(format!(
                    "iceoryx2 round trip {i}: the echo differs from what was sent"
                )));
            }
            if i >= plan.warmup {
                samples.push(elapsed);
            }
        }
        self.expect("done")?;
        Ok(samples)
    }

    /// `count` 64-byte items, one `send_raw` each.
    fn ring_stream_small(&mut self, count: u64) -> Result<Rate> {
        self.send_line(&format!("ring-small {count}"))?;
        let item = [FILL; SMALL];
        let start = Instant::now();
        for _ in 0..count {
            ring_send(&mut self.rings.small, &item)?;
        }
        self.expect(&format!("count {count}"))?;
        Ok(Rate {
            count,
            size: SMALL,
            elapsed: start.elapsed(),
        })
    }

    /// `count` 64 KiB items, one `send_raw` each, copied in from the producer's buffer.
    fn ring_stream_big(&mut self, count: u64) -> Result<Rate> {
        self.send_line(&format!("ring-big {count}"))?;
        let item: Box<[u8; BIG]> = vec![FILL; BIG]
            .into_boxed_slice()
            .try_into()
            .map_err(|_| other("payload size"))?;
        let start = Instant::now();
        for _ in 0..count {
            ring_send(&mut self.rings.big, &item)?;
        }
        self.expect(&format!("count {count}"))?;
        Ok(Rate {
            count,
            size: BIG,
            elapsed: start.elapsed(),
        })
    }

    fn ring_round_trips(&mut self, plan: Plan) -> Result<Vec<Duration>> {
        self.send_line(&format!("ring-rt {}", plan.exchanges()))?;
        let mut samples = Vec::with_capacity(plan.round_trips as usize);
        let mut ping = [FILL; SMALL];
        let mut pong = [0u8; SMALL];
        for i in 0..plan.exchanges() {
            ping[..8].copy_from_slice(&i.to_le_bytes());
            let start = Instant::now();
            ring_send(&mut self.rings.ping, &ping)?;
            ring_take(&mut self.rings.pong, &mut pong)?;
            let elapsed = start.elapsed();
            if ping != pong {
                return Err(other(format!(
                    "shmem-ipc round trip {i}: the echo differs from what was sent"
                )));
            }
            if i >= plan.warmup {
                samples.push(elapsed);
            }
        }
        self.expect("done")?;
        Ok(samples)
    }
}

/// The main process's iceoryx2 publisher for payloads of `N` bytes.
trait IcePublisherOf<const N: usize> {
    fn publisher(&self) -> &Publisher<ipc::Service, [u8; N], ()>;
}

impl IcePublisherOf<SMALL> for IceMain {
    fn publisher(&self) -> &Publisher<ipc::Service, [u8; SMALL], ()> {
        &self.small
    }
}

impl IcePublisherOf<BIG> for IceMain {
    fn publisher(&self) -> &Publisher<ipc::Service, [u8; BIG], ()> {
        &self.big
    }
}

/// The next 64-byte sample of `subscriber`, blocking in `listener` while there is none.
fn ice_take(
    subscriber: &Subscriber<ipc::Service, [u8; SMALL], ()>,
    listener: &Listener<ipc::Service>,
) -> Result<[u8; SMALL]> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(sample) = subscriber.receive().map_err(ice("receive"))? {
            return Ok(*sample.payload());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(other(format!(
                "iceoryx2: no sample within {STEP_TIMEOUT:?}"
            )));
        }
        listener
            .timed_wait_all(|_| {}, left)
            .map_err(ice("listener timed_wait_all"))?;
    }
}

/// Waits for an eventfd of a shmem-ipc ring (at most until `deadline`, in slices of
/// 100 ms) and consumes its count.
fn wait_event(event: &File, deadline: Instant) -> Result<()> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_millis(100));
    let t = rustix::event::Timespec {
        tv_sec: left.as_secs() as i64,
        tv_nsec: left.subsec_nanos().into(),
    };
    let mut fds = [rustix::event::PollFd::new(
        event,
        rustix::event::PollFlags::IN,
    )];
    match rustix::event::poll(&mut fds, Some(&t)) {
        Ok(0) | Err(rustix::io::Errno::INTR) => return Ok(()),
        Ok(_) => {}
        Err(e) => return Err(io("shmem-ipc: poll an eventfd")(e.into())),
    }
    let mut count = [0u8; 8];
    (&*event)
        .read(&mut count)
        .map_err(io("shmem-ipc: read an eventfd"))?;
    Ok(())
}

/// Sends one item, waiting (on the "not full" eventfd) while the ring is full.
fn ring_send<const N: usize>(tx: &mut Sender<[u8; N]>, item: &[u8; N]) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let mut sent = false;
        tx.send_raw(|p, room| {
            if room == 0 {
                return 0;
            }
            // SAFETY: `p` points at `room` >= 1 writable items of the ring.
            unsafe { std::ptr::copy_nonoverlapping(item, p, 1) };
            sent = true;
            1
        })
        .map_err(ring("send"))?;
        if sent {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(other(format!(
                "shmem-ipc: the ring stayed full for {STEP_TIMEOUT:?}"
            )));
        }
        wait_event(tx.full_signal(), deadline)?;
    }
}

/// Receives one item into `out`, waiting (on the "not empty" eventfd) while the ring is
/// empty.
fn ring_take<const N: usize>(rx: &mut Receiver<[u8; N]>, out: &mut [u8; N]) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let mut took = false;
        rx.receive_raw(|p, n| {
            if n == 0 {
                return 0;
            }
            // SAFETY: `p` points at `n` >= 1 readable items of the ring.
            unsafe { std::ptr::copy_nonoverlapping(p, out, 1) };
            took = true;
            1
        })
        .map_err(ring("receive"))?;
        if took {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(other(format!(
                "shmem-ipc: nothing arrived within {STEP_TIMEOUT:?}"
            )));
        }
        wait_event(rx.empty_signal(), deadline)?;
    }
}

/// Receives `count` items, as many per call as there are, copying each out into
/// `out`; fails if an item's first or last byte is not `FILL`.
fn ring_drain<const N: usize>(
    rx: &mut Receiver<[u8; N]>,
    count: u64,
    out: &mut [u8; N],
) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut got = 0u64;
    while got < count {
        let mut took = 0usize;
        let mut bad = false;
        rx.receive_raw(|p, n| {
            let k = n.min((count - got) as usize);
            for i in 0..k {
                // SAFETY: `p` points at `n` >= `k` readable items of the ring.
                unsafe { std::ptr::copy_nonoverlapping(p.add(i), &mut *out, 1) };
                bad |= out[0] != FILL || out[N - 1] != FILL;
            }
            took = k;
            k
        })
        .map_err(ring("receive"))?;
        if bad {
            return Err(other("shmem-ipc: an item differs from what was sent"));
        }
        got += took as u64;
        if took == 0 {
            if Instant::now() >= deadline {
                return Err(other(format!(
                    "shmem-ipc: {got} of {count} items arrived within {STEP_TIMEOUT:?}"
                )));
            }
            wait_event(rx.empty_signal(), deadline)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The peer process

/// The peer's iceoryx2 ports.
struct IcePeer {
    small: Subscriber<ipc::Service, [u8; SMALL], ()>,
    big: Subscriber<ipc::Service, [u8; BIG], ()>,
    ping: Subscriber<ipc::Service, [u8; SMALL], ()>,
    ping_event: Listener<ipc::Service>,
    pong: Publisher<ipc::Service, [u8; SMALL], ()>,
    pong_event: Notifier<ipc::Service>,
    _node: Node<ipc::Service>,
}

impl IcePeer {
    fn open(prefix: &str) -> Result<IcePeer> {
        let node = ice_node()?;
        Ok(IcePeer {
            small: ice_subscriber(&node, prefix, "small", ICE_SMALL_BUFFER)?,
            big: ice_subscriber(&node, prefix, "big", ICE_BIG_BUFFER)?,
            ping: ice_subscriber(&node, prefix, "ping", 1)?,
            ping_event: ice_event(&node, prefix, "ping-event")?
                .listener_builder()
                .create()
                .map_err(ice("creating a listener"))?,
            pong: ice_publisher(&node, prefix, "pong", 1)?,
            pong_event: ice_event(&node, prefix, "pong-event")?
                .notifier_builder()
                .create()
                .map_err(ice("creating a notifier"))?,
            _node: node,
        })
    }
}

/// Polls `subscriber` until `count` samples have arrived (a busy poll: iceoryx2's
/// subscriber has no blocking receive of its own); checks a byte at each end of every
/// sample in place.
fn ice_drain<const N: usize>(
    subscriber: &Subscriber<ipc::Service, [u8; N], ()>,
    count: u64,
) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut got = 0u64;
    let mut idle = 0u32;
    while got < count {
        match subscriber.receive().map_err(ice("receive"))? {
            Some(sample) => {
                let p = sample.payload();
                if p[0] != FILL || p[N - 1] != FILL {
                    return Err(other("iceoryx2: a sample differs from what was sent"));
                }
                got += 1;
            }
            None => {
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(64) {
                    std::thread::yield_now();
                    if Instant::now() >= deadline {
                        return Err(other(format!(
                            "iceoryx2: {got} of {count} samples arrived within {STEP_TIMEOUT:?}"
                        )));
                    }
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
    Ok(())
}

/// What the peer holds.
struct PeerState {
    pipe_in: File,
    pipe_out: File,
    small: Receiver<[u8; SMALL]>,
    big: Receiver<[u8; BIG]>,
    ping: Receiver<[u8; SMALL]>,
    pong: Sender<[u8; SMALL]>,
    ice: Option<IcePeer>,
}

fn peer_process() -> ExitCode {
    // The peer goes with the main process's thread that started it.
    // SAFETY: PR_SET_PDEATHSIG only sets a property of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    match peer_run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm bench peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn peer_run() -> Result<()> {
    let control = UnixStream::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("peer: the control socket"))?,
    );
    control
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .map_err(io("peer: set_read_timeout"))?;
    control
        .set_write_timeout(Some(STEP_TIMEOUT))
        .map_err(io("peer: set_write_timeout"))?;
    let mut first = [0u8; 1];
    let mut fds = Vec::new();
    let n = recv_fds(control.as_fd(), &mut first, &mut fds, PEER_FDS)
        .map_err(io("peer: receiving the descriptors"))?;
    if n != 1 || fds.len() != PEER_FDS {
        return Err(other(format!(
            "peer: received {n} bytes and {} descriptors, expected 1 and {PEER_FDS}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter().map(File::from);
    let mut next = || fds.next().expect("counted above");
    let pipe_in = next();
    let pipe_out = next();
    let small = Receiver::open(RING_SMALL, next(), next(), next()).map_err(ring("open"))?;
    let big = Receiver::open(RING_BIG, next(), next(), next()).map_err(ring("open"))?;
    let ping = Receiver::open(RING_RT, next(), next(), next()).map_err(ring("open"))?;
    let pong = Sender::open(RING_RT, next(), next(), next()).map_err(ring("open"))?;
    let mut state = PeerState {
        pipe_in,
        pipe_out,
        small,
        big,
        ping,
        pong,
        ice: None,
    };

    let mut lines = BufReader::new(control.try_clone().map_err(io("peer: clone"))?);
    let mut control = control;
    loop {
        let mut line = String::new();
        let n = lines
            .read_line(&mut line)
            .map_err(io("peer: waiting for a command"))?;
        if n == 0 {
            return Err(other("peer: the main process closed the control socket"));
        }
        let line = line.trim_end();
        let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
        if command == "quit" {
            control.write_all(b"bye\n").map_err(io("peer: replying"))?;
            return Ok(());
        }
        let reply = match peer_command(&mut state, command, arg) {
            Ok(r) => r,
            Err(e) => {
                let _ = control.write_all(format!("error: {e}\n").as_bytes());
                return Err(e);
            }
        };
        control
            .write_all(format!("{reply}\n").as_bytes())
            .map_err(io("peer: replying"))?;
    }
}

fn peer_command(s: &mut PeerState, command: &str, arg: &str) -> Result<String> {
    if command == "setup" {
        s.ice = Some(IcePeer::open(arg)?);
        return Ok("ready".into());
    }
    let n: u64 = arg
        .parse()
        .map_err(|_| other(format!("peer: bad command '{command} {arg}'")))?;
    let ice = || {
        s.ice
            .as_ref()
            .ok_or_else(|| other("peer: iceoryx2 is not set up"))
    };
    match command {
        "pipe" => {
            let mut buf = [0u8; SMALL];
            for _ in 0..n {
                s.pipe_in
                    .read_exact(&mut buf)
                    .map_err(io("peer: pipe read"))?;
                s.pipe_out.write_all(&buf).map_err(io("peer: pipe write"))?;
            }
            Ok("done".into())
        }
        "ice-small" => {
            ice_drain(&ice()?.small, n)?;
            Ok(format!("count {n}"))
        }
        "ice-big" => {
            ice_drain(&ice()?.big, n)?;
            Ok(format!("count {n}"))
        }
        "ice-rt" => {
            let ice = ice()?;
            for _ in 0..n {
                let ping = ice_take(&ice.ping, &ice.ping_event)?;
                ice.pong.send_copy(ping).map_err(ice_err("send"))?;
                ice.pong_event.notify().map_err(ice_err("notify"))?;
            }
            Ok("done".into())
        }
        "ring-small" => {
            let mut out = [0u8; SMALL];
            ring_drain(&mut s.small, n, &mut out)?;
            Ok(format!("count {n}"))
        }
        "ring-big" => {
            let mut out: Box<[u8; BIG]> = vec![0u8; BIG]
                .into_boxed_slice()
                .try_into()
                .map_err(|_| other("payload size"))?;
            ring_drain(&mut s.big, n, &mut out)?;
            Ok(format!("count {n}"))
        }
        "ring-rt" => {
            let mut buf = [0u8; SMALL];
            for _ in 0..n {
                ring_take(&mut s.ping, &mut buf)?;
                ring_send(&mut s.pong, &buf)?;
            }
            Ok("done".into())
        }
        other_command => Err(other(format!("peer: unknown command '{other_command}'"))),
    }
}

/// `ice`, under a name that the closure above does not shadow.
fn ice_err<E: Debug>(what: &'static str) -> impl FnOnce(E) -> Error {
    ice(what)
}

// ---------------------------------------------------------------------------------
// Children

/// Whether this process maps a connection's ring region.
fn maps_a_ring() -> Result<bool> {
    Ok(std::fs::read_to_string("/proc/self/maps")
        .map_err(io("reading /proc/self/maps"))?
        .contains("yukicomm-ring"))
}

/// The `shm` child: started by the supervisor as a target of this binary.
async fn child_main(ctx: Context) -> yukicomm::Result<()> {
    let active = ctx.active_channel::<Msg>();
    tokio::task::spawn_blocking(move || serve(&active))
        .await
        .map_err(|e| other(format!("the child's bench thread failed: {e}")))?
}

/// The `socket` child: this binary started with `add_command` and `YUKICOMM_SHM=0`.
fn socket_child() -> ExitCode {
    let run = || -> Result<()> {
        let ctx =
            yukicomm::connect().map_err(|e| other(format!("the socket child cannot join: {e}")))?;
        serve(&ctx.active_channel::<Msg>())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm bench, socket child: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A child's command loop, on a plain blocking thread.
fn serve(active: &Channel<Msg>) -> Result<()> {
    send(
        active,
        Msg::Ready {
            ring: maps_a_ring()?,
        },
    )?;
    loop {
        match active.recv_timeout(IDLE_TIMEOUT)? {
            Msg::Data(b) => send(active, Msg::Data(b))?,
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
                send(active, Msg::Count(count))?;
            }
            Msg::Source { count, size } => {
                let data = Payload::from(vec![FILL; size as usize]);
                for _ in 0..count {
                    send(active, Msg::Data(data.clone()))?;
                }
                send(active, Msg::Count(count))?;
            }
            Msg::Quit => return Ok(()),
            other => return Err(unexpected("a command", &other)),
        }
    }
}

// ---------------------------------------------------------------------------------
// Output

/// "shm 1.23x, socket 1.45x": each yukicomm figure over the peer's.
fn ratios(shm: f64, socket: f64, peer: f64) -> String {
    format!("shm {}, socket {}", ratio(shm / peer), ratio(socket / peer))
}

fn rows(r: &Report) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let secs = |d: Duration| d.as_secs_f64();
    for (q, pick) in [
        ("p50", (|l: &Latency| l.p50) as fn(&Latency) -> Duration),
        ("p99", |l: &Latency| l.p99),
    ] {
        let (shm, socket) = (pick(&r.shm.rt), pick(&r.socket.rt));
        for (peer, l) in [
            ("pipe ping-pong ³", &r.pipe_rt),
            ("iceoryx2, listener wait ¹", &r.ice_rt),
            ("shmem-ipc, eventfd wait ²", &r.ring_rt),
        ] {
            rows.push(vec![
                format!("round trip 64 B, {q}"),
                us(shm),
                us(socket),
                format!("{peer} {}", us(pick(l))),
                ratios(secs(shm), secs(socket), secs(pick(l))),
            ]);
        }
    }
    let small = [
        ("iceoryx2 send_copy ¹", &r.ice_small),
        ("shmem-ipc ²", &r.ring_small),
    ];
    for (what, shm, socket) in [
        (
            "main → child",
            &r.shm.small_to_child,
            &r.socket.small_to_child,
        ),
        (
            "child → main",
            &r.shm.small_to_main,
            &r.socket.small_to_main,
        ),
    ] {
        for (peer, rate) in small {
            rows.push(vec![
                format!("64 B messages, {what}"),
                msgs(shm.msgs_per_s()),
                msgs(socket.msgs_per_s()),
                format!("{peer} {}", msgs(rate.msgs_per_s())),
                ratios(shm.msgs_per_s(), socket.msgs_per_s(), rate.msgs_per_s()),
            ]);
        }
    }
    let big = [
        ("iceoryx2 send_copy ¹", &r.ice_big),
        ("shmem-ipc ²", &r.ring_big),
    ];
    for (what, shm, socket) in [
        ("main → child", &r.shm.big_to_child, &r.socket.big_to_child),
        ("child → main", &r.shm.big_to_main, &r.socket.big_to_main),
    ] {
        for (peer, rate) in big {
            rows.push(vec![
                format!("64 KiB messages, {what}"),
                mbs(shm.mb_per_s()),
                mbs(socket.mb_per_s()),
                format!("{peer} {}", mbs(rate.mb_per_s())),
                ratios(shm.mb_per_s(), socket.mb_per_s(), rate.mb_per_s()),
            ]);
        }
    }
    rows.push(vec![
        "64 KiB loaned, main → child".into(),
        "—".into(),
        "—".into(),
        format!("iceoryx2 loan ¹ {}", mbs(r.ice_loan.mb_per_s())),
        "—".into(),
    ]);
    rows
}

fn settings(r: &Report) -> String {
    let p = &r.plan;
    format!(
        "mode: {}; {} rounds, each measuring everything once (the two children in \
         alternating order); round trips: {} after {} warm-up; 64 B messages: {}; \
         64 KiB messages: {}; latencies pool every round's samples, rates are the median \
         round; iceoryx2 {ICEORYX2_VERSION}, shmem-ipc {SHMEM_IPC_VERSION}; the peers and \
         the floor are measured main process → peer process",
        if r.quick { "quick" } else { "full" },
        p.rounds,
        p.round_trips,
        p.warmup,
        p.small,
        p.big,
    )
}

const TARGETS: &str = "Targets: 64 B at least 8 M msg/s; 64 KiB at least 8 GB/s; loaned 64 KiB \
                       at least 0.7x iceoryx2's loaned MB/s; round trip p50 at most 1.2x the \
                       pipe ping-pong";

fn against_targets(r: &Report) -> String {
    let s = &r.shm;
    format!(
        "This run, yukicomm (shm): 64 B {} / {} (main → child / child → main); 64 KiB {} / {}; \
         loaned 64 KiB — (no loan API); round trip p50 {}x the pipe ping-pong.",
        msgs(s.small_to_child.msgs_per_s()),
        msgs(s.small_to_main.msgs_per_s()),
        mbs(s.big_to_child.mb_per_s()),
        mbs(s.big_to_main.mb_per_s()),
        format_args!(
            "{:.2}",
            s.rt.p50.as_secs_f64() / r.pipe_rt.p50.as_secs_f64()
        ),
    )
}

fn notes(r: &Report) -> Vec<String> {
    vec![
        format!(
            "¹ iceoryx2 {ICEORYX2_VERSION}, publish-subscribe (ipc::Service), payload types \
             [u8; 64] and [u8; 65536]; the main process publishes, the peer subscribes. \
             Streams: no sample is dropped (safe overflow off, RetryUntilDelivered: the \
             publisher spins, yields, then sleeps while the subscriber's buffer of \
             {ICE_SMALL_BUFFER} (64 B) or {ICE_BIG_BUFFER} (64 KiB) samples is full); the \
             subscriber busy-polls receive() (the subscriber has no blocking receive) and \
             reads two bytes of each sample in place, zero-copy, without copying it out. \
             Loaned: loan_uninit, the payload written in place (one 64 KiB copy from the \
             producer's buffer), send. Round trip: two publish-subscribe services and two \
             event services; each side sends, notifies, and blocks in its listener's \
             timed_wait_all. What it does not do: only fixed-layout plain data travels (no \
             serialization: no String, Vec or enum with data, no schema checks beyond the \
             type's name and size); no process supervision (nothing starts, restarts or \
             stops processes); a dead peer is not reported by send or receive: a receiver \
             just sees nothing more, a sender to a dead subscriber retries until its \
             backpressure handler gives up (30 s here), and dead nodes are found only when \
             the application looks for them (node listing and cleanup)."
        ),
        format!(
            "² shmem-ipc {SHMEM_IPC_VERSION}, sharedring: one single-producer ring in a \
             memfd per direction, eventfd wake-ups; items [u8; 64] ({RING_SMALL} of them) \
             and [u8; 65536] ({RING_BIG}), one send_raw per item; the receiver takes every \
             item there is per call and copies each out; both sides wait by polling the \
             ring's eventfds (as its block_until_* do, with a deadline here). What it does \
             not do: only fixed-size plain data (zerocopy AsBytes/FromBytes), one type per \
             ring; no connection set-up (the application creates the rings and passes the \
             memfd and two eventfds per ring itself; the bench uses SCM_RIGHTS); no \
             supervision; no dead-peer detection at all: a receiver whose sender died \
             waits on its eventfd forever unless something else tells it."
        ),
        "³ Pipe ping-pong: two pipes, 64 bytes each way, blocking read and write between \
         the same two processes as the peers: the kernel's wake-up floor, with no framing, \
         types or supervision."
            .into(),
        "ratios: each yukicomm figure divided by the peer's or floor's on its row; for a \
         round trip, above 1 is slower than the peer; for throughput, below 1 is slower. The \
         peers' streams are measured main → peer and compared with both directions of \
         yukicomm's."
            .into(),
        TARGETS.into(),
        against_targets(r),
    ]
}

fn table(r: &Report) -> Table {
    Table {
        title: "yukicomm shared-memory benchmark: main process <-> child, beside iceoryx2 \
                and shmem-ipc"
            .into(),
        settings: settings(r),
        head: vec![
            ("measure".into(), Align::Left),
            ("yukicomm (shm)".into(), Align::Right),
            ("yukicomm (socket)".into(), Align::Right),
            ("peer/floor".into(), Align::Left),
            ("ratios".into(), Align::Left),
        ],
        rows: rows(r),
        notes: notes(r),
    }
}

// ---------------------------------------------------------------------------------

fn main() -> ExitCode {
    support::init_logging();
    // iceoryx2 warns, on stdout, that it runs with its default configuration.
    iceoryx2::prelude::set_log_level(LogLevel::Error);
    match std::env::var(ROLE).as_deref() {
        Ok("peer") => return peer_process(),
        Ok("socket-child") => return socket_child(),
        _ => {}
    }
    let options = Options::from_env();
    let plan = Plan::new(options.quick);
    if support::is_main() {
        let limit = Duration::from_secs(if options.quick { 60 } else { 300 });
        support::deadline("shm bench", limit);
    }

    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("shm bench: this bench's executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut on_socket = Command::new(me);
    on_socket
        .env(ROLE, "socket-child")
        .env(yukicomm::wire::ENV_SHM, "0");
    let mut app = App::new();
    app.add_target(SHM_CHILD, child_main)
        .restart(RestartPolicy::Never)
        .stop_timeout(Duration::from_secs(5));
    app.add_command(SOCKET_CHILD, on_socket)
        .restart(RestartPolicy::Never)
        .stop_timeout(Duration::from_secs(5));
    support::run("shm bench", app, move |ctx| {
        let report = run_main(ctx, plan, options.quick).map_err(|e| e.to_string())?;
        Ok(table(&report).render(options.markdown))
    })
}
