//! `yukicomm store` and `yukicomm subscriptions`.

use std::process::ExitCode;

use yukicomm_wire::stats::Stats;

use super::{print, print_json, table};
use crate::connect::{Error, Observer};
use crate::format::{bytes, count};

pub fn run(observer: &mut Observer, json: bool, subscriptions: bool) -> Result<ExitCode, Error> {
    let stats = observer.stats()?;
    match (subscriptions, json) {
        (false, true) => print_json(&stats.store)?,
        (true, true) => print_json(&stats.subscriptions)?,
        (false, false) => print(&summary(&stats))?,
        (true, false) => {
            let mut text = table(&subscription_rows(&stats));
            if stats.subscriptions_omitted > 0 {
                text.push_str(&format!(
                    "({} more not listed)\n",
                    count(stats.subscriptions_omitted)
                ));
            }
            print(&text)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store in a few lines.
pub fn summary(s: &Stats) -> String {
    let st = &s.store;
    let mut text = format!(
        "keys {}  memory {}  ops {}/s ({} in all)  published {}/s ({} in all)  subscriptions {}\n",
        count(st.keys),
        bytes(st.bytes),
        count(st.ops_per_s),
        count(st.ops),
        count(st.published_per_s),
        count(st.published),
        count(st.subscriptions),
    );
    match &st.journal {
        Some(j) => text.push_str(&format!(
            "journal {}  {}  fsync {}  unsynced for {} ms{}\n",
            j.path,
            bytes(j.bytes),
            j.fsync,
            j.fsync_lag_ms,
            if j.failed {
                "  FAILED: writes refused"
            } else {
                ""
            }
        )),
        None => text.push_str("journal none (in memory only)\n"),
    }
    text
}

/// The subscription table, header row first.
pub fn subscription_rows(s: &Stats) -> Vec<Vec<String>> {
    let mut rows = vec![["PROCESS", "SUB", "KIND", "PATTERN", "BUFFER", "MISSED"]
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()];
    for sub in &s.subscriptions {
        rows.push(vec![
            sub.process.clone(),
            sub.sub.to_string(),
            sub.kind.clone(),
            sub.pattern.clone(),
            format!(
                "{}/{} ({})",
                sub.buffered,
                sub.capacity,
                bytes(sub.buffered_bytes)
            ),
            count(sub.missed_total),
        ]);
    }
    rows
}
