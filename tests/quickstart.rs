//! The examples, run as a newcomer would.

use std::time::Duration;

mod support;

#[test]
fn quickstart_prints_both_receives_and_exits_cleanly() {
    let _w = test_watchdog!(Duration::from_secs(60));
    let stdout = support::run_example("quickstart", &["--rounds", "3", "--interval-ms", "100"]);
    let count = |text: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with("[nonebot]") && l.contains(text))
            .count()
    };
    let passive = count("Passive receive: I am main process passive");
    let active = count("Active receive: I am main process active");
    assert_eq!((passive, active), (3, 3), "{stdout}");
}

#[test]
fn restart_example_shows_a_new_pid_each_time() {
    let _w = test_watchdog!(Duration::from_secs(60));
    let stdout = support::run_example("restart", &["--restarts", "2"]);
    let line = stdout
        .lines()
        .find(|l| l.contains("pids: ["))
        .expect("the pid summary");
    let list = line.split("pids: [").nth(1).unwrap().trim_end_matches(']');
    let mut pids: Vec<u32> = list.split(", ").map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 3, "{line}");
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "each start is a new process: {line}");
}

#[test]
fn shared_store_example_counts_and_hears_every_event() {
    let _w = test_watchdog!(Duration::from_secs(60));
    let stdout = support::run_example("shared_store", &["--rounds", "4", "--interval-ms", "20"]);
    assert!(stdout.contains("final counter: 8"), "{stdout}");
    let count = |prefix: &str, text: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(text))
            .count()
    };
    // Each worker hears every round of the other; the main process hears all eight.
    assert_eq!(count("[worker-a]", "heard worker-b round"), 4, "{stdout}");
    assert_eq!(count("[worker-b]", "heard worker-a round"), 4, "{stdout}");
    assert_eq!(count("", "event on events.worker-"), 8, "{stdout}");
}

#[test]
fn rpc_example_answers_every_round_with_a_child_killed_mid_run() {
    let _w = test_watchdog!(Duration::from_secs(90));
    let stdout = support::run_example("rpc", &["--rounds", "20"]);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("all "))
        .unwrap_or_else(|| panic!("no summary in: {stdout}"));
    assert!(line.starts_with("all 20 calls answered"), "{line}");
    let killed: u32 = line
        .split("killed: Some(")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no killed pid in: {line}"));
    assert!(support::process_gone(killed as i32), "{line}");
    // The pool served from more than one process.
    let per_process = line.split("calls per process: {").nth(1).unwrap();
    assert!(per_process.matches(':').count() >= 2, "{line}");
}
