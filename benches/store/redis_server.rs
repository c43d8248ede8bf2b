//! Redis, the reference: starting a private `redis-server` on a Unix socket (killed
//! when the bench ends, however it ends), connecting to it blocking or multiplexed, and
//! reading figures from its `INFO`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use yukicomm::Error;

use crate::plan::STEP_TIMEOUT;
use crate::support::{self, io, other};
use crate::Result;

/// Turns a Redis error into one that says what was being done.
pub fn rerr(context: &'static str) -> impl Fn(redis::RedisError) -> Error {
    move |e| other(format!("redis: {context}: {e}"))
}

/// A `redis-server` this bench started; killed and cleaned up when dropped.
pub struct RedisServer {
    child: std::process::Child,
    dir: PathBuf,
    pub info: RedisInfo,
}

/// Where the server listens, its process and its version.
#[derive(Clone, Debug)]
pub struct RedisInfo {
    socket: String,
    pub pid: u32,
    pub version: String,
}

impl RedisInfo {
    /// The URL of database `db`.
    pub fn url(&self, db: u8) -> String {
        match db {
            0 => format!("unix://{}", self.socket),
            db => format!("unix://{}?db={db}", self.socket),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` in a directory of `PATH`, if it is there.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn redis_client(url: &str) -> Result<redis::Client> {
    redis::Client::open(url).map_err(rerr("client"))
}

/// A blocking connection to `url`, every wait limited to `STEP_TIMEOUT`.
pub fn redis_connect(url: &str) -> Result<redis::Connection> {
    let con = redis_client(url)?
        .get_connection_with_timeout(STEP_TIMEOUT)
        .map_err(rerr("connect"))?;
    con.set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(rerr("set_read_timeout"))?;
    con.set_write_timeout(Some(STEP_TIMEOUT))
        .map_err(rerr("set_write_timeout"))?;
    Ok(con)
}

/// A multiplexed connection to `url`, every wait limited to `STEP_TIMEOUT`.
pub async fn redis_connect_async(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(STEP_TIMEOUT))
        .set_response_timeout(Some(STEP_TIMEOUT));
    redis_client(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(rerr("connect"))
}

/// Starts `redis-server` on a Unix socket in a private temporary directory and waits
/// until it answers.
pub fn start_redis(program: &Path) -> Result<RedisServer> {
    let dir = support::temp_path("yukicomm-store-bench", "");
    std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
    let socket = dir.join("redis.sock");
    let mut cmd = std::process::Command::new(program);
    cmd.args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args([
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "no", "--loglevel", "warning", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe. The server gets SIGKILL when the thread that
    // started it (the bench's main thread, alive until the bench exits) ends, so it
    // never outlives the bench, even if the bench is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io(format!("start {}", program.display())))?;
    let pid = child.id();
    let mut server = RedisServer {
        child,
        dir,
        info: RedisInfo {
            socket: socket.to_string_lossy().into_owned(),
            pid,
            version: String::new(),
        },
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut con = loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(other(format!("redis-server exited at start: {status}")));
        }
        if socket.exists() {
            if let Ok(c) = redis_connect(&server.info.url(0)) {
                break c;
            }
        }
        if Instant::now() >= deadline {
            return Err(other("redis-server did not answer within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .map_err(rerr("INFO server"))?;
    server.info.version = info_field(&info, "redis_version")
        .unwrap_or("?")
        .to_string();
    Ok(server)
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Redis's own count of the memory it uses (`INFO memory`, `used_memory`).
pub fn redis_used_memory(con: &mut redis::Connection) -> Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(con)
        .map_err(rerr("INFO memory"))?;
    info_field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| other("INFO memory has no used_memory"))
}
