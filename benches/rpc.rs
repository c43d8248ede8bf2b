//! Calls benchmark: the main process calls a service served by one child process,
//! measured beside the channel round trip between the same two processes and beside
//! tarpc over a Unix socket between them.
//!
//! Measures, each round alternating the three so that they see the same conditions:
//!
//! - the channel round trip of a 64-byte message (the main process sends on
//!   `bench-active` and waits with a blocking `recv`; the child echoes from a blocking
//!   `recv` loop): p50, p99;
//! - a call with a 64-byte request and a 64-byte reply, one in flight, blocking
//!   (`NameBlockingClient`): p50, p99, and calls/s;
//! - calls/s with 64 async calls in flight;
//! - the same three for tarpc (its Unix-socket transport with bincode, the client and
//!   the server on the tokio runtime, as tarpc's examples set them up).
//!
//! ```text
//! cargo bench --bench rpc                 # full run
//! cargo bench --bench rpc -- --quick      # small counts (CI)
//! cargo bench --bench rpc -- --markdown   # the results as a markdown table
//! ```
//!
//! Every wait has a deadline: if the child dies or stops answering, the benchmark fails
//! with an error and a non-zero exit status instead of hanging.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tarpc::server::Channel as _;
use tarpc::tokio_serde::formats::Bincode;
use yukicomm::{App, Channel, Context, Error, MainContext, Payload, RestartPolicy};

use support::options::Options;
use support::report::{ops, ratio, us, Align, Table};
use support::stats::{per_second, Latency};
use support::{other, temp_path};

const CHILD: &str = "bench";
const SERVICE: &str = "bench-echo";
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const SMALL: usize = 64;
/// Calls in flight for the throughput with many.
const IN_FLIGHT: usize = 64;

type Result<T> = std::result::Result<T, Error>;

/// The yukicomm service measured.
#[yukicomm::service]
pub trait Echo {
    /// Returns `data`.
    async fn echo(&self, data: Payload) -> Payload;
}

struct EchoImpl;

#[yukicomm::service]
impl Echo for EchoImpl {
    async fn echo(&self, data: Payload) -> Payload {
        data
    }
}

/// The same service for tarpc.
#[tarpc::service]
trait TarpcEcho {
    async fn echo(data: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct TarpcEchoImpl;

impl TarpcEcho for TarpcEchoImpl {
    async fn echo(self, _: tarpc::context::Context, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

/// What travels on the child's active channel.
#[derive(Serialize, Deserialize)]
enum Msg {
    Data(Payload),
    /// Child to main: serving, and ready to echo.
    Ready,
    /// Main to child: serve tarpc on this socket path; answered by `Ready`.
    Tarpc(String),
    Quit,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    rounds: u32,
    warmup: u64,
    round_trips: u64,
    many: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                warmup: 200,
                round_trips: 1_000,
                many: 5_000,
            }
        } else {
            Plan {
                rounds: 5,
                warmup: 500,
                round_trips: 4_000,
                many: 50_000,
            }
        }
    }
}

struct Report {
    plan: Plan,
    quick: bool,
    channel: Latency,
    call: Latency,
    call_one: f64,
    call_many: f64,
    tarpc: Latency,
    tarpc_one: f64,
    tarpc_many: f64,
}

fn recv(ch: &Channel<Msg>) -> Result<Msg> {
    Ok(ch.recv_timeout(STEP_TIMEOUT)?)
}

fn payload(i: u64) -> Payload {
    let mut p = [0x5Au8; SMALL];
    p[..8].copy_from_slice(&i.to_le_bytes());
    Payload::from(p.to_vec())
}

fn channel_round_trips(ch: &Channel<Msg>, plan: Plan) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    for i in 0..plan.warmup + plan.round_trips {
        let sent = payload(i);
        let start = Instant::now();
        ch.send_timeout(Msg::Data(sent.clone()), STEP_TIMEOUT)?;
        let back = recv(ch)?;
        let elapsed = start.elapsed();
        match back {
            Msg::Data(b) if b == sent => {}
            _ => return Err(other(format!("round trip {i}: a wrong echo"))),
        }
        if i >= plan.warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

fn call_round_trips(echo: &EchoBlockingClient, plan: Plan) -> Result<(Vec<Duration>, f64)> {
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    let mut measured = Duration::ZERO;
    for i in 0..plan.warmup + plan.round_trips {
        let sent = payload(i);
        let start = Instant::now();
        let back = echo.echo(sent.clone())?;
        let elapsed = start.elapsed();
        if back != sent {
            return Err(other(format!("call {i}: a wrong echo")));
        }
        if i >= plan.warmup {
            samples.push(elapsed);
            measured += elapsed;
        }
    }
    let rate = per_second(plan.round_trips, measured.as_nanos() as u64);
    Ok((samples, rate))
}

/// `count` calls with `IN_FLIGHT` in flight at any time; calls per second.
async fn many_calls(echo: &EchoClient, count: u64) -> Result<f64> {
    let start = Instant::now();
    let mut results = futures::stream::iter(0..count)
        .map(|i| {
            let sent = payload(i);
            let call = echo.echo(sent.clone());
            async move { (call.await, sent) }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((back, sent)) = results.next().await {
        if back? != sent {
            return Err(other("a wrong echo among many calls"));
        }
    }
    Ok(per_second(count, start.elapsed().as_nanos() as u64))
}

async fn tarpc_round_trips(client: &TarpcEchoClient, plan: Plan) -> Result<(Vec<Duration>, f64)> {
    let mut samples = Vec::with_capacity(plan.round_trips as usize);
    let mut measured = Duration::ZERO;
    for i in 0..plan.warmup + plan.round_trips {
        let sent = payload(i).to_vec();
        let start = Instant::now();
        let back = client
            .echo(tarpc_context(), sent.clone())
            .await
            .map_err(|e| other(format!("tarpc call {i}: {e}")))?;
        let elapsed = start.elapsed();
        if back != sent {
            return Err(other(format!("tarpc call {i}: a wrong echo")));
        }
        if i >= plan.warmup {
            samples.push(elapsed);
            measured += elapsed;
        }
    }
    Ok((
        samples,
        per_second(plan.round_trips, measured.as_nanos() as u64),
    ))
}

async fn tarpc_many(client: &TarpcEchoClient, count: u64) -> Result<f64> {
    let start = Instant::now();
    let mut results = futures::stream::iter(0..count)
        .map(|i| {
            let sent = payload(i).to_vec();
            let call = client.echo(tarpc_context(), sent.clone());
            async move { (call.await, sent) }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((back, sent)) = results.next().await {
        let back = back.map_err(|e| other(format!("tarpc: {e}")))?;
        if back != sent {
            return Err(other("tarpc: a wrong echo among many calls"));
        }
    }
    Ok(per_second(count, start.elapsed().as_nanos() as u64))
}

fn tarpc_context() -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + STEP_TIMEOUT;
    ctx
}

fn run_main(ctx: &MainContext, plan: Plan, quick: bool) -> Result<Report> {
    let active = ctx.get_channel::<Msg>(&format!("{CHILD}-active"))?;
    match recv(&active)? {
        Msg::Ready => {}
        _ => return Err(other("expected Ready")),
    }
    let echo = EchoClient::new(ctx, SERVICE).with_timeout(STEP_TIMEOUT);
    let blocking = echo.blocking();

    // tarpc: the child listens, the main process connects.
    let path = temp_path("yukicomm-bench-tarpc", ".sock");
    let _cleanup = RemoveOnDrop(path.clone());
    active.send_timeout(Msg::Tarpc(path.display().to_string()), STEP_TIMEOUT)?;
    match recv(&active)? {
        Msg::Ready => {}
        _ => return Err(other("expected Ready after Tarpc")),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(support::io("tokio runtime"))?;
    let client = rt.block_on(async {
        let transport = tarpc::serde_transport::unix::connect(&path, Bincode::default)
            .await
            .map_err(support::io("tarpc: connect"))?;
        Ok::<_, Error>(TarpcEchoClient::new(tarpc::client::Config::default(), transport).spawn())
    })?;

    let (mut channel, mut call, mut tarpc) = (Vec::new(), Vec::new(), Vec::new());
    let mut rates: [Vec<f64>; 4] = Default::default();
    for _ in 0..plan.rounds {
        channel.extend(channel_round_trips(&active, plan)?);
        let (samples, one) = call_round_trips(&blocking, plan)?;
        call.extend(samples);
        rates[0].push(one);
        let (samples, one) = rt.block_on(tarpc_round_trips(&client, plan))?;
        tarpc.extend(samples);
        rates[1].push(one);
        rates[2].push(rt.block_on(many_calls(&echo, plan.many))?);
        rates[3].push(rt.block_on(tarpc_many(&client, plan.many))?);
    }
    drop(client);
    active.send_timeout(Msg::Quit, STEP_TIMEOUT)?;
    let [call_one, tarpc_one, call_many, tarpc_many] = rates.map(support::stats::median);
    Ok(Report {
        plan,
        quick,
        channel: Latency::from_samples(channel),
        call: Latency::from_samples(call),
        call_one,
        call_many,
        tarpc: Latency::from_samples(tarpc),
        tarpc_one,
        tarpc_many,
    })
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn child_main(ctx: Context) -> yukicomm::Result<()> {
    ctx.serve(SERVICE, EchoImpl)?;
    let active = ctx.active_channel::<Msg>();
    active.send_async(Msg::Ready).await?;
    let ch = active.clone();
    tokio::task::spawn_blocking(move || echo_loop(&ch))
        .await
        .map_err(|e| other(format!("the echo loop failed: {e}")))?
}

/// Echoes data from a blocking `recv` loop; starts tarpc's server when asked.
fn echo_loop(ch: &Channel<Msg>) -> Result<()> {
    loop {
        match ch.recv_timeout(IDLE_TIMEOUT)? {
            Msg::Data(d) => ch.send_timeout(Msg::Data(d), STEP_TIMEOUT)?,
            Msg::Tarpc(path) => {
                let rt = tokio::runtime::Handle::current();
                let listener = rt.block_on(tarpc::serde_transport::unix::listen(
                    &path,
                    Bincode::default,
                ));
                let listener = listener.map_err(support::io("tarpc: listen"))?;
                rt.spawn(async move {
                    let mut incoming = listener.into_stream();
                    if let Ok(Some(transport)) = incoming.try_next().await {
                        tarpc::server::BaseChannel::with_defaults(transport)
                            .execute(TarpcEchoImpl.serve())
                            .for_each(|response| async move {
                                tokio::spawn(response);
                            })
                            .await;
                    }
                });
                ch.send_timeout(Msg::Ready, STEP_TIMEOUT)?;
            }
            Msg::Quit => return Ok(()),
            Msg::Ready => return Err(other("the child got Ready")),
        }
    }
}

fn table(r: &Report) -> Table {
    let mut rows = Vec::new();
    for (q, call, channel, tarpc) in [
        ("p50", r.call.p50, r.channel.p50, r.tarpc.p50),
        ("p99", r.call.p99, r.channel.p99, r.tarpc.p99),
    ] {
        rows.push(vec![
            format!("call round trip 64 B, {q}"),
            us(call),
            format!("channel round trip {}", us(channel)),
            ratio(call.as_secs_f64() / channel.as_secs_f64()),
        ]);
        rows.push(vec![
            format!("call round trip 64 B, {q}"),
            us(call),
            format!("tarpc {}", us(tarpc)),
            ratio(call.as_secs_f64() / tarpc.as_secs_f64()),
        ]);
    }
    rows.push(vec![
        "calls/s, 1 in flight".into(),
        ops(r.call_one),
        format!("tarpc {}", ops(r.tarpc_one)),
        ratio(r.call_one / r.tarpc_one),
    ]);
    rows.push(vec![
        format!("calls/s, {IN_FLIGHT} in flight"),
        ops(r.call_many),
        format!("tarpc {}", ops(r.tarpc_many)),
        ratio(r.call_many / r.tarpc_many),
    ]);
    let p = r.plan;
    Table {
        title: "yukicomm calls benchmark: main process -> one child".into(),
        settings: format!(
            "mode: {}; {} rounds, each of: {} round trips of each kind after {} warm-up; \
             {} calls with {IN_FLIGHT} in flight; latencies pool every round's samples, \
             rates are the median round",
            if r.quick { "quick" } else { "full" },
            p.rounds,
            p.round_trips,
            p.warmup,
            p.many,
        ),
        head: Table::head([
            ("compared with".into(), Align::Left),
            ("ratio".into(), Align::Right),
        ]),
        rows,
        notes: vec![
            "ratio = yukicomm call / the other: for latency, below 1 is faster; for \
             calls/s, above 1 is faster."
                .into(),
        ],
    }
}

fn main() -> ExitCode {
    support::init_logging();
    let options = Options::from_env();
    let plan = Plan::new(options.quick);
    if support::is_main() {
        let limit = Duration::from_secs(if options.quick { 60 } else { 300 });
        support::deadline("rpc bench", limit);
    }
    let mut app = App::new();
    app.add_target(CHILD, child_main)
        .restart(RestartPolicy::Never)
        .stop_timeout(Duration::from_secs(5));
    support::run("rpc bench", app, move |ctx| {
        let report = run_main(ctx, plan, options.quick).map_err(|e| e.to_string())?;
        Ok(table(&report).render(options.markdown))
    })
}
