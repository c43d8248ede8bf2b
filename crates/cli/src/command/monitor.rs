//! `yukicomm monitor PATTERN`: sampled messages on matching channels and topics, one a
//! line, until Ctrl-C, `--count` or `--seconds`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use yukicomm_wire::stats::TapTarget;
use yukicomm_wire::{Event, Request};

use super::print;
use crate::connect::{Error, Observer};
use crate::format::count as figure;

pub fn run(
    observer: &mut Observer,
    pattern: &str,
    count: Option<u64>,
    seconds: Option<u64>,
) -> Result<ExitCode, Error> {
    observer.request(Request::Monitor {
        pattern: pattern.to_string(),
    })?;
    let end = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            return Ok(ExitCode::SUCCESS);
        }
        let step = now + Duration::from_millis(500);
        let deadline = end.map_or(step, |e| e.min(step));
        match observer.next_event(deadline)? {
            Some(Event::Tapped {
                from,
                target,
                len,
                head,
            }) => {
                seen += 1;
                print(&format!("{}\n", line(&from, &target, len, &head)))?;
            }
            Some(Event::TapDropped { count }) => {
                print(&format!(
                    "... {} samples dropped (buffer full)\n",
                    figure(count)
                ))?;
            }
            _ => {}
        }
    }
}

/// `worker -> orders.new [B] 42 B: {"id": 1}`.
pub fn line(from: &str, target: &TapTarget, len: u64, head: &[u8]) -> String {
    let to = match target {
        TapTarget::Channel { chan, name, end } => format!(
            "{} [{end:?}]",
            name.clone().unwrap_or_else(|| chan.to_string())
        ),
        TapTarget::Topic { topic } => format!("topic {topic}"),
    };
    format!("{from} -> {to} {len} B: {}", show(head, len))
}

/// The message's value, as far as its first bytes tell.
fn show(head: &[u8], len: u64) -> String {
    let complete = head.len() as u64 == len;
    let mut rest = head;
    match rmpv::decode::read_value(&mut rest) {
        Ok(v) if complete && rest.is_empty() => v.to_string(),
        Ok(v) => format!("{v} ..."),
        Err(_) => format!("<{} bytes: {} ...>", len, hex(&head[..head.len().min(16)])),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
