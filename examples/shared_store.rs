//! The shared store: the main process and two workers share a counter and an event
//! topic.
//!
//! Each worker, once both are ready, counts up the shared counter and publishes an event
//! each round; everyone subscribes to `events.*`, so each worker hears the other and the
//! main process hears both. When both workers have said they are done (the main process
//! watches their `done.*` keys), the main process prints the final count and stops.
//!
//! ```text
//! cargo run --example shared_store
//! cargo run --example shared_store -- --rounds 10 --interval-ms 50
//! cargo run --example shared_store -- --redis --rounds 100   # then, while it runs:
//! redis-cli -s <the socket it prints> GET counter
//! ```
//!
//! With `--redis` the store is also served over the Redis protocol, on a socket in the
//! hub's private directory (as `YUKICOMM_REDIS=unix` would do): `redis-cli` reads the
//! same counter the workers count up.

use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use tracing::info;
use yukicomm::store::ChangeKind;
use yukicomm::{shared_memory, App, Context};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Rounds each worker runs.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Milliseconds between rounds.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Also serve the store over the Redis protocol (a Unix socket; its path is logged).
    #[arg(long)]
    redis: bool,
}

/// What a worker publishes each round.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    worker: String,
    round: u32,
    counter: i64,
}

const WORKERS: [&str; 2] = ["worker-a", "worker-b"];

async fn worker(ctx: Context) -> yukicomm::Result<()> {
    // A worker is this binary re-executed with the same arguments.
    let args = Args::parse();
    let store = shared_memory();
    let me = ctx.name().to_string();

    // Hear the other worker.
    let events = store.subscriber_async::<Event>("events.*").await?;
    let listener_me = me.clone();
    tokio::spawn(async move {
        while let Ok(e) = events.recv_async().await {
            if e.worker != listener_me {
                info!(
                    "heard {} round {} (counter {})",
                    e.worker, e.round, e.counter
                );
            }
        }
    });

    // Start together: count in, and wait until both have.
    let ready = store.watch_async("ready").await?;
    let mut count = store.incr_async("ready", 1).await?;
    while count < WORKERS.len() as i64 {
        let change = ready.recv_async().await?;
        if let Some(v) = change.value {
            count = v.decode()?;
        }
    }

    for round in 1..=args.rounds {
        let counter = store.incr_async("counter", 1).await?;
        let event = Event {
            worker: me.clone(),
            round,
            counter,
        };
        store.publish_async(&format!("events.{me}"), &event).await?;
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    store.set_async(&format!("done.{me}"), &args.rounds).await?;
    // Stay until the main process stops us.
    let _ = ctx.active_channel::<()>().recv_async().await;
    Ok(())
}

fn main() -> yukicomm::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();

    let mut app = App::new();
    if args.redis {
        app.redis(yukicomm::RedisConfig::unix());
    }
    for name in WORKERS {
        app.add_target(name, worker);
    }
    // Subscribe and watch before the workers start, so that nothing is missed.
    app.on_before_start(|ctx| async move {
        if let Some(socket) = ctx.redis_socket_path() {
            info!(
                "the store over RESP: redis-cli -s {} GET counter",
                socket.display()
            );
        }
        let store = ctx.store();
        store.subscribe("events.*", |e: yukicomm::store::Publication<Event>| {
            info!(
                "event on {}: {} round {} (counter {})",
                e.topic, e.worker, e.round, e.counter
            );
        })?;
        let done = store.watch_prefix("done.")?;
        tokio::spawn(async move {
            let mut finished = 0;
            while finished < WORKERS.len() {
                match done.recv_async().await {
                    Ok(c) if c.kind == ChangeKind::Set => finished += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("{e}");
                        break;
                    }
                }
            }
            match ctx.store().get::<i64>("counter") {
                Ok(c) => info!("final counter: {}", c.unwrap_or(0)),
                Err(e) => tracing::error!("{e}"),
            }
            ctx.shutdown();
        });
        Ok(())
    });
    app.run()
}
