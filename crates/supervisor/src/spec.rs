//! What a child is and how it is restarted.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use yukicomm_client::{Context, Result};

/// When a child that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never: an exited child stays stopped until restarted by request.
    Never,
    /// When it exits with a failure (non-zero status or a signal). The default.
    #[default]
    OnFailure,
    /// Whenever it exits.
    Always,
}

pub(crate) type TargetFn = Arc<dyn Fn(Context) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// How a child is started.
#[derive(Clone)]
pub(crate) enum Launch {
    /// The current executable, re-executed, runs this function.
    Target(TargetFn),
    /// Any executable.
    Command {
        program: OsString,
        args: Vec<OsString>,
        envs: Vec<(OsString, Option<OsString>)>,
        dir: Option<PathBuf>,
    },
}

/// A child process's settings. Returned by `App::add_target` and `App::add_command`
/// for chaining.
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) name: String,
    pub(crate) launch: Launch,
    pub(crate) restart: RestartPolicy,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_restarts: u32,
    pub(crate) restart_period: Duration,
    pub(crate) stop_timeout: Duration,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("max_restarts", &self.max_restarts)
            .field("restart_period", &self.restart_period)
            .field("stop_timeout", &self.stop_timeout)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    pub(crate) fn new(name: &str, launch: Launch) -> ChildSpec {
        ChildSpec {
            name: name.to_string(),
            launch,
            restart: RestartPolicy::default(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_restarts: 5,
            restart_period: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
        }
    }

    /// When the child is restarted after it exits. Default: [`RestartPolicy::OnFailure`].
    pub fn restart(&mut self, policy: RestartPolicy) -> &mut ChildSpec {
        self.restart = policy;
        self
    }

    /// Delay before an automatic restart: `initial`, doubled after each restart up to
    /// `max`, and back to `initial` once the child has run for a whole restart period.
    /// Default: 100 ms, capped at 10 s.
    pub fn backoff(&mut self, initial: Duration, max: Duration) -> &mut ChildSpec {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// Restart intensity: more than `max_restarts` automatic restarts within `period`
    /// marks the child failed, and it is not restarted again (a request still can).
    /// Default: 5 in 60 s.
    pub fn intensity(&mut self, max_restarts: u32, period: Duration) -> &mut ChildSpec {
        self.max_restarts = max_restarts;
        self.restart_period = period;
        self
    }

    /// How long a stopping child gets between SIGTERM and SIGKILL, both sent to its
    /// whole process group. On Linux it is also how long what is left of the group gets
    /// after the child's program ends, before SIGKILL. Default: 10 s.
    pub fn stop_timeout(&mut self, timeout: Duration) -> &mut ChildSpec {
        self.stop_timeout = timeout;
        self
    }
}
