//! yukicomm's supervisor: the main process's side of a yukicomm program.
//!
//! An [`App`] declares child processes and lifecycle hooks, then [`App::run`]s: it
//! starts the hub, creates every child's `NAME-active` and `NAME-passive` channels,
//! runs the hooks, starts and watches the children, and shuts everything down in order
//! on SIGINT, SIGTERM or [`MainContext::shutdown`]. The same `main` runs in the
//! children started with [`App::add_target`]: there `run` dispatches to the target.
//!
//! # Child processes
//!
//! - Each child joins through a connection to the hub it inherits (`YUKICOMM_FD`, with
//!   `YUKICOMM_NAME`); no token or socket path is in its environment, and nothing in it
//!   lets another process join as that child (see `docs/PROTOCOL.md`, section 2).
//! - Each child runs in a process group of its own, whose id is its pid. Stopping or
//!   restarting it sends SIGTERM to the group, waits up to its
//!   [stop timeout](ChildSpec::stop_timeout), then sends SIGKILL to the group; the child
//!   is always reaped.
//! - On Linux each child is started through a keeper, this same executable run again
//!   (it acts before `main`, so any binary linking this crate works): it is the
//!   subreaper of the child's descendants and reaps them; when the child's program ends,
//!   however it ends, it sends SIGTERM to what is left of the group, then SIGKILL after
//!   the stop timeout, and exits as the program did once the group is empty (at most
//!   2 s after SIGKILL); when the main process dies, SIGKILL included, it sends SIGKILL
//!   to the group at once. Processes that leave the group (`setsid`, `setpgid`) are not
//!   killed. The main process is not made a subreaper itself: it could not tell orphans
//!   from processes its own code starts and waits for.
//! - Elsewhere (macOS) there is no keeper: after a child exits, the supervisor sends
//!   SIGKILL to what is left of its group; when the main process is killed with SIGKILL,
//!   a child linking the client exits once its hub connection closes, and nothing is
//!   guaranteed for the child's own processes.
//!
//! ```no_run
//! use std::time::Duration;
//! use yukicomm_supervisor::App;
//!
//! async fn nonebot(ctx: yukicomm_client::Context) -> yukicomm_client::Result<()> {
//!     let active = ctx.active_channel::<String>();
//!     while let Ok(text) = active.recv_async().await {
//!         println!("Active receive: {text}");
//!     }
//!     Ok(())
//! }
//!
//! fn main() -> yukicomm_client::Result<()> {
//!     let mut app = App::new();
//!     app.add_target("nonebot", nonebot);
//!     app.on_after_start(|ctx| async move {
//!         let active = ctx.get_channel::<String>("nonebot-active")?;
//!         loop {
//!             active.send("I am main process active".into())?;
//!             tokio::time::sleep(Duration::from_secs(3)).await;
//!         }
//!     });
//!     app.run()
//! }
//! ```
#![deny(missing_docs)]

mod child;
mod context;
mod hooks;
mod keeper;
mod local;
#[cfg(feature = "prometheus")]
pub mod metrics;
mod remote;
pub use remote::RemoteOptions;
mod spec;
mod status;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use yukicomm_client::{Context, Error, Result};
use yukicomm_hub::{Hub, HubConfig, HubEvent};
use yukicomm_wire::{ControlAction, ProcessName, ENV_TARGET};

pub use context::MainContext;
pub use spec::{ChildSpec, RestartPolicy};

use child::{Cmd, Supervised};
use hooks::Hooks;
use spec::Launch;

/// How long a child whose target returned waits for the hub to confirm what it sent.
const FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A yukicomm program: its children, hooks and settings.
pub struct App {
    children: Vec<ChildSpec>,
    hooks: Hooks,
    hub: HubConfig,
    exec_args: Option<Vec<OsString>>,
    /// Where the Prometheus endpoint is served, if anywhere.
    metrics: Option<std::net::SocketAddr>,
    /// How processes on other machines join, if they may.
    remote: Option<RemoteOptions>,
    /// The Redis protocol endpoint, if set with [`App::redis`].
    redis: Option<yukicomm_hub::RedisConfig>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("children", &self.children)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An app with no children.
    pub fn new() -> App {
        App {
            children: Vec::new(),
            hooks: Hooks::default(),
            hub: HubConfig::default(),
            exec_args: None,
            metrics: None,
            remote: None,
            redis: None,
        }
    }

    /// Adds a child that runs `target` in this same executable, re-executed (the
    /// environment variable `YUKICOMM_TARGET` tells the new process which target to run,
    /// and [`run`](App::run) dispatches to it). The child gets the same command-line
    /// arguments as the main process unless [`exec_args`](App::exec_args) says otherwise.
    pub fn add_target<F, Fut>(&mut self, name: &str, target: F) -> &mut ChildSpec
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let f: spec::TargetFn = Arc::new(move |ctx| target(ctx).boxed());
        self.children.push(ChildSpec::new(name, Launch::Target(f)));
        self.children.last_mut().expect("just pushed")
    }

    /// Adds a child that runs any executable. It joins the program with
    /// `yukicomm_client::connect()`, which reads the environment the supervisor sets:
    /// `YUKICOMM_NAME` and `YUKICOMM_FD`, an inherited descriptor connected to the hub
    /// (see "Child processes" above). The command's program, arguments, environment
    /// changes and directory are used; the supervisor sets up its standard streams and
    /// process group.
    pub fn add_command(&mut self, name: &str, command: std::process::Command) -> &mut ChildSpec {
        let launch = Launch::Command {
            program: command.get_program().to_os_string(),
            args: command.get_args().map(|a| a.to_os_string()).collect(),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_os_string(), v.map(|v| v.to_os_string())))
                .collect(),
            dir: command.get_current_dir().map(|d| d.to_path_buf()),
        };
        self.children.push(ChildSpec::new(name, launch));
        self.children.last_mut().expect("just pushed")
    }

    /// The arguments re-executed targets get. Default: this process's own arguments.
    pub fn exec_args<I, S>(&mut self, args: I) -> &mut App
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.exec_args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Hub settings: credit window, largest frame, socket location.
    pub fn hub_config(&mut self, config: HubConfig) -> &mut App {
        self.hub = config;
        self
    }

    /// Lets processes on other machines join, over TCP at `addr` (for example
    /// `"0.0.0.0:7700"`; port 0 picks one, see [`MainContext::remote_addr`]). Off unless
    /// called. Every connection is TLS 1.3 with mutual authentication: the main process
    /// keeps a certificate authority for the deployment (created on first use in a
    /// private state directory, or given with [`RemoteOptions::authority`]), a remote
    /// process enrols once with a join token ([`MainContext::join_token`]) and connects
    /// with the certificate it obtained; nothing else is answered. See
    /// `docs/PROTOCOL.md`, "Processes on other machines".
    ///
    /// A remote process joins with `yukicomm::join(url, token)` (or `connect()` with
    /// `YUKICOMM_HUB=yk://host:port` and `YUKICOMM_JOIN=token`) and may then do what a
    /// local child may. If the address cannot be listened on, [`run`](App::run) fails.
    pub fn listen_remote(&mut self, addr: &str) -> &mut RemoteOptions {
        self.remote.insert(RemoteOptions::new(addr.to_string()))
    }

    /// Serves the program's figures for Prometheus at `http://ADDR/metrics` (the same
    /// as `yukicomm status`, as counters and gauges; see [`metrics`]). The environment
    /// variable `YUKICOMM_METRICS_ADDR` does the same without code. The endpoint has no
    /// access control: give it a loopback address such as `127.0.0.1:9464`. If the
    /// address cannot be bound, the program runs without it (and logs why).
    #[cfg(feature = "prometheus")]
    pub fn metrics(&mut self, addr: std::net::SocketAddr) -> &mut App {
        self.metrics = Some(addr);
        self
    }

    /// Serves the shared store and its publish/subscribe over the Redis protocol
    /// (RESP2 and RESP3), so that `redis-cli`, `redis-benchmark` and Redis clients use
    /// it: on a Unix socket in the hub's private directory
    /// ([`RedisConfig::unix`](yukicomm_hub::RedisConfig::unix); its path is
    /// [`MainContext::redis_socket_path`]) and/or over TCP (loopback unless a password
    /// is set). Off unless called, or unless the environment variable `YUKICOMM_REDIS`
    /// asks for it (`unix`, `unix:PATH`, `tcp:ADDR`, comma-separated; the password in
    /// `YUKICOMM_REDIS_PASSWORD`). If the endpoint cannot be started,
    /// [`run`](App::run) fails. See `docs/PROTOCOL.md`, "Redis protocol endpoint".
    pub fn redis(&mut self, config: yukicomm_hub::RedisConfig) -> &mut App {
        self.redis = Some(config);
        self
    }

    /// Runs before any child starts (the children's channels already exist).
    pub fn on_before_start<F, Fut>(&mut self, f: F) -> &mut App
    where
        F: Fn(MainContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.hooks.before_start.push(hooks::hook(f));
        self
    }

    /// Runs once every child has been started, as its own task (it may loop until
    /// shutdown, when it is cancelled).
    pub fn on_after_start<F, Fut>(&mut self, f: F) -> &mut App
    where
        F: Fn(MainContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.hooks.after_start.push(hooks::hook(f));
        self
    }

    /// Runs before a child's running process is stopped (by request or at shutdown),
    /// with its name. It is not called for a child whose process has already exited
    /// (it ended and is not restarted, or is waiting out its restart delay): there is
    /// no process left to stop.
    pub fn on_before_process_shutdown<F, Fut>(&mut self, f: F) -> &mut App
    where
        F: Fn(MainContext, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.hooks
            .before_process_shutdown
            .push(hooks::named_hook(f));
        self
    }

    /// Runs before a child is restarted (by request or by its restart policy), with its
    /// name.
    pub fn on_before_process_restart<F, Fut>(&mut self, f: F) -> &mut App
    where
        F: Fn(MainContext, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.hooks.before_process_restart.push(hooks::named_hook(f));
        self
    }

    /// Runs after a child was restarted, with its name.
    pub fn on_after_restart<F, Fut>(&mut self, f: F) -> &mut App
    where
        F: Fn(MainContext, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.hooks.after_restart.push(hooks::named_hook(f));
        self
    }

    /// Runs after every child has stopped, at the end of shutdown.
    pub fn on_after_shutdown<F, Fut>(&mut self, f: F) -> &mut App
    where
        F: Fn(MainContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.hooks.after_shutdown.push(hooks::hook(f));
        self
    }

    /// Runs the program. In the main process: until SIGINT, SIGTERM or
    /// [`MainContext::shutdown`], then shuts down in order. In a child started by
    /// [`add_target`](App::add_target): runs the target and exits the process with status
    /// 0, or 1 if it failed.
    ///
    /// # Errors
    ///
    /// An invalid or duplicate child name, or a failure to start the runtime or the hub.
    pub fn run(self) -> Result<()> {
        if let Some(target) = std::env::var_os(ENV_TARGET) {
            self.run_child(&target.to_string_lossy())
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("yukicomm-main")
            .build()
            .map_err(|source| Error::Io {
                context: "cannot start the tokio runtime".into(),
                source,
            })?;
        rt.block_on(self.run_until(std::future::pending::<()>()))
    }

    fn run_child(self, target: &str) -> ! {
        let Some(f) = self.children.iter().find_map(|c| match &c.launch {
            Launch::Target(f) if c.name == target => Some(f.clone()),
            _ => None,
        }) else {
            eprintln!("yukicomm: this executable has no target named '{target}'");
            std::process::exit(2);
        };
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("yukicomm: cannot start the tokio runtime: {e}");
                std::process::exit(1);
            }
        };
        let result = rt.block_on(async move {
            let ctx = yukicomm_client::connect_in(tokio::runtime::Handle::current())?;
            let result = f(ctx.clone()).await;
            // What the target sent last reaches the hub before the process exits.
            if let Err(e) = ctx.flush(FLUSH_AT_EXIT) {
                eprintln!(
                    "yukicomm: target '{target}' ended, but what it sent last may be lost: {e}"
                );
            }
            result
        });
        match result {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("yukicomm: target '{target}' failed: {e}");
                std::process::exit(1);
            }
        }
    }

    /// Runs the main process inside an existing tokio runtime until `shutdown`
    /// completes (or SIGINT, SIGTERM, or [`MainContext::shutdown`]), then shuts down in
    /// order.
    ///
    /// # Errors
    ///
    /// An invalid or duplicate child name, or a failure to start the hub.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future skips the ordered shutdown. The children
    /// are still killed (they are killed when dropped, and exit when the hub goes away),
    /// but no shutdown hook runs. Complete `shutdown` instead.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        for c in &self.children {
            let name = ProcessName::new(&c.name).map_err(|e| Error::Other(e.to_string()))?;
            if !seen.insert(c.name.clone()) {
                return Err(Error::Other(format!("two children are named '{}'", c.name)));
            }
            names.push(name);
        }
        let mut hub_config = self.hub.clone();
        if let Some(r) = &self.redis {
            hub_config.redis = Some(r.clone());
        }
        let hub = Arc::new(Hub::bind(hub_config).map_err(|source| Error::Io {
            context: "cannot start the hub".into(),
            source,
        })?);
        let mut hub_events = hub.take_events().expect("a new hub has its events");
        for n in &names {
            hub.admit_child(n);
        }
        let board = Arc::new(status::Board::new(names.iter().map(|n| n.as_str())));
        let report = board.clone();
        hub.set_process_info(Arc::new(move || report.report()));
        let _metrics = self.start_metrics(&hub).await;
        let endpoint = match &self.remote {
            Some(options) => {
                let children = self.children.iter().map(|c| c.name.clone()).collect();
                let endpoint = remote::Endpoint::start(
                    options,
                    hub.clone(),
                    board.clone(),
                    Arc::new(children),
                )
                .await
                .map_err(|e| Error::Other(format!("cannot listen for remote processes: {e}")))?;
                Some(Arc::new(endpoint))
            }
            None => None,
        };
        let node = local::local_node(hub.clone(), tokio::runtime::Handle::current());
        let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel();
        let ctx = MainContext {
            node,
            children: Arc::new(self.children.iter().map(|c| c.name.clone()).collect()),
            shutdown: shutdown_tx,
            socket: Arc::from(hub.socket_path()),
            remote: endpoint.clone(),
            redis_socket: hub.redis_socket_path().map(Arc::from),
            redis_addr: hub.redis_addr(),
        };
        let hooks = Arc::new(self.hooks);
        Hooks::run(&hooks.before_start, "on_before_start", &ctx).await;

        let exe = std::env::current_exe().map_err(|source| Error::Io {
            context: "cannot find this executable".into(),
            source,
        })?;
        let exec_args = self
            .exec_args
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let shutting_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut commands: HashMap<String, mpsc::UnboundedSender<Cmd>> = HashMap::new();
        let mut tasks = Vec::new();
        for (spec, process_name) in self.children.into_iter().zip(names) {
            let (tx, rx) = mpsc::unbounded_channel();
            commands.insert(spec.name.clone(), tx);
            let s = Supervised {
                spec,
                process_name,
                hub: hub.clone(),
                ctx: ctx.clone(),
                hooks: hooks.clone(),
                exe: exe.clone(),
                exec_args: exec_args.clone(),
                shutting_down: shutting_down.clone(),
                board: board.clone(),
            };
            tasks.push((s.spec.name.clone(), tokio::spawn(child::supervise(s, rx))));
        }

        let mut after_start = tokio::task::JoinSet::new();
        for h in hooks.after_start.iter() {
            after_start.spawn(hooks::run_one("on_after_start", h(ctx.clone())));
        }

        let signals = shutdown_signal();
        tokio::pin!(shutdown, signals);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = &mut signals => {
                    tracing::info!("signal received; shutting down");
                    break;
                }
                _ = shutdown_rx.recv() => break,
                Some(event) = hub_events.recv() => match event {
                    HubEvent::Control { action, name } => {
                        let cmd = match action {
                            ControlAction::Restart => Cmd::Restart,
                            ControlAction::Stop => Cmd::Stop,
                        };
                        if let Some(tx) = commands.get(&name) {
                            let _ = tx.send(cmd);
                        }
                    }
                    HubEvent::Connected { name } => tracing::debug!(child = %name, "connected"),
                    HubEvent::Disconnected { name } => tracing::debug!(child = %name, "disconnected"),
                },
                Some(_) = after_start.join_next(), if !after_start.is_empty() => {}
            }
        }

        // Shutdown, in order: hooks that run forever stop first, then the children, last
        // added first, each with its hook; then the after-shutdown hooks.
        shutting_down.store(true, std::sync::atomic::Ordering::Release);
        after_start.abort_all();
        while after_start.join_next().await.is_some() {}
        for (name, task) in tasks.into_iter().rev() {
            let (done_tx, done_rx) = oneshot::channel();
            if let Some(tx) = commands.get(&name) {
                let _ = tx.send(Cmd::Shutdown(done_tx));
            }
            let _ = done_rx.await;
            let _ = task.await;
        }
        Hooks::run(&hooks.after_shutdown, "on_after_shutdown", &ctx).await;
        hub.shutdown();
        drop(ctx);
        if let Some(endpoint) = endpoint.and_then(Arc::into_inner) {
            // Remote processes are told the program ended, as far as their links allow.
            endpoint.close(std::time::Duration::from_secs(1)).await;
        }
        Ok(())
    }
}

impl App {
    /// Starts the Prometheus endpoint if one is configured; the returned guard stops it.
    async fn start_metrics(&self, hub: &Arc<Hub>) -> Option<AbortOnDrop> {
        let from_env = std::env::var("YUKICOMM_METRICS_ADDR").ok();
        let addr = match (self.metrics, from_env) {
            (Some(a), _) => a,
            (None, Some(text)) => match text.parse() {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("YUKICOMM_METRICS_ADDR='{text}' is not an address: {e}");
                    return None;
                }
            },
            (None, None) => return None,
        };
        #[cfg(feature = "prometheus")]
        {
            match metrics::serve(hub.clone(), addr).await {
                Ok(task) => Some(AbortOnDrop(task)),
                Err(e) => {
                    tracing::warn!("cannot serve metrics at {addr}: {e}");
                    None
                }
            }
        }
        #[cfg(not(feature = "prometheus"))]
        {
            let _ = hub;
            tracing::warn!(
                "metrics at {addr} were asked for, but this program was built without the \
                 `prometheus` feature"
            );
            None
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!(
            "cannot install signal handlers; SIGINT and SIGTERM will not shut down in order"
        );
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
