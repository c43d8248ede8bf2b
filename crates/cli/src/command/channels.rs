//! `yukicomm channels`: the channels, their ends, holders, receivers and backlog.

use std::process::ExitCode;

use yukicomm_wire::stats::{ChannelStats, Stats};

use super::{print, print_json, table};
use crate::connect::{Error, Observer};
use crate::format::{bytes, count};

pub fn run(observer: &mut Observer, json: bool) -> Result<ExitCode, Error> {
    let stats = observer.stats()?;
    if json {
        print_json(&stats.channels)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = table(&rows(&stats));
    if stats.channels_omitted > 0 {
        text.push_str(&format!(
            "({} more not listed)\n",
            count(stats.channels_omitted)
        ));
    }
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The channel's name, or its number.
pub fn label(c: &ChannelStats) -> String {
    c.name.clone().unwrap_or_else(|| c.chan.to_string())
}

/// The channel table, header row first.
pub fn rows(s: &Stats) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["CHANNEL", "TYPE", "END", "HOLDERS", "RECEIVING", "BACKLOG"]
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
    ];
    for c in &s.channels {
        for (i, e) in c.ends.iter().enumerate() {
            let (name, ty) = if i == 0 {
                let closed = if c.closed { " (closed)" } else { "" };
                (format!("{}{closed}", label(c)), c.type_name.clone())
            } else {
                (String::new(), String::new())
            };
            rows.push(vec![
                name,
                ty,
                format!("{:?}", e.end),
                join(&e.holders),
                join(&e.receivers),
                format!("{} ({})", count(e.backlog), bytes(e.backlog_bytes)),
            ]);
        }
    }
    rows
}

fn join(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}
