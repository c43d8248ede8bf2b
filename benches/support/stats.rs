//! Statistics over the rounds of a benchmark: percentiles of pooled latency samples,
//! the median round of a rate, and rates from counts and durations.

use std::time::Duration;

/// The 50th and 99th percentiles of a set of latency samples.
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

impl Latency {
    /// The percentiles of `samples` (nearest rank, rounded); `samples` must not be
    /// empty.
    pub fn from_samples(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[i]
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// `count` items of `size` bytes each, moved in `elapsed`.
pub struct Rate {
    pub count: u64,
    pub size: usize,
    pub elapsed: Duration,
}

impl Rate {
    /// Items per second.
    pub fn msgs_per_s(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        (self.count as f64 * self.size as f64) / 1e6 / self.elapsed.as_secs_f64()
    }

    /// The round with the median rate: the one with the median duration.
    pub fn median(rounds: Vec<Rate>) -> Rate {
        median_by(rounds, |a, b| a.elapsed.cmp(&b.elapsed))
    }
}

/// `count` per second over `nanos` nanoseconds (at least one).
pub fn per_second(count: u64, nanos: u64) -> f64 {
    count as f64 / (nanos.max(1) as f64 / 1e9)
}

/// The median of one figure per round (the upper one of an even count); NaN for none.
pub fn median(rounds: Vec<f64>) -> f64 {
    if rounds.is_empty() {
        return f64::NAN;
    }
    median_by(rounds, f64::total_cmp)
}

/// The median of `rounds` in the order `cmp` (the upper one of an even count);
/// `rounds` must not be empty.
fn median_by<T>(mut rounds: Vec<T>, cmp: impl FnMut(&T, &T) -> std::cmp::Ordering) -> T {
    rounds.sort_by(cmp);
    rounds.swap_remove(rounds.len() / 2)
}
