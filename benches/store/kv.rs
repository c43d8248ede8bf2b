//! The set/get workloads, run in the `client` child: for yukicomm and for Redis, in each
//! shape (one client, 50 clients, 50 clients with 16 in flight) and with the
//! alternative drivers of `--alt`; and the pipelined fills that set keys beforehand.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use yukicomm::{Error, Payload, Store};

use crate::data::{check_value, key, key_into, payload, value, KEY, PAYLOAD, VALUE};
use crate::msg::{KvOp, Shape};
use crate::plan::{CLIENTS, FILL_WINDOW, IN_FLIGHT};
use crate::redis_server::{redis_connect, redis_connect_async, rerr};
use crate::support::other;
use crate::Result;

/// One set/get workload: `count` operations on keys `(start + i) % keyspace`.
#[derive(Clone, Copy, Debug)]
pub struct Work {
    pub op: KvOp,
    pub start: u64,
    pub count: u64,
    pub keyspace: u64,
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

/// Runs `w` against yukicomm's store in `shape` (`alt`: the alternative driver);
/// returns how long it took.
pub fn yuki_kv(
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

/// Sets (or deletes) keys `prefix` 0..count in yukicomm's store, `FILL_WINDOW` in
/// flight.
pub async fn yuki_fill(store: &Store, prefix: &str, count: u64, op: KvOp) -> Result<()> {
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

/// Runs `w` against Redis at `url` in `shape` (`alt`: the alternative driver); returns
/// how long it took, connecting excluded.
pub fn redis_kv(
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

/// Sets (or deletes) keys `prefix` 0..count in Redis, in pipelines of `FILL_WINDOW`.
pub fn redis_fill(socket: &str, prefix: &str, count: u64, op: KvOp) -> Result<()> {
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
