//! The supervisor's side of `yukicomm status`: each child's state, restarts and last
//! exit as its task changes them, and the CPU and memory of its program read from
//! `/proc` when a report is asked for.
//!
//! The board is a mutex over a short list, locked by a child's task when its state
//! changes (rare) and by a report (at most a few times a second, reading two small
//! `/proc` files per running child): neither is on any path a message takes.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use yukicomm_wire::stats::{ExitInfo, ProcessState, ProcessStats, Traffic};

/// How a child's process ended.
#[derive(Debug, Clone)]
pub(crate) struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    reason: String,
    at: Instant,
}

impl Exit {
    /// From a wait status, with what caused the exit.
    pub(crate) fn from_status(status: &std::process::ExitStatus, reason: &str) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        Exit {
            code: status.code(),
            signal: status.signal(),
            reason: reason.to_string(),
            at: Instant::now(),
        }
    }

    /// Adds to the reason.
    pub(crate) fn add_reason(&mut self, more: &str) {
        self.reason = format!("{}; {more}", self.reason);
    }

    /// With no status (the process could not be started or waited for).
    pub(crate) fn reason(reason: String) -> Exit {
        Exit {
            code: None,
            signal: None,
            reason,
            at: Instant::now(),
        }
    }
}

/// A CPU time sample of a program.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    pid: u32,
    at: Instant,
    ticks: u64,
    permille: Option<u32>,
}

#[derive(Debug)]
struct Child {
    name: String,
    state: ProcessState,
    pid: Option<u32>,
    started: Option<Instant>,
    restarts: u32,
    last_exit: Option<Exit>,
    backoff_until: Option<Instant>,
    cpu: Option<CpuSample>,
}

/// The children's states, in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct Board {
    children: Mutex<Vec<Child>>,
}

/// A CPU figure over less than this is not recomputed: the previous one is reported.
const CPU_MIN_INTERVAL: Duration = Duration::from_millis(500);

impl Board {
    /// A board listing `names`, each `starting`.
    pub(crate) fn new<'a>(names: impl Iterator<Item = &'a str>) -> Board {
        let children = names
            .map(|n| Child {
                name: n.to_string(),
                state: ProcessState::Starting,
                pid: None,
                started: None,
                restarts: 0,
                last_exit: None,
                backoff_until: None,
                cpu: None,
            })
            .collect();
        Board {
            children: Mutex::new(children),
        }
    }

    fn with(&self, name: &str, f: impl FnOnce(&mut Child)) {
        if let Some(c) = self.children.lock().iter_mut().find(|c| c.name == name) {
            f(c);
        }
    }

    /// The child is being started.
    pub(crate) fn starting(&self, name: &str) {
        self.with(name, |c| {
            c.state = ProcessState::Starting;
            c.backoff_until = None;
        });
    }

    /// The child's program runs as `pid`; `restart` if it is a new start.
    pub(crate) fn running(&self, name: &str, pid: u32, restart: bool) {
        self.with(name, |c| {
            c.state = ProcessState::Running;
            c.pid = Some(pid);
            c.started = Some(Instant::now());
            c.cpu = None;
            if restart {
                c.restarts += 1;
            }
        });
    }

    /// The child's process is being stopped.
    pub(crate) fn stopping(&self, name: &str) {
        self.with(name, |c| c.state = ProcessState::Stopping);
    }

    /// The child's process ended (or never started); it is now in `state`.
    pub(crate) fn ended(&self, name: &str, exit: Exit, state: ProcessState) {
        self.with(name, |c| {
            c.state = state;
            c.pid = None;
            c.started = None;
            c.cpu = None;
            c.last_exit = Some(exit);
        });
    }

    /// The child is in `state` (its process, if any, is gone).
    pub(crate) fn set_state(&self, name: &str, state: ProcessState) {
        self.with(name, |c| c.state = state);
    }

    /// The child waits `delay` before it is started again.
    pub(crate) fn backoff(&self, name: &str, delay: Duration) {
        self.with(name, |c| {
            c.state = ProcessState::Backoff;
            c.backoff_until = Some(Instant::now() + delay);
        });
    }

    /// A remote process joined (again).
    pub(crate) fn remote_joined(&self, name: &str) {
        let mut children = self.children.lock();
        let now = Instant::now();
        match children.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                c.state = ProcessState::Remote;
                c.started = Some(now);
                c.restarts += 1;
            }
            None => children.push(Child {
                name: name.to_string(),
                state: ProcessState::Remote,
                pid: None,
                started: Some(now),
                restarts: 0,
                last_exit: None,
                backoff_until: None,
                cpu: None,
            }),
        }
    }

    /// A remote process's session ended: it left, or was gone longer than the grace
    /// period.
    pub(crate) fn remote_left(&self, name: &str) {
        self.ended(
            name,
            Exit::reason("the remote session ended".into()),
            ProcessState::Exited,
        );
    }

    /// The report for every child (the hub adds connection and traffic).
    pub(crate) fn report(&self) -> Vec<ProcessStats> {
        let now = Instant::now();
        let mut children = self.children.lock();
        children
            .iter_mut()
            .map(|c| {
                let (cpu_permille, rss_bytes) = match c.pid {
                    Some(pid) if c.state == ProcessState::Running => {
                        (cpu(c, pid, now), proc::rss_bytes(pid))
                    }
                    _ => (None, None),
                };
                ProcessStats {
                    name: c.name.clone(),
                    state: c.state,
                    pid: c.pid,
                    uptime_ms: c.started.map(|s| now.duration_since(s).as_millis() as u64),
                    restarts: c.restarts,
                    last_exit: c.last_exit.as_ref().map(|e| ExitInfo {
                        code: e.code,
                        signal: e.signal,
                        reason: e.reason.clone(),
                        ago_ms: now.duration_since(e.at).as_millis() as u64,
                    }),
                    backoff_ms: c
                        .backoff_until
                        .filter(|_| c.state == ProcessState::Backoff)
                        .map(|u| u.saturating_duration_since(now).as_millis() as u64),
                    cpu_permille,
                    rss_bytes,
                    connected: false,
                    traffic: Traffic::default(),
                    queued: 0,
                    window: 0,
                }
            })
            .collect()
    }
}

/// The CPU use of `c`'s program since the previous sample (or since it started).
fn cpu(c: &mut Child, pid: u32, now: Instant) -> Option<u32> {
    let ticks = proc::cpu_ticks(pid)?;
    let per_s = proc::ticks_per_second()?;
    let prev = c
        .cpu
        .filter(|s| s.pid == pid)
        .map(|s| (s.at, s.ticks, s.permille));
    let (since, base) = match prev {
        Some((at, _, Some(p))) if now.duration_since(at) < CPU_MIN_INTERVAL => return Some(p),
        Some((at, t, _)) => (at, t),
        None => (c.started?, 0),
    };
    let secs = now.duration_since(since).as_secs_f64();
    let permille = if secs > 0.0 {
        ((ticks.saturating_sub(base) as f64 / per_s as f64) / secs * 1000.0).round() as u32
    } else {
        0
    };
    c.cpu = Some(CpuSample {
        pid,
        at: now,
        ticks,
        permille: Some(permille),
    });
    Some(permille)
}

/// Reading `/proc` (Linux; elsewhere nothing is known).
mod proc {
    /// User and system CPU time of `pid`, in clock ticks.
    pub(super) fn cpu_ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name, in parentheses, may hold spaces: count fields after it.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after it.
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime + stime)
    }

    /// Resident memory of `pid`, in bytes.
    pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * page_size()?)
    }

    pub(super) fn ticks_per_second() -> Option<u64> {
        // SAFETY: sysconf only reads a system setting.
        let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(n).ok().filter(|&n| n > 0)
    }

    fn page_size() -> Option<u64> {
        // SAFETY: sysconf only reads a system setting.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_restarts_and_exits_are_reported() {
        let board = Board::new(["a", "b"].into_iter());
        board.running("a", std::process::id(), false);
        let status = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .status()
            .expect("run sh");
        board.ended(
            "b",
            Exit::from_status(&status, "crashed"),
            ProcessState::Exited,
        );
        board.backoff("b", Duration::from_secs(60));
        let r = board.report();
        assert_eq!(r[0].state, ProcessState::Running);
        assert_eq!(r[0].pid, Some(std::process::id()));
        if cfg!(target_os = "linux") {
            assert!(r[0].rss_bytes.unwrap_or(0) > 0, "{:?}", r[0]);
            assert!(r[0].cpu_permille.is_some(), "{:?}", r[0]);
        }
        assert_eq!(r[1].state, ProcessState::Backoff);
        let exit = r[1].last_exit.as_ref().expect("an exit");
        assert_eq!(exit.code, Some(3));
        assert_eq!(exit.reason, "crashed");
        assert!(r[1].backoff_ms.unwrap() > 50_000);
        assert!(!r[1].is_healthy());
        board.running("b", 1, true);
        assert_eq!(board.report()[1].restarts, 1);
    }
}
