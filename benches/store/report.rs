//! The store bench's table: one row per measurement with yukicomm's figure, Redis's,
//! their ratio and the target it is held to, under the settings of the run and above
//! how the clients were driven.

use std::fmt::Write as _;

use crate::data::{KEY, PAYLOAD, VALUE};
use crate::measure::Report;
use crate::msg::Shape;
use crate::plan::{CLIENTS, IN_FLIGHT, PUBLISH_WINDOW};
use crate::support::report::{msgs, ops, ratio, thousands, Align, Table};
use crate::support::stats::median;

/// One measurement: its name, the two figures, their ratio, the target and whether it
/// is met.
struct Row {
    measure: String,
    yuki: String,
    redis: String,
    ratio: String,
    target: String,
    met: String,
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
fn ratio_text(x: f64, goal: f64) -> String {
    if format!("{x:.2}") == format!("{goal:.2}") && x != goal {
        format!("{x:.3}x")
    } else {
        ratio(x)
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

/// The report of a run.
pub fn table(r: &Report) -> Table {
    let rows = rows(r)
        .into_iter()
        .map(|row| {
            vec![
                row.measure,
                row.yuki,
                row.redis,
                row.ratio,
                row.target,
                row.met,
            ]
        })
        .collect();
    Table {
        title: "yukicomm store benchmark: clients in child processes".into(),
        settings: settings(r),
        head: Table::head([
            (redis_column(r), Align::Right),
            ("ratio".into(), Align::Right),
            ("target".into(), Align::Right),
            ("met".into(), Align::Left),
        ]),
        rows,
        notes: vec![RATIO_NOTE.into(), drivers(r).into()],
    }
}
