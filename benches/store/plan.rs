//! The store bench's options (beyond `--quick` and `--markdown`, read in
//! `support::options`), which measurements run, how many operations and messages each
//! counts, and the time limits of every wait.

use std::time::Duration;

use crate::msg::Shape;
use crate::support::options;

/// Subscriber processes started (the largest fan-out measured).
pub const MAX_SUBSCRIBERS: usize = 32;

/// The fan-outs measured.
pub const FAN_OUTS: [usize; 3] = [1, 8, 32];

/// Concurrent clients in the "50 clients" shapes.
pub const CLIENTS: u64 = 50;

/// Requests in flight per client in the pipelined shape.
pub const IN_FLIGHT: usize = 16;

/// Publish requests in flight.
pub const PUBLISH_WINDOW: usize = 64;

/// Requests in flight (yukicomm) or per pipeline (Redis) when filling the store.
pub const FILL_WINDOW: usize = 1024;

/// The longest wait for an acknowledgement or a first message.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a child may take for one workload.
pub const WORK_TIMEOUT: Duration = Duration::from_secs(180);

/// The longest a child waits for its next command.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(900);

/// A subscriber that received messages stops after this long without one (messages
/// dropped at the end are never announced).
pub const TAIL_IDLE: Duration = Duration::from_secs(2);

/// The store bench's options.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--quick`: small counts.
    pub quick: bool,
    /// `--markdown`: the report as a markdown table.
    pub markdown: bool,
    /// `--no-redis`: yukicomm alone.
    pub no_redis: bool,
    /// `--alt`: the alternative ways of driving each shape.
    pub alt: bool,
    /// `--verbose`: every round's figures on stderr.
    pub verbose: bool,
    /// `--rounds N`: rounds instead of the plan's.
    pub rounds: Option<u32>,
    /// `--window N`: messages per publish batch.
    pub window: Option<u32>,
    /// `--only a,b`: the measurements that run (all if empty).
    only: Vec<String>,
}

/// The names `--only` takes.
const NAMES: [&str; 9] = [
    "kv",
    "kv-1",
    "kv-50",
    "kv-50x16",
    "pubsub",
    "pubsub-1",
    "pubsub-8",
    "pubsub-32",
    "memory",
];

impl Options {
    /// Reads the environment (`YUKICOMM_BENCH_QUICK`, `YUKICOMM_BENCH_MARKDOWN`,
    /// `YUKICOMM_BENCH_ONLY`) and the arguments.
    ///
    /// # Errors
    ///
    /// A malformed `--window` or `--rounds`, or an unknown name in `--only`.
    pub fn from_env() -> std::result::Result<Options, String> {
        let mut o = Options {
            quick: false,
            markdown: false,
            no_redis: false,
            alt: false,
            verbose: false,
            rounds: None,
            window: None,
            only: Vec::new(),
        };
        let mut only = options::env("YUKICOMM_BENCH_ONLY")
            .into_iter()
            .collect::<Vec<_>>();
        let common = options::Options::parse(|a, args| {
            match a {
                "--no-redis" => o.no_redis = true,
                "--alt" => o.alt = true,
                "--verbose" => o.verbose = true,
                "--only" => only.extend(args.next()),
                "--window" => {
                    let n = args.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
                    o.window = Some(n.ok_or("--window takes a positive number")?);
                }
                "--rounds" => {
                    let n = args.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
                    o.rounds = Some(n.ok_or("--rounds takes a positive number")?);
                }
                _ => {
                    if let Some(v) = a.strip_prefix("--only=") {
                        only.push(v.to_string());
                    }
                }
            }
            Ok::<(), String>(())
        })?;
        o.quick = common.quick;
        o.markdown = common.markdown;
        for list in only {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !NAMES.contains(&name) {
                    return Err(format!(
                        "--only: unknown measurement '{name}'; known: {}",
                        NAMES.join(", ")
                    ));
                }
                o.only.push(name.to_string());
            }
        }
        Ok(o)
    }

    /// Whether the measurement `name` (such as `kv-50` or `pubsub-8`) runs.
    pub fn selected(&self, name: &str) -> bool {
        let group = name.split('-').next().unwrap_or(name);
        self.only.is_empty() || self.only.iter().any(|o| o == name || o == group)
    }

    /// Whether any publish/subscribe measurement runs (and so the subscribers start).
    pub fn any_pubsub(&self) -> bool {
        FAN_OUTS
            .iter()
            .any(|n| self.selected(&format!("pubsub-{n}")))
    }

    /// Whether any set/get measurement runs.
    pub fn any_kv(&self) -> bool {
        Shape::ALL.iter().any(|s| self.selected(s.name()))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Each round measures every rate once for each system; rates are the median
    /// round.
    pub rounds: u32,
    /// Keys the set/get workloads use (set beforehand, so GETs find them).
    pub keyspace: u64,
    /// Operations per measurement, by shape.
    pub one: u64,
    pub many: u64,
    pub pipelined: u64,
    /// Messages published per measurement, by fan-out (1, 8, 32).
    pub messages: [u64; 3],
    /// Keys for the memory measurement.
    pub memory_keys: u64,
}

impl Plan {
    /// The counts of a quick or a full run.
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                keyspace: 10_000,
                one: 4_000,
                many: 20_000,
                pipelined: 100_000,
                messages: [20_000, 10_000, 4_000],
                memory_keys: 100_000,
            }
        } else {
            Plan {
                rounds: 5,
                keyspace: 100_000,
                one: 40_000,
                many: 150_000,
                pipelined: 500_000,
                messages: [400_000, 150_000, 50_000],
                memory_keys: 1_000_000,
            }
        }
    }

    /// Operations per measurement in `shape`.
    pub fn ops(&self, shape: Shape) -> u64 {
        match shape {
            Shape::One => self.one,
            Shape::Many => self.many,
            Shape::Pipelined => self.pipelined,
        }
    }
}
