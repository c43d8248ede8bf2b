//! One supervised child: spawning, watching, stopping and restarting it.
//!
//! Each child has one task that owns its process. Requests (restart, stop, shutdown)
//! arrive as [`Cmd`]s; exits are watched with `wait`. Stopping is always: SIGTERM, wait up
//! to the child's stop timeout, SIGKILL, and reap.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use yukicomm_hub::Hub;
use yukicomm_wire::{ProcessName, ENV_HUB, ENV_NAME, ENV_TARGET, ENV_TOKEN};

use crate::hooks::Hooks;
use crate::spec::{ChildSpec, Launch, RestartPolicy};
use crate::MainContext;

/// A request to a child's task.
#[derive(Debug)]
pub(crate) enum Cmd {
    Restart,
    Stop,
    Shutdown(oneshot::Sender<()>),
}

struct Running {
    child: Child,
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
}

impl Supervised {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn spawn(&self) -> Option<Running> {
        let token = self.hub.admit_child(&self.process_name);
        let mut cmd = match &self.spec.launch {
            Launch::Target(_) => {
                let mut c = Command::new(&self.exe);
                c.args(&self.exec_args).env(ENV_TARGET, self.name());
                c
            }
            Launch::Command {
                program,
                args,
                envs,
                dir,
            } => {
                let mut c = Command::new(program);
                c.args(args);
                for (k, v) in envs {
                    match v {
                        Some(v) => c.env(k, v),
                        None => c.env_remove(k),
                    };
                }
                if let Some(d) = dir {
                    c.current_dir(d);
                }
                c
            }
        };
        cmd.env(ENV_HUB, self.hub.socket_path())
            .env(ENV_NAME, self.name())
            .env(ENV_TOKEN, token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in the terminal reaches the main process
            // only, which stops the children in order.
            .process_group(0);
        die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(child = self.name(), pid = child.id(), "started");
                let mut forwarders = Vec::new();
                if let Some(out) = child.stdout.take() {
                    forwarders.push(forward(out, self.name().to_string(), false));
                }
                if let Some(err) = child.stderr.take() {
                    forwarders.push(forward(err, self.name().to_string(), true));
                }
                Some(Running {
                    child,
                    started: Instant::now(),
                    forwarders,
                })
            }
            Err(e) => {
                tracing::error!(child = self.name(), "cannot start: {e}");
                self.hub.child_failed(self.name());
                None
            }
        }
    }

    async fn stop(&self, mut running: Running) {
        let name = self.name();
        if let Some(pid) = running.child.id() {
            // SAFETY: plain syscall; the pid is our unreaped child, so it cannot have been
            // reused by another process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(self.spec.stop_timeout, running.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(child = name, %status, "stopped"),
            Ok(Err(e)) => tracing::warn!(child = name, "waiting for the child failed: {e}"),
            Err(_) => {
                tracing::warn!(child = name, timeout = ?self.spec.stop_timeout, "did not stop in time; killing it");
                let _ = running.child.kill().await;
            }
        }
        running.drain_output().await;
        self.hub.disconnect_child(name);
    }

    async fn restart(&self, running: Option<Running>) -> Option<Running> {
        let name = self.name().to_string();
        self.hooks.before_process_restart(&self.ctx, &name).await;
        if let Some(r) = running {
            self.stop(r).await;
        }
        let new = self.spawn();
        self.hooks.after_restart(&self.ctx, &name).await;
        new
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
    let mut running = s.spawn();
    loop {
        let cmd = match running.as_mut() {
            Some(r) => {
                tokio::select! {
                    status = r.child.wait() => {
                        let uptime = r.started.elapsed();
                        r.drain_output().await;
                        running = None;
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
                            s.hub.child_gone(&name);
                            continue;
                        }
                        recent.push_back(now);
                        tracing::info!(child = %name, delay = ?backoff, "restarting");
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
                    s.stop(r).await;
                }
                s.hub.child_gone(&name);
            }
            Some(Cmd::Shutdown(done)) => {
                if let Some(r) = running.take() {
                    s.hooks.before_process_shutdown(&s.ctx, &name).await;
                    s.stop(r).await;
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
