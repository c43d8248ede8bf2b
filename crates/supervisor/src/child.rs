//! One supervised child: spawning, watching, stopping and restarting it.
//!
//! Each child has one task that owns its process. Requests (restart, stop, shutdown)
//! arrive as [`Cmd`]s; exits are watched with `wait`. Stopping is always: SIGTERM to the
//! child's process group, wait up to the child's stop timeout, SIGKILL to the group, and
//! reap. On Linux the process waited for is the child's [keeper](crate::keeper), which
//! reports the program's pid (the group's id) and exits as the program did.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use yukicomm_hub::Hub;
use yukicomm_wire::{ProcessName, ENV_FD, ENV_HUB, ENV_NAME, ENV_TARGET, ENV_TOKEN};

use crate::hooks::Hooks;
use crate::keeper;
use crate::spec::{ChildSpec, Launch, RestartPolicy};
use crate::status::{Board, Exit};
use crate::MainContext;
use yukicomm_wire::stats::ProcessState;

/// A request to a child's task.
#[derive(Debug)]
pub(crate) enum Cmd {
    Restart,
    Stop,
    Shutdown(oneshot::Sender<()>),
}

struct Running {
    /// The process the supervisor waits for: the keeper on Linux, else the program.
    child: Child,
    /// The child's process group; its id is the program's pid.
    group: Pid,
    started: Instant,
    /// The tasks copying its output; they end when the pipes close.
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Lets the output copiers finish, so that nothing the child printed is lost.
    async fn drain_output(&mut self) {
        for f in self.forwarders.drain(..) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), f).await;
        }
    }

    /// Sends SIGKILL to whatever is left of the child's group once the process the
    /// supervisor waits for has been reaped. On Linux the keeper has emptied the group
    /// already unless it was killed itself; elsewhere this is what ends the program's
    /// descendants. (The group's id cannot belong to another group while any process of
    /// this one is left, since the kernel does not reuse a pid that is still a group id.)
    fn end_group(&self) {
        let _ = killpg(self.group, Signal::SIGKILL);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped unreaped: the supervisor itself is going away without stopping it.
        if self.child.id().is_some() {
            self.end_group();
            let _ = self.child.start_kill();
        }
    }
}

pub(crate) struct Supervised {
    pub(crate) spec: ChildSpec,
    pub(crate) process_name: ProcessName,
    pub(crate) hub: Arc<Hub>,
    pub(crate) ctx: MainContext,
    pub(crate) hooks: Arc<Hooks>,
    pub(crate) exe: PathBuf,
    pub(crate) exec_args: Vec<OsString>,
    /// Set when the program shuts down: no child is restarted any more.
    pub(crate) shutting_down: Arc<std::sync::atomic::AtomicBool>,
    /// Where the child's state is reported (`yukicomm status`).
    pub(crate) board: Arc<Board>,
}

/// What a report says about a process that was stopped: its status, or why there is
/// none.
fn stopped_exit(status: Option<std::process::ExitStatus>, reason: &str) -> Exit {
    match status {
        Some(st) => Exit::from_status(&st, reason),
        None => Exit::reason(reason.to_string()),
    }
}

impl Supervised {
    fn name(&self) -> &str {
        &self.spec.name
    }

    /// Starts the child's process; `again` when it is a restart.
    async fn spawn(&self, again: bool) -> Option<Running> {
        self.board.starting(self.name());
        match self.try_spawn().await {
            Ok(r) => {
                self.board
                    .running(self.name(), r.group.as_raw() as u32, again);
                Some(r)
            }
            Err(e) => {
                tracing::error!(child = self.name(), "cannot start: {e}");
                self.board.ended(
                    self.name(),
                    Exit::reason(format!("cannot start: {e}")),
                    ProcessState::Failed,
                );
                self.hub.child_failed(self.name());
                None
            }
        }
    }

    async fn try_spawn(&self) -> std::io::Result<Running> {
        // The child's connection to the hub, made here and inherited: nothing secret
        // passes through its environment.
        let conn = above_stdio(self.hub.adopt_child(&self.process_name)?.into())?;
        let (program, args) = match &self.spec.launch {
            Launch::Target(_) => (self.exe.clone().into_os_string(), self.exec_args.clone()),
            Launch::Command { program, args, .. } => (program.clone(), args.clone()),
        };
        let mut inherited = vec![conn.as_raw_fd()];
        let mut keeper_report = None;
        let mut cmd = if keeper_available() {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            let theirs = above_stdio(theirs.into())?;
            let mut c = Command::new(keeper::SELF_EXE);
            c.arg0("yukicomm-keeper").arg(&program).args(&args).env(
                keeper::ENV_KEEPER,
                format!(
                    "{},{},{}",
                    theirs.as_raw_fd(),
                    self.spec.stop_timeout.as_millis(),
                    std::process::id()
                ),
            );
            inherited.push(theirs.as_raw_fd());
            keeper_report = Some((ours, theirs));
            c
        } else {
            let mut c = Command::new(&program);
            c.args(&args);
            die_with_parent(&mut c);
            c
        };
        match &self.spec.launch {
            Launch::Target(_) => {
                cmd.env(ENV_TARGET, self.name());
            }
            Launch::Command { envs, dir, .. } => {
                for (k, v) in envs {
                    match v {
                        Some(v) => cmd.env(k, v),
                        None => cmd.env_remove(k),
                    };
                }
                if let Some(d) = dir {
                    cmd.current_dir(d);
                }
            }
        }
        cmd.env(ENV_FD, conn.as_raw_fd().to_string())
            .env(ENV_NAME, self.name())
            .env_remove(ENV_HUB)
            .env_remove(ENV_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the terminal reaches the main process
            // only, which stops the children in order.
            .process_group(0);
        inherit(&mut cmd, inherited);
        let mut child = cmd.spawn()?;
        // Our copies: the child's end of its connection must close with the child.
        drop(conn);
        let pid = match keeper_report {
            Some((ours, theirs)) => {
                drop(theirs);
                match read_report(ours).await {
                    Ok(pid) => pid,
                    Err(e) => {
                        let _ = child.kill().await;
                        return Err(e);
                    }
                }
            }
            // Just spawned and not waited for, so it has an id.
            None => child.id().unwrap_or(0),
        };
        tracing::info!(child = self.name(), pid, "started");
        let mut forwarders = Vec::new();
        if let Some(out) = child.stdout.take() {
            forwarders.push(forward(out, self.name().to_string(), false));
        }
        if let Some(err) = child.stderr.take() {
            forwarders.push(forward(err, self.name().to_string(), true));
        }
        Ok(Running {
            child,
            group: Pid::from_raw(pid as i32),
            started: Instant::now(),
            forwarders,
        })
    }

    /// Stops the child's process; returns how it ended, if that is known.
    async fn stop(&self, mut running: Running) -> Option<std::process::ExitStatus> {
        let name = self.name();
        self.board.stopping(name);
        // The whole group: the program and every descendant that stayed in its group.
        let _ = killpg(running.group, Signal::SIGTERM);
        let status = match tokio::time::timeout(self.spec.stop_timeout, running.child.wait()).await
        {
            Ok(Ok(status)) => {
                tracing::info!(child = name, %status, "stopped");
                Some(status)
            }
            Ok(Err(e)) => {
                tracing::warn!(child = name, "waiting for the child failed: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(child = name, timeout = ?self.spec.stop_timeout, "did not stop in time; killing it");
                let _ = killpg(running.group, Signal::SIGKILL);
                // The keeper, if any, exits once the group is gone.
                match tokio::time::timeout(KEEPER_EXIT, running.child.wait()).await {
                    Ok(Ok(status)) => Some(status),
                    _ => {
                        let _ = running.child.kill().await;
                        None
                    }
                }
            }
        };
        running.end_group();
        running.drain_output().await;
        self.hub.disconnect_child(name);
        status
    }

    async fn restart(&self, running: Option<Running>) -> Option<Running> {
        let name = self.name().to_string();
        self.hooks.before_process_restart(&self.ctx, &name).await;
        if let Some(r) = running {
            let status = self.stop(r).await;
            self.board.ended(
                &name,
                stopped_exit(status, "restarted on request"),
                ProcessState::Starting,
            );
        }
        let new = self.spawn(true).await;
        self.hooks.after_restart(&self.ctx, &name).await;
        new
    }
}

/// How long a keeper gets to exit after its child's group was killed.
const KEEPER_EXIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a keeper gets to report that the program started.
const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether children are started through a keeper (see [`keeper`]).
fn keeper_available() -> bool {
    #[cfg(target_os = "linux")]
    {
        // Keeps the keeper's start-up hook in the binary, and checks that this
        // executable can be started again.
        std::hint::black_box(&keeper::INIT);
        std::path::Path::new(keeper::SELF_EXE).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Reads the keeper's report: the program's pid, or why it did not start.
async fn read_report(ours: std::os::unix::net::UnixStream) -> std::io::Result<u32> {
    use tokio::io::AsyncReadExt;
    ours.set_nonblocking(true)?;
    let mut ours = tokio::net::UnixStream::from_std(ours)?;
    let mut buf = [0u8; 5];
    match tokio::time::timeout(REPORT_TIMEOUT, ours.read_exact(&mut buf)).await {
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the keeper did not report in time",
        )),
        Ok(Err(e)) => Err(std::io::Error::new(
            e.kind(),
            format!("the keeper ended without reporting: {e}"),
        )),
        Ok(Ok(_)) => match keeper::Report::decode(buf) {
            Some(keeper::Report::Started(pid)) => Ok(pid),
            Some(keeper::Report::NotStarted(e)) => Err(e),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the keeper's report is garbled",
            )),
        },
    }
}

/// Moves a descriptor above 0, 1 and 2, which the child's standard streams replace.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Lets the child inherit `fds` (close-on-exec in this process, so that no other
/// child gets them).
fn inherit(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe fcntl, on descriptors that are open there (they were open in
    // this process when it forked, held until `spawn` returns).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                fcntl(
                    BorrowedFd::borrow_raw(*fd),
                    FcntlArg::F_SETFD(FdFlag::empty()),
                )?;
            }
            Ok(())
        });
    }
}

/// Makes the child die with the main process, even when it is killed with SIGKILL.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpid is async-signal-safe.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the forked child before exec and only calls the
        // async-signal-safe prctl, getppid and _exit.
        unsafe {
            cmd.pre_exec(move || {
                // The signal fires when the thread that forked us exits; children are
                // spawned from the runtime's worker threads, which live as long as the
                // main process's runtime.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Elsewhere the child exits when its hub connection closes.
        let _ = cmd;
    }
}

/// Copies a child's output to ours, line by line, prefixed with its name.
fn forward(
    stream: impl AsyncRead + Unpin + Send + 'static,
    name: String,
    stderr: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use std::io::Write;
        let mut reader = BufReader::new(stream);
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let mut text = Vec::with_capacity(line.len() + name.len() + 4);
                    text.extend_from_slice(b"[");
                    text.extend_from_slice(name.as_bytes());
                    text.extend_from_slice(b"] ");
                    text.extend_from_slice(&line);
                    if !text.ends_with(b"\n") {
                        text.push(b'\n');
                    }
                    let _ = if stderr {
                        std::io::stderr().lock().write_all(&text)
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&text).and_then(|_| out.flush())
                    };
                }
            }
        }
    })
}

/// The task that supervises one child until shutdown.
pub(crate) async fn supervise(s: Supervised, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let name = s.name().to_string();
    let mut backoff = s.spec.backoff_initial;
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut running = s.spawn(false).await;
    loop {
        let cmd = match running.as_mut() {
            Some(r) => {
                tokio::select! {
                    status = r.child.wait() => {
                        let uptime = r.started.elapsed();
                        r.end_group();
                        r.drain_output().await;
                        running = None;
                        let exit = match &status {
                            Ok(st) if st.success() => Exit::from_status(st, "exited"),
                            Ok(st) if st.code().is_none() => Exit::from_status(st, "crashed"),
                            Ok(st) => Exit::from_status(st, "failed"),
                            Err(e) => Exit::reason(format!("cannot wait for it: {e}")),
                        };
                        let failed = match &status {
                            Ok(st) => {
                                if st.success() {
                                    tracing::info!(child = %name, %st, "exited");
                                } else {
                                    tracing::warn!(child = %name, %st, "exited");
                                }
                                !st.success()
                            }
                            Err(e) => {
                                tracing::error!(child = %name, "cannot wait for the child: {e}");
                                true
                            }
                        };
                        s.hub.disconnect_child(&name);
                        let again = match s.spec.restart {
                            RestartPolicy::Never => false,
                            RestartPolicy::OnFailure => failed,
                            RestartPolicy::Always => true,
                        };
                        if !again || s.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                            s.board.ended(&name, exit, ProcessState::Exited);
                            s.hub.child_gone(&name);
                            continue;
                        }
                        if uptime >= s.spec.restart_period {
                            backoff = s.spec.backoff_initial;
                        }
                        let now = Instant::now();
                        while recent.front().is_some_and(|t| now.duration_since(*t) >= s.spec.restart_period) {
                            recent.pop_front();
                        }
                        if recent.len() as u32 >= s.spec.max_restarts {
                            tracing::error!(
                                child = %name,
                                restarts = recent.len(),
                                period = ?s.spec.restart_period,
                                "restarted too often; marked failed and not restarted again"
                            );
                            let mut exit = exit;
                            exit.add_reason("restarted too often, given up");
                            s.board.ended(&name, exit, ProcessState::Failed);
                            s.hub.child_gone(&name);
                            continue;
                        }
                        recent.push_back(now);
                        tracing::info!(child = %name, delay = ?backoff, "restarting");
                        s.board.ended(&name, exit, ProcessState::Backoff);
                        s.board.backoff(&name, backoff);
                        let wait = tokio::time::sleep(backoff);
                        backoff = (backoff * 2).min(s.spec.backoff_max);
                        tokio::select! {
                            _ = wait => {
                                running = s.restart(None).await;
                                continue;
                            }
                            cmd = cmds.recv() => cmd,
                        }
                    }
                    cmd = cmds.recv() => cmd,
                }
            }
            None => cmds.recv().await,
        };
        match cmd {
            Some(Cmd::Restart) => {
                running = s.restart(running.take()).await;
            }
            Some(Cmd::Stop) => {
                if let Some(r) = running.take() {
                    s.hooks.before_process_shutdown(&s.ctx, &name).await;
                    let status = s.stop(r).await;
                    s.board.ended(
                        &name,
                        stopped_exit(status, "stopped on request"),
                        ProcessState::Stopped,
                    );
                } else {
                    s.board.set_state(&name, ProcessState::Stopped);
                }
                s.hub.child_gone(&name);
            }
            Some(Cmd::Shutdown(done)) => {
                if let Some(r) = running.take() {
                    s.hooks.before_process_shutdown(&s.ctx, &name).await;
                    let status = s.stop(r).await;
                    s.board.ended(
                        &name,
                        stopped_exit(status, "shut down"),
                        ProcessState::Stopped,
                    );
                }
                s.hub.child_gone(&name);
                let _ = done.send(());
                return;
            }
            None => {
                if let Some(r) = running.take() {
                    s.stop(r).await;
                }
                return;
            }
        }
    }
}
