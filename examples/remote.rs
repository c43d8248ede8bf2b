//! A main process and a worker that joins it over TCP with mutual TLS, as it would from
//! another machine.
//!
//! ```text
//! cargo run --example remote                         # both halves, on 127.0.0.1
//! cargo run --example remote -- main 0.0.0.0:7700    # host A: listens, prints a token
//! YUKICOMM_HUB=yk://HOST-A:7700 YUKICOMM_JOIN=<token> \
//!     cargo run --example remote -- worker           # host B: joins with it
//! ```
//!
//! The main process listens for remote processes, issues a join token for `gpu-worker`
//! and, without arguments, starts the worker half itself as a separate process with the
//! token in its environment (on two machines, copy the printed line to the other one).
//! The worker enrols (obtaining its own certificate, kept under
//! `~/.local/state/yukicomm/remote`), joins, serves the `squares` service and answers
//! jobs on its active channel on its passive channel. The main process sends `--jobs`
//! jobs (default 5), calls the service once, reads what the worker wrote in the store,
//! and exits 0 once everything came back.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use yukicomm::App;

/// A job for the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: u32,
    numbers: Vec<u64>,
}

/// The worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    id: u32,
    sum: u64,
    by: String,
}

/// Computes squares for whoever calls.
#[yukicomm::service]
pub trait Squares {
    /// `n * n`.
    async fn square(&self, n: u64) -> u64;
}

struct Worker;

impl Squares for Worker {
    async fn square(&self, n: u64) -> u64 {
        n * n
    }
}

const WORKER: &str = "gpu-worker";
const WAIT: Duration = Duration::from_secs(20);

fn main() -> yukicomm::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("worker") => worker(),
        Some("main") => main_process(args.get(1).cloned(), false, jobs(&args)),
        _ => main_process(None, true, jobs(&args)),
    }
}

fn jobs(args: &[String]) -> u32 {
    args.iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
}

/// Host A: listens, issues a token, and (when `start_worker`) starts the worker half.
fn main_process(addr: Option<String>, start_worker: bool, jobs: u32) -> yukicomm::Result<()> {
    let mut app = App::new();
    app.listen_remote(addr.as_deref().unwrap_or("127.0.0.1:0"));
    app.on_after_start(move |ctx| async move {
        let token = ctx.join_token(WORKER, Duration::from_secs(600))?;
        let addr = ctx.remote_addr().expect("listening");
        let mut child = None;
        if start_worker {
            let me = std::env::current_exe().map_err(|e| yukicomm::Error::Other(e.to_string()))?;
            child = Some(
                std::process::Command::new(me)
                    .arg("worker")
                    .env("YUKICOMM_HUB", format!("yk://{addr}"))
                    .env("YUKICOMM_JOIN", &token)
                    .spawn()
                    .map_err(|e| yukicomm::Error::Other(format!("cannot start the worker: {e}")))?,
            );
            println!("main: listening on {addr}; started the worker with a join token");
        } else {
            // Listening on every address: the other machine knows this one's name.
            let host = if addr.ip().is_unspecified() {
                "HOST-A".to_string()
            } else {
                addr.ip().to_string()
            };
            println!("main: listening on {addr}; on the other machine run:");
            println!(
                "  YUKICOMM_HUB=yk://{host}:{} YUKICOMM_JOIN={token} cargo run --example remote -- worker",
                addr.port()
            );
        }
        let result = tokio::task::spawn_blocking({
            let ctx = ctx.clone();
            move || -> yukicomm::Result<()> {
                let squares = SquaresClient::new(&ctx, "squares")
                    .waiting_for_server()
                    .with_timeout(WAIT);
                let nine = squares.blocking().square(3).map_err(|e| yukicomm::Error::Other(e.to_string()))?;
                println!("main: square(3) = {nine}, computed remotely");
                let to_worker = ctx.get_channel::<Job>(&format!("{WORKER}-active"))?;
                let from_worker = ctx.get_channel::<Done>(&format!("{WORKER}-passive"))?;
                for id in 0..jobs {
                    let numbers: Vec<u64> = (1..=u64::from(id) + 3).collect();
                    to_worker.send(Job { id, numbers })?;
                }
                for _ in 0..jobs {
                    let done = from_worker
                        .recv_timeout(WAIT)
                        .map_err(|e| yukicomm::Error::Other(e.to_string()))?;
                    println!("main: job {} summed to {} by {}", done.id, done.sum, done.by);
                }
                let host = ctx.store().get::<String>("gpu-worker.host")?;
                println!("main: the worker wrote its host in the store: {}", host.unwrap_or_default());
                Ok(())
            }
        })
        .await
        .map_err(|e| yukicomm::Error::Other(e.to_string()))?;
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        match &result {
            Ok(()) => println!("main: all {jobs} jobs done"),
            Err(e) => {
                eprintln!("main: {e}");
                FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        ctx.shutdown();
        result
    });
    app.run()?;
    if FAILED.load(std::sync::atomic::Ordering::Relaxed) {
        std::process::exit(1);
    }
    Ok(())
}

/// Whether the main half failed (its hook's error is logged; the exit status says it).
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Host B: joins with `YUKICOMM_HUB` and `YUKICOMM_JOIN`, serves, and answers jobs.
fn worker() -> yukicomm::Result<()> {
    let ctx = yukicomm::connect()?;
    ctx.serve("squares", SquaresServer::new(Worker))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    ctx.store()
        .set("gpu-worker.host", &host.trim().to_string())?;
    let jobs = ctx.active_channel::<Job>();
    let answers = ctx.passive_channel::<Done>();
    for job in jobs.iter() {
        let job = job?;
        let sum = job.numbers.iter().sum();
        answers.send(Done {
            id: job.id,
            sum,
            by: ctx.name().to_string(),
        })?;
    }
    Ok(())
}
