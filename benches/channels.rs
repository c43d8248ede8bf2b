//! Channel benchmark: the main process and one child process, measured against the
//! floor of a raw Unix stream socket between the same two processes.
//!
//! Measures:
//!
//! - round trip of a 64-byte message: the main process sends on `bench-active` and
//!   waits with a blocking `recv`; the child echoes from a blocking `recv` loop (p50,
//!   p99);
//! - the same round trip on `bench-passive`, where the child echoes from an
//!   `on_receive` handler;
//! - one-way throughput of 64-byte messages (msg/s), main to child (timed from the first
//!   send to the child's acknowledgement of the last) and child to main;
//! - one-way throughput of 64 KiB messages (MB/s, payload bytes), both directions;
//! - the floor: a raw `UnixStream` between the same two processes: 64-byte ping-pong,
//!   64-byte length-prefixed frames with one write per frame and with 64 frames per
//!   write, and 64 KiB frames.
//!
//! Run it:
//!
//! ```text
//! cargo bench --bench channels                 # full run (well under a minute)
//! cargo bench --bench channels -- --quick      # small counts, a few seconds (CI)
//! cargo bench --bench channels -- --markdown   # the results as a markdown table
//! ```
//!
//! `YUKICOMM_BENCH_QUICK=1` and `YUKICOMM_BENCH_MARKDOWN=1` do the same as the flags.
//! Unknown arguments (such as the `--bench` that `cargo bench` passes) are ignored.
//! Every wait has a deadline: if the child dies or stops answering, the benchmark
//! fails with an error and a non-zero exit status instead of hanging.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use yukicomm::Payload;
use yukicomm::{
    accept_all, App, Channel, Context, Error, MainContext, RestartPolicy, TryRecvError,
};

use support::options::Options;
use support::report::{mbs, msgs, ratio, us, Align, Table};
use support::stats::{Latency, Rate};
use support::{io, other};

/// The child's name; its channels are `bench-active` and `bench-passive`.
const CHILD: &str = "bench";
/// The longest wait for any one message, acknowledgement or connection.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the child waits for the next command.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Small message payload.
const SMALL: usize = 64;
/// Large message payload.
const BIG: usize = 64 * 1024;
/// Frames per write in the batched raw stream.
const BATCH: usize = 64;
/// Bytes of the raw frames' length prefix.
const PREFIX: usize = 4;

type Result<T> = std::result::Result<T, Error>;

/// Everything that travels on the child's two channels.
#[derive(Serialize, Deserialize)]
enum Msg {
    /// A payload: echoed, streamed or counted depending on the phase.
    #[serde(rename = "d")]
    Data(Payload),
    /// Child to main: the child's loop is running.
    Ready,
    /// Main to child: `count` messages of `size` bytes follow; acknowledge with `Count`.
    Sink { count: u64, size: u32 },
    /// Main to child: send `count` messages of `size` bytes, then `Count`.
    Source { count: u64, size: u32 },
    /// The number of messages received or sent.
    Count(u64),
    /// Main to child: connect to the raw socket and run the floor measurements.
    Raw(RawPlan),
    /// Main to child: stop.
    Quit,
}

/// What the child does on the raw socket, in order.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct RawPlan {
    path: String,
    /// Ping-pong exchanges (warm-up included).
    pings: u64,
    /// 64-byte frames, one write per frame.
    single: u64,
    /// 64-byte frames, `BATCH` per write.
    batched: u64,
    /// 64 KiB frames, one write per frame.
    big: u64,
}

fn describe(m: &Msg) -> String {
    match m {
        Msg::Data(b) => format!("a data message of {} bytes", b.len()),
        Msg::Ready => "Ready".into(),
        Msg::Sink { count, size } => format!("Sink {{ count: {count}, size: {size} }}"),
        Msg::Source { count, size } => format!("Source {{ count: {count}, size: {size} }}"),
        Msg::Count(n) => format!("Count({n})"),
        Msg::Raw(p) => format!("Raw({p:?})"),
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
                warmup: 200,
                round_trips: 2_000,
                small: 20_000,
                big: 200,
            }
        } else {
            // Five rounds, each measuring everything once, the floor included, so that
            // both sides of every ratio see the same conditions.
            Plan {
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

// ---------------------------------------------------------------------------------
// Results

struct Report {
    plan: Plan,
    quick: bool,
    body_small: usize,
    body_big: usize,
    rt_active: Latency,
    rt_passive: Latency,
    small_to_child: Rate,
    small_to_main: Rate,
    big_to_child: Rate,
    big_to_main: Rate,
    raw_ping: Latency,
    raw_single: Rate,
    raw_batched: Rate,
    raw_big: Rate,
}

// ---------------------------------------------------------------------------------
// Main process

fn run_main(ctx: &MainContext, plan: Plan, quick: bool) -> Result<Report> {
    let body_small = encoded_len(SMALL)?;
    let body_big = encoded_len(BIG)?;

    let active = ctx.get_channel::<Msg>(&format!("{CHILD}-active"))?;
    let passive = ctx.get_channel::<Msg>(&format!("{CHILD}-passive"))?;
    match recv(&active)? {
        Msg::Ready => {}
        other => return Err(unexpected("Ready", &other)),
    }

    let (mut rt_active, mut rt_passive, mut raw_ping) = (Vec::new(), Vec::new(), Vec::new());
    let mut rates: [Vec<Rate>; 7] = Default::default();
    for _ in 0..plan.rounds {
        rt_active.extend(round_trips(&active, plan)?);
        rt_passive.extend(round_trips(&passive, plan)?);
        rates[0].push(to_child(&active, SMALL, plan.small)?);
        rates[1].push(to_main(&active, SMALL, plan.small)?);
        rates[2].push(to_child(&active, BIG, plan.big)?);
        rates[3].push(to_main(&active, BIG, plan.big)?);
        let (ping, single, batched, big) = raw_floor(&active, plan)?;
        raw_ping.extend(ping);
        rates[4].push(single);
        rates[5].push(batched);
        rates[6].push(big);
    }
    send(&active, Msg::Quit)?;
    let [small_to_child, small_to_main, big_to_child, big_to_main, raw_single, raw_batched, raw_big] =
        rates.map(Rate::median);
    let (rt_active, rt_passive, raw_ping) = (
        Latency::from_samples(rt_active),
        Latency::from_samples(rt_passive),
        Latency::from_samples(raw_ping),
    );

    Ok(Report {
        plan,
        quick,
        body_small,
        body_big,
        rt_active,
        rt_passive,
        small_to_child,
        small_to_main,
        big_to_child,
        big_to_main,
        raw_ping,
        raw_single,
        raw_batched,
        raw_big,
    })
}

/// The MessagePack body of a data message with `size` payload bytes; checks that the
/// payload is encoded as `bin`, not as an array of integers.
fn encoded_len(size: usize) -> Result<usize> {
    let body = rmp_serde::to_vec_named(&Msg::Data(Payload::from(vec![0xA5; size])))
        .map_err(|e| other(format!("cannot encode a data message: {e}")))?;
    if body.len() > size + 16 {
        return Err(other(format!(
            "a {size}-byte payload encodes as {} bytes: not MessagePack bin",
            body.len()
        )));
    }
    Ok(body.len())
}

/// Ping-pong of 64-byte messages; each payload carries its sequence number and the echo
/// must match it.
fn round_trips(ch: &Channel<Msg>, plan: Plan) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    let mut payload = [0x5Au8; SMALL];
    for i in 0..plan.warmup + plan.round_trips {
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
    let data = Payload::from(vec![0x5A; size]);
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

/// Removes the raw socket's file when the measurement ends, whatever happens.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Accepts the child's raw connection, failing if the child's channel reports it gone
/// or `STEP_TIMEOUT` passes.
fn accept_child(listener: &UnixListener, active: &Channel<Msg>) -> Result<UnixStream> {
    listener
        .set_nonblocking(true)
        .map_err(io("raw socket: set_nonblocking"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(io("raw socket: set_nonblocking"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io("raw socket: accept")(e)),
        }
        match active.try_recv() {
            Ok(m) => return Err(unexpected("a raw connection", &m)),
            Err(TryRecvError::Empty { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(other(format!(
                "the child did not connect to the raw socket within {STEP_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn set_timeouts(s: &UnixStream, limit: Duration) -> Result<()> {
    s.set_read_timeout(Some(limit))
        .map_err(io("raw socket: set_read_timeout"))?;
    s.set_write_timeout(Some(limit))
        .map_err(io("raw socket: set_write_timeout"))
}

/// A length-prefixed frame with `size` payload bytes.
fn frame(size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(PREFIX + size);
    f.extend_from_slice(&(size as u32).to_le_bytes());
    f.resize(PREFIX + size, 0x5A);
    f
}

/// Writes `writes` times `buf`, then waits for the child's count of `frames`.
fn raw_stream(s: &mut UnixStream, buf: &[u8], writes: u64, frames: u64) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..writes {
        s.write_all(buf).map_err(io("raw socket: write"))?;
    }
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack)
        .map_err(io("raw socket: waiting for the child's count"))?;
    let elapsed = start.elapsed();
    let n = u64::from_le_bytes(ack);
    if n != frames {
        return Err(other(format!(
            "raw stream: the child counted {n} frames, {frames} were sent"
        )));
    }
    Ok(elapsed)
}

fn raw_floor(active: &Channel<Msg>, plan: Plan) -> Result<(Vec<Duration>, Rate, Rate, Rate)> {
    let path = support::temp_path("yukicomm-bench", ".sock");
    let listener = UnixListener::bind(&path).map_err(io(format!("bind {}", path.display())))?;
    let _cleanup = RemoveOnDrop(path.clone());
    let raw = RawPlan {
        path: path.to_string_lossy().into_owned(),
        pings: plan.warmup + plan.round_trips,
        single: plan.small,
        batched: plan.batched(),
        big: plan.big,
    };
    send(active, Msg::Raw(raw.clone()))?;
    let mut s = accept_child(&listener, active)?;
    drop(listener);
    set_timeouts(&s, STEP_TIMEOUT)?;

    // Ping-pong.
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    let mut ping = [0x5Au8; SMALL];
    let mut pong = [0u8; SMALL];
    for i in 0..raw.pings {
        ping[..8].copy_from_slice(&i.to_le_bytes());
        let start = Instant::now();
        s.write_all(&ping).map_err(io("raw ping: write"))?;
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
    let ping = samples;

    // 64-byte frames, one write each.
    let one = frame(SMALL);
    let single = Rate {
        count: raw.single,
        size: SMALL,
        elapsed: raw_stream(&mut s, &one, raw.single, raw.single)?,
    };

    // 64-byte frames, BATCH per write.
    let batch = one.repeat(BATCH);
    let batched = Rate {
        count: raw.batched,
        size: SMALL,
        elapsed: raw_stream(&mut s, &batch, raw.batched / BATCH as u64, raw.batched)?,
    };

    // 64 KiB frames, one write each.
    let big = Rate {
        count: raw.big,
        size: BIG,
        elapsed: raw_stream(&mut s, &frame(BIG), raw.big, raw.big)?,
    };
    Ok((ping, single, batched, big))
}

// ---------------------------------------------------------------------------------
// Child process

async fn child_main(ctx: Context) -> yukicomm::Result<()> {
    let active = ctx.active_channel::<Msg>();
    let passive = ctx.passive_channel::<Msg>();
    let echo = passive.clone();
    passive.on_receive(accept_all, move |m: Msg| match m {
        Msg::Data(b) => echo.send(Msg::Data(b)).map_err(|e| e.to_string()),
        other => Err(format!(
            "unexpected message on the passive channel: {}",
            describe(&other)
        )),
    })?;
    tokio::task::spawn_blocking(move || serve(&active))
        .await
        .map_err(|e| other(format!("the child's bench thread failed: {e}")))?
}

/// The child's command loop, on a plain blocking thread.
fn serve(active: &Channel<Msg>) -> Result<()> {
    send(active, Msg::Ready)?;
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
                let data = Payload::from(vec![0x5A; size as usize]);
                for _ in 0..count {
                    send(active, Msg::Data(data.clone()))?;
                }
                send(active, Msg::Count(count))?;
            }
            Msg::Raw(plan) => raw_child(&plan)?,
            Msg::Quit => return Ok(()),
            other => return Err(unexpected("a command", &other)),
        }
    }
}

fn raw_child(plan: &RawPlan) -> Result<()> {
    let mut s = UnixStream::connect(&plan.path).map_err(io(format!("connect {}", plan.path)))?;
    set_timeouts(&s, IDLE_TIMEOUT)?;
    let mut buf = [0u8; SMALL];
    for _ in 0..plan.pings {
        s.read_exact(&mut buf).map_err(io("raw ping: read"))?;
        s.write_all(&buf).map_err(io("raw ping: write"))?;
    }
    for frames in [plan.single, plan.batched, plan.big] {
        let n = drain_frames(&mut s, frames)?;
        s.write_all(&n.to_le_bytes())
            .map_err(io("raw socket: write the count"))?;
    }
    Ok(())
}

/// Reads length-prefixed frames until `count` have arrived; returns how many did.
fn drain_frames(s: &mut UnixStream, count: u64) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut frames = 0u64;
    let mut prefix = [0u8; PREFIX];
    let mut have = 0usize;
    let mut body_left = 0usize;
    while frames < count {
        let n = s.read(&mut buf).map_err(io("raw stream: read"))?;
        if n == 0 {
            return Err(other(format!(
                "raw stream: closed after {frames} of {count} frames"
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
                if body_left == 0 {
                    frames += 1;
                }
            }
        }
    }
    Ok(frames)
}

// ---------------------------------------------------------------------------------
// Output

fn rows(r: &Report) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let latency = |rows: &mut Vec<Vec<String>>, what: &str, l: &Latency| {
        for (q, value, floor) in [
            ("p50", l.p50, r.raw_ping.p50),
            ("p99", l.p99, r.raw_ping.p99),
        ] {
            rows.push(vec![
                format!("round trip 64 B, {what}, {q}"),
                us(value),
                format!("raw ping-pong {q} {}", us(floor)),
                ratio(value.as_secs_f64() / floor.as_secs_f64()),
            ]);
        }
    };
    latency(&mut rows, "child recv", &r.rt_active);
    latency(&mut rows, "child on_receive", &r.rt_passive);
    for (what, rate) in [
        ("main → child", &r.small_to_child),
        ("child → main", &r.small_to_main),
    ] {
        for (floor, raw) in [
            ("raw, 1 frame per write", &r.raw_single),
            ("raw, 64 frames per write", &r.raw_batched),
        ] {
            rows.push(vec![
                format!("64 B messages, {what}"),
                msgs(rate.msgs_per_s()),
                format!("{floor} {}", msgs(raw.msgs_per_s())),
                ratio(rate.msgs_per_s() / raw.msgs_per_s()),
            ]);
        }
    }
    for (what, rate) in [
        ("main → child", &r.big_to_child),
        ("child → main", &r.big_to_main),
    ] {
        rows.push(vec![
            format!("64 KiB messages, {what}"),
            mbs(rate.mb_per_s()),
            format!("raw 64 KiB frames {}", mbs(r.raw_big.mb_per_s())),
            ratio(rate.mb_per_s() / r.raw_big.mb_per_s()),
        ]);
    }
    rows
}

fn settings(r: &Report) -> String {
    let p = &r.plan;
    format!(
        "mode: {}; {} rounds, each of: round trips: {} after {} warm-up; 64 B messages: {} ({} batched raw); \
         64 KiB messages: {}; message bodies: {} B for 64 B, {} B for 64 KiB (MessagePack bin); \
         latencies pool every round's samples, rates are the median round",
        if r.quick { "quick" } else { "full" },
        p.rounds,
        p.round_trips,
        p.warmup,
        p.small,
        p.batched(),
        p.big,
        r.body_small,
        r.body_big,
    )
}

const RATIO_NOTE: &str = "ratio = yukicomm / floor: for latency, above 1 is slower than the \
                          floor; for throughput, below 1 is slower than the floor. The raw \
                          floor is measured main → child only.";

fn table(r: &Report) -> Table {
    Table {
        title: "yukicomm channel benchmark: main process <-> one child".into(),
        settings: settings(r),
        head: Table::head([
            ("floor".into(), Align::Left),
            ("ratio".into(), Align::Right),
        ]),
        rows: rows(r),
        notes: vec![RATIO_NOTE.into()],
    }
}

// ---------------------------------------------------------------------------------

fn main() -> ExitCode {
    support::init_logging();
    let options = Options::from_env();
    let plan = Plan::new(options.quick);
    if support::is_main() {
        let limit = Duration::from_secs(if options.quick { 60 } else { 300 });
        support::deadline("channels bench", limit);
    }

    let mut app = App::new();
    app.add_target(CHILD, child_main)
        .restart(RestartPolicy::Never)
        .stop_timeout(Duration::from_secs(5));
    support::run("channels bench", app, move |ctx| {
        let report = run_main(ctx, plan, options.quick).map_err(|e| e.to_string())?;
        Ok(table(&report).render(options.markdown))
    })
}
