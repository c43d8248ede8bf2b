//! The keeper (Linux): a small process between the supervisor and each child, so that a
//! child's whole process group ends with the child, and with the main process, even
//! when the main process is killed with SIGKILL.
//!
//! The supervisor starts `/proc/self/exe` (this same binary) with `YUKICOMM_KEEPER` set
//! and the child's program and arguments as its own. Before `main` runs, [`INIT`] (an
//! `.init_array` entry, so it works in any binary that links this crate, tests
//! included) sees the variable and runs [`run`] instead of the program. The keeper:
//!
//! 1. becomes the subreaper of its descendants (`PR_SET_CHILD_SUBREAPER`) and asks for
//!    SIGHUP when the main process dies (`PR_SET_PDEATHSIG`);
//! 2. starts the child's program in a process group of its own, whose id is the
//!    program's pid, with SIGKILL as its parent-death signal, and reports that pid (or
//!    why the program could not start) to the supervisor through an inherited socket;
//! 3. reaps every descendant that is handed to it, and waits;
//! 4. when the main process is gone: sends SIGKILL to the group and exits;
//! 5. when the program exits: sends SIGTERM to what is left of its group, waits until
//!    the group is empty or the child's stop timeout passes, then SIGKILL; then exits
//!    the way the program did (same status, or same signal), which is what the
//!    supervisor sees.
//!
//! The keeper is not in the child's group, so the supervisor's SIGTERM to the group
//! reaches the program and its descendants only. Every signal the keeper receives is
//! only a wake-up for it; none is forwarded.

/// The variable that makes a process a keeper: `REPORT_FD,GRACE_MS,MAIN_PID`.
pub(crate) const ENV_KEEPER: &str = "YUKICOMM_KEEPER";

/// The executable the supervisor starts as a keeper.
#[cfg(target_os = "linux")]
pub(crate) const SELF_EXE: &str = "/proc/self/exe";

/// What the keeper reports: the program's pid, or why it did not start.
#[derive(Debug)]
pub(crate) enum Report {
    Started(u32),
    NotStarted(std::io::Error),
}

impl Report {
    const STARTED: u8 = b'P';
    const NOT_STARTED: u8 = b'E';

    fn encode(&self) -> [u8; 5] {
        let (tag, n) = match self {
            Report::Started(pid) => (Self::STARTED, *pid as i32),
            Report::NotStarted(e) => (Self::NOT_STARTED, e.raw_os_error().unwrap_or(0)),
        };
        let n = n.to_le_bytes();
        [tag, n[0], n[1], n[2], n[3]]
    }

    /// Decodes what [`Report::encode`] wrote; `None` if it is not a report.
    pub(crate) fn decode(b: [u8; 5]) -> Option<Report> {
        let n = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        match b[0] {
            Self::STARTED if n > 0 => Some(Report::Started(n as u32)),
            Self::NOT_STARTED => Some(Report::NotStarted(std::io::Error::from_raw_os_error(n))),
            _ => None,
        }
    }
}

/// Runs the keeper before `main` when the variable says so.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
pub(crate) static INIT: extern "C" fn() = init;

#[cfg(target_os = "linux")]
extern "C" fn init() {
    if let Some(conf) = std::env::var_os(ENV_KEEPER) {
        linux::run(&conf.to_string_lossy())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::Write;
    use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    use nix::errno::Errno;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::{killpg, raise, signal, SigHandler, SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{getpid, getppid, Pid};

    use super::{Report, ENV_KEEPER};

    /// How long the keeper waits for the group to vanish after SIGKILL before it exits
    /// anyway (a process in uninterruptible sleep takes the signal late).
    const AFTER_KILL: Duration = Duration::from_secs(2);

    struct Config {
        report: i32,
        grace: Duration,
        main: Pid,
    }

    fn config(text: &str) -> Option<Config> {
        let mut parts = text.split(',');
        let report = parts.next()?.parse().ok()?;
        let grace = Duration::from_millis(parts.next()?.parse().ok()?);
        let main = Pid::from_raw(parts.next()?.parse().ok()?);
        Some(Config {
            report,
            grace,
            main,
        })
    }

    fn fail(why: &str) -> ! {
        eprintln!("yukicomm keeper: {why}");
        std::process::exit(126)
    }

    /// The program and its arguments: this process's arguments after the first.
    fn program() -> Vec<std::ffi::OsString> {
        use std::os::unix::ffi::OsStrExt;
        // Read from the kernel: the standard library's own copy of the arguments may not
        // be set up yet before `main`.
        let Ok(cmdline) = std::fs::read("/proc/self/cmdline") else {
            fail("cannot read /proc/self/cmdline");
        };
        // The kernel ends each argument with a NUL.
        let args = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
        args.split(|b| *b == 0)
            .skip(1)
            .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
            .collect()
    }

    pub(super) fn run(conf: &str) -> ! {
        std::env::remove_var(ENV_KEEPER);
        let Some(conf) = config(conf) else {
            fail("bad configuration")
        };
        // SAFETY: the supervisor opened this descriptor for this process alone, and
        // nothing else in it knows the number.
        let mut report = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(conf.report) });
        if fcntl(&report, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).is_err() {
            fail("the report descriptor is not open");
        }

        // Every signal becomes a wake-up read from `signals`.
        let all = SigSet::all();
        let Ok(old_mask) = all.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK) else {
            fail("cannot block signals")
        };
        let Ok(signals) =
            SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        else {
            fail("cannot make a signalfd")
        };
        if nix::sys::prctl::set_child_subreaper(true).is_err()
            || nix::sys::prctl::set_pdeathsig(Signal::SIGHUP).is_err()
        {
            fail("cannot become a subreaper");
        }
        // Shown by ps instead of the executable's name, `exe`.
        let _ = nix::sys::prctl::set_name(c"yukicomm-keeper");
        if getppid() != conf.main {
            // The main process died before we could watch it.
            std::process::exit(1);
        }

        let argv = program();
        let Some((prog, args)) = argv.split_first() else {
            fail("no program to run")
        };
        let keeper = getpid();
        let mut cmd = std::process::Command::new(prog);
        cmd.args(args).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (sigprocmask, prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                old_mask.thread_set_mask()?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if getppid() != keeper {
                    // SAFETY: _exit is async-signal-safe and ends the forked child.
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = report.write_all(&Report::NotStarted(e).encode());
                std::process::exit(127);
            }
        };
        let group = Pid::from_raw(child.id() as i32);
        drop(child);
        let _ = report.write_all(&Report::Started(group.as_raw() as u32).encode());
        drop(report);
        // The hub connection belongs to the program now: ours would keep it open after
        // the program's end.
        if let Some(fd) = std::env::var(yukicomm_wire::ENV_FD)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
        {
            // SAFETY: the supervisor passed this descriptor for the program; the
            // program has its own copy, and nothing else in the keeper uses ours.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }

        let status = watch(&signals, &conf, group);
        exit_like(status)
    }

    /// Waits for the program and its group; returns how the program ended (`None` if
    /// the main process died first).
    fn watch(signals: &SignalFd, conf: &Config, group: Pid) -> Option<WaitStatus> {
        let mut status = None;
        // Set once the program has exited: when SIGKILL is due, and whether it was sent.
        let mut deadline: Option<(Instant, bool)> = None;
        loop {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(ws) => {
                        if ws.pid() == Some(group) {
                            status = Some(ws);
                        }
                    }
                }
            }
            if getppid() != conf.main {
                let _ = killpg(group, Signal::SIGKILL);
                return status;
            }
            if status.is_some() {
                let now = Instant::now();
                match deadline {
                    None => {
                        let _ = killpg(group, Signal::SIGTERM);
                        deadline = Some((now + conf.grace, false));
                    }
                    Some((due, false)) if now >= due => {
                        let _ = killpg(group, Signal::SIGKILL);
                        deadline = Some((now + AFTER_KILL, true));
                    }
                    Some((due, true)) if now >= due => return status,
                    Some(_) => {}
                }
                // Zombies still count as members: only reaped ones are gone.
                if killpg(group, None) == Err(Errno::ESRCH) {
                    return status;
                }
            }
            let timeout = if status.is_some() { 20u16 } else { 1000 };
            let fd: BorrowedFd<'_> = signals.as_fd();
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(timeout));
            while let Ok(Some(_)) = signals.read_signal() {}
        }
    }

    /// Exits as the program did.
    fn exit_like(status: Option<WaitStatus>) -> ! {
        match status {
            Some(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Some(WaitStatus::Signaled(_, sig, _)) => {
                // No core file of the keeper for the program's crash.
                let _ =
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
                // SAFETY: resetting a disposition to the default installs no handler.
                let _ = unsafe { signal(sig, SigHandler::SigDfl) };
                let mut only = SigSet::empty();
                only.add(sig);
                let _ = only.thread_unblock();
                let _ = raise(sig);
                std::process::exit(128 + sig as i32)
            }
            _ => std::process::exit(1),
        }
    }
}
