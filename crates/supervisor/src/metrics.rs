//! The Prometheus endpoint (cargo feature `prometheus`): the figures of `yukicomm
//! status` as counters and gauges in the OpenMetrics text format, labelled by process,
//! channel and subscription, served over HTTP at `GET /metrics` on the address given
//! with [`App::metrics`](crate::App::metrics) or `YUKICOMM_METRICS_ADDR`.
//!
//! The figures are read from the hub when a scrape arrives (a fresh registry each
//! time, built with `prometheus-client`): nothing is kept or updated on any path a
//! message takes. The endpoint has no access control of its own: it shows figures and
//! names, never message contents, to whoever can reach the address, so bind it to a
//! loopback address (`127.0.0.1:9464`) unless the network is trusted.
//!
//! The HTTP side is as small as a scrape needs: one request per connection, read
//! within 5 seconds and at most 8 KiB, answered and closed.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yukicomm_hub::Hub;
use yukicomm_wire::stats::{Stats, Traffic};

/// The environment variable that turns the endpoint on, with the address to serve.
pub const ENV_METRICS_ADDR: &str = "YUKICOMM_METRICS_ADDR";

/// Labels of one series.
type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Families of counters and gauges, registered once per scrape.
struct Families {
    registry: Registry,
}

impl Families {
    fn new() -> Families {
        Families {
            registry: Registry::with_prefix("yukicomm"),
        }
    }

    fn gauge(&mut self, name: &str, help: &str) -> Family<Labels, Gauge<f64, AtomicU64>> {
        let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        self.registry.register(name, help, f.clone());
        f
    }

    fn counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter> {
        let f = Family::<Labels, Counter>::default();
        self.registry.register(name, help, f.clone());
        f
    }
}

/// The OpenMetrics text for `stats`.
pub fn render(stats: &Stats) -> String {
    let mut f = Families::new();
    let up = f.gauge(
        "process_up",
        "1 while the process is in a healthy state, else 0",
    );
    let state = f.gauge("process_state", "1 for the state the process is in");
    let restarts = f.counter("process_restarts", "times the process was started again");
    let cpu = f.gauge(
        "process_cpu_percent",
        "CPU use of the process, percent of one core",
    );
    let rss = f.gauge(
        "process_resident_memory_bytes",
        "resident memory of the process",
    );
    let uptime = f.gauge("process_uptime_seconds", "time since the process started");
    let backoff = f.gauge(
        "process_backoff_seconds",
        "time until the process is restarted",
    );
    let msgs_in = f.counter("messages_sent", "channel messages the process sent");
    let msgs_out = f.counter(
        "messages_received",
        "channel messages delivered to the process",
    );
    let bytes_in = f.counter(
        "message_bytes_sent",
        "bytes of channel messages the process sent",
    );
    let bytes_out = f.counter(
        "message_bytes_received",
        "bytes of channel messages delivered to the process",
    );
    let in_flight = f.gauge(
        "process_in_flight_messages",
        "most messages sent from one channel end of the process and not yet delivered",
    );
    let window = f.gauge(
        "process_window_messages",
        "the credit window per channel end",
    );
    let backlog = f.gauge(
        "channel_backlog_messages",
        "messages waiting in the hub for an end",
    );
    let backlog_bytes = f.gauge(
        "channel_backlog_bytes",
        "bytes waiting in the hub for an end",
    );
    let store = f.gauge("store_keys", "keys in the shared store");
    let store_bytes = f.gauge(
        "store_bytes",
        "bytes of keys and values in the shared store",
    );
    let store_ops = f.counter("store_operations", "operations applied by the store");
    let published = f.counter("store_published", "messages published");
    let subs = f.gauge("store_subscriptions", "subscriptions and watches");
    let lag = f.gauge(
        "store_journal_fsync_lag_seconds",
        "time written journal data has waited for a sync",
    );
    let buffered = f.gauge(
        "subscription_buffered",
        "deliveries waiting for the subscriber",
    );
    let missed = f.counter("subscription_missed", "deliveries the subscriber missed");

    let traffic = |name: &str, t: &Traffic| {
        let l = labels(&[("process", name)]);
        msgs_in.get_or_create(&l).inc_by(t.msgs_in);
        msgs_out.get_or_create(&l).inc_by(t.msgs_out);
        bytes_in.get_or_create(&l).inc_by(t.bytes_in);
        bytes_out.get_or_create(&l).inc_by(t.bytes_out);
    };
    traffic("main", &stats.main.traffic);
    for p in &stats.processes {
        let l = labels(&[("process", &p.name)]);
        up.get_or_create(&l)
            .set(if p.is_healthy() { 1.0 } else { 0.0 });
        state
            .get_or_create(&labels(&[
                ("process", &p.name),
                ("state", p.state.as_str()),
            ]))
            .set(1.0);
        restarts.get_or_create(&l).inc_by(u64::from(p.restarts));
        if let Some(c) = p.cpu_permille {
            cpu.get_or_create(&l).set(f64::from(c) / 10.0);
        }
        if let Some(r) = p.rss_bytes {
            rss.get_or_create(&l).set(r as f64);
        }
        if let Some(u) = p.uptime_ms {
            uptime.get_or_create(&l).set(u as f64 / 1000.0);
        }
        if let Some(b) = p.backoff_ms {
            backoff.get_or_create(&l).set(b as f64 / 1000.0);
        }
        in_flight.get_or_create(&l).set(p.queued as f64);
        window.get_or_create(&l).set(f64::from(p.window));
        traffic(&p.name, &p.traffic);
    }
    for c in &stats.channels {
        let name = c.name.clone().unwrap_or_else(|| c.chan.to_string());
        for e in &c.ends {
            let end = format!("{:?}", e.end);
            let l = labels(&[("channel", &name), ("end", &end)]);
            backlog.get_or_create(&l).set(e.backlog as f64);
            backlog_bytes.get_or_create(&l).set(e.backlog_bytes as f64);
        }
    }
    let none = Labels::new();
    store.get_or_create(&none).set(stats.store.keys as f64);
    store_bytes
        .get_or_create(&none)
        .set(stats.store.bytes as f64);
    store_ops.get_or_create(&none).inc_by(stats.store.ops);
    published.get_or_create(&none).inc_by(stats.store.published);
    subs.get_or_create(&none)
        .set(stats.store.subscriptions as f64);
    if let Some(j) = &stats.store.journal {
        lag.get_or_create(&none).set(j.fsync_lag_ms as f64 / 1000.0);
    }
    for s in &stats.subscriptions {
        let sub = s.sub.to_string();
        let l = labels(&[
            ("process", &s.process),
            ("pattern", &s.pattern),
            ("sub", &sub),
        ]);
        buffered.get_or_create(&l).set(f64::from(s.buffered));
        missed.get_or_create(&l).inc_by(s.missed_total);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &f.registry);
    out
}

/// Serves `GET /metrics` on `addr` until the task is dropped.
///
/// # Errors
///
/// When the address cannot be bound.
pub(crate) async fn serve(
    hub: Arc<Hub>,
    addr: SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let (mut stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), answer(&hub, &mut stream)).await;
            });
        }
    }))
}

/// Reads one request head and answers it.
async fn answer(hub: &Hub, stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(
                stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let body = render(&hub.stats());
            respond(
                stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        (Some(b"GET"), _) => respond(stream, "404 Not Found", "text/plain", "try /metrics\n").await,
        _ => respond(stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
