//! `yukicomm status`: the processes, as a table or as JSON.

use std::process::ExitCode;

use yukicomm_wire::stats::{ProcessStats, Stats};

use super::{print, print_json, table};
use crate::connect::{Error, Observer};
use crate::format::{bytes, count, duration_ms, or_dash, permille};

pub fn run(observer: &mut Observer, json: bool) -> Result<ExitCode, Error> {
    let stats = observer.stats()?;
    if json {
        print_json(&stats)?;
    } else {
        print(&format!(
            "{}\n{}",
            header(&stats),
            table(&process_rows(&stats))
        ))?;
    }
    Ok(if stats.processes.iter().all(ProcessStats::is_healthy) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `main 41233  up 3h12m  hub: 5 processes, 14 channels, 10,412 keys`.
pub fn header(s: &Stats) -> String {
    format!(
        "main {}  {}  up {}  hub: {} processes, {} channels, {} keys",
        s.main.pid,
        s.main.program,
        duration_ms(s.main.uptime_ms),
        s.processes.len(),
        count(s.channels.len() as u64 + s.channels_omitted),
        count(s.store.keys),
    )
}

/// The column titles of [`process_row`].
pub const PROCESS_COLUMNS: [&str; 11] = [
    "NAME",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "LAST EXIT",
    "CPU",
    "RSS",
    "IN/s",
    "OUT/s",
    "QUEUED",
];

/// One process as table cells.
pub fn process_row(p: &ProcessStats) -> Vec<String> {
    let state = match p.backoff_ms {
        Some(ms) => format!("{} {}", p.state, duration_ms(ms)),
        None => p.state.to_string(),
    };
    let last_exit = p
        .last_exit
        .as_ref()
        .map(|e| format!("{e} ({}, {} ago)", e.reason, duration_ms(e.ago_ms)))
        .unwrap_or_default();
    let traffic = p.connected || p.traffic.msgs_in > 0 || p.traffic.msgs_out > 0;
    vec![
        p.name.clone(),
        state,
        or_dash(p.pid, |v| v.to_string()),
        or_dash(p.uptime_ms, duration_ms),
        p.restarts.to_string(),
        last_exit,
        or_dash(p.cpu_permille, permille),
        or_dash(p.rss_bytes, bytes),
        or_dash(traffic.then_some(p.traffic.msgs_in_per_s), count),
        or_dash(traffic.then_some(p.traffic.msgs_out_per_s), count),
        if p.connected {
            format!("{}/{}", p.queued, p.window)
        } else {
            "-".into()
        },
    ]
}

/// The process table, header row first.
pub fn process_rows(s: &Stats) -> Vec<Vec<String>> {
    let mut rows = vec![PROCESS_COLUMNS.iter().map(|c| c.to_string()).collect()];
    rows.extend(s.processes.iter().map(process_row));
    rows
}
