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
//!
//! The bench is split by concern:
//!
//! | module | what it holds |
//! |---|---|
//! | `msg.rs` | the messages between the main process and the children |
//! | `data.rs` | keys, values, the shared clock, resident memory |
//! | `redis_server.rs` | starting `redis-server` and connecting to it |
//! | `plan.rs` | the store bench's options, counts and time limits |
//! | `child.rs` | the child processes: the client and the subscribers |
//! | `kv.rs` | the set/get workloads, for yukicomm and Redis |
//! | `pubsub.rs` | publishers and subscribers, for yukicomm and Redis |
//! | `measure.rs` | the main process: driving the children, round by round |
//! | `report.rs` | the table of results |
//!
//! What the channel bench shares with this one (options, statistics, the table's
//! layout) is in `benches/support/`.

mod child;
mod data;
mod kv;
mod measure;
mod msg;
mod plan;
mod pubsub;
mod redis_server;
mod report;
#[path = "../support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use yukicomm::{App, Error, RestartPolicy};

use child::{client_main, sub_name, subscriber_main, CLIENT};
use plan::{Options, MAX_SUBSCRIBERS};
use redis_server::{find_in_path, start_redis};

/// The result of a step of the bench; its error names what failed.
type Result<T> = std::result::Result<T, Error>;

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
        let report = measure::run_main(ctx, &options, redis).map_err(|e| e.to_string())?;
        Ok(report::table(&report).render(options.markdown))
    })
}
