//! The child processes: the `client`, which runs the set/get workloads, the fills and
//! the publisher on command, and the `subNN` subscribers; each serves the main
//! process's commands on its active channel until told to quit.

use yukicomm::{Channel, Context, Store};

use crate::kv::{redis_fill, redis_kv, yuki_fill, yuki_kv, Work};
use crate::msg::{recv, send, unexpected, Msg, Target};
use crate::plan::IDLE_TIMEOUT;
use crate::pubsub::{
    redis_publish, redis_publish_async, redis_subscribe, yuki_publish, yuki_publish_batches,
    yuki_subscribe,
};
use crate::support::other;
use crate::Result;

/// The child that runs the set/get workloads and publishes.
pub const CLIENT: &str = "client";

/// The `client` child: set/get workloads, fills and publishing, on command.
pub async fn client_main(ctx: Context) -> yukicomm::Result<()> {
    let active = ctx.active_channel::<Msg>();
    let store = ctx.store();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || serve(&active, |m| client_command(&store, &rt, m)))
        .await
        .map_err(|e| other(format!("the client's bench thread failed: {e}")))?
}

/// A subscriber child.
pub async fn subscriber_main(ctx: Context) -> yukicomm::Result<()> {
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

/// The name of subscriber child `i`: `sub00`, `sub01`, ...
pub fn sub_name(i: usize) -> String {
    format!("sub{i:02}")
}
