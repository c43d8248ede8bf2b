//! The Redis protocol endpoint against Redis itself, with Redis's own benchmark tool:
//! `redis-benchmark` against yukicomm's RESP endpoint and against a `redis-server` in
//! the same run, alternating, over a Unix socket and over TCP loopback; then memory
//! per key written over RESP.
//!
//! The hub is this executable run again as a child process (a main process with the
//! endpoint on a Unix socket and on `127.0.0.1`, nothing else running in it), so that
//! its resident memory is its own. The bench starts its own `redis-server` (no
//! persistence, a Unix socket in a private temporary directory and a free loopback
//! port). Both get `SIGKILL` if the bench dies.
//!
//! Rates: for each transport (Unix socket, TCP), each shape (`-c 1 -P 1`, `-c 1 -P
//! 16`, `-c 50 -P 1`, `-c 50 -P 16`) and each test (`PING_MBULK`, `SET`, `GET`, `INCR`,
//! `MSET` of 10 keys), one `redis-benchmark -d 64 -r 100000 --csv` run against each
//! system, the order of the two swapped from one test to the next and from one round to
//! the next. The figure is the median over the rounds; the ratio is yukicomm / Redis of
//! the medians, and the spread is the lowest and highest ratio of a single round.
//!
//! Memory per key: a fresh hub and a fresh `redis-server`; one connection writes
//! `--keys` keys (default 1,000,000; `key:%012d`, 16 bytes, with 64-byte values of
//! `x`, as `redis-benchmark -d 64` writes) in pipelines of 1,000 `SET`s over the Unix
//! socket; memory per key is the growth of the process's RSS divided by the keys.
//! Redis's `used_memory` growth is shown too.
//!
//! ```text
//! cargo bench --bench redis_endpoint                    # full run, about 8 minutes
//! cargo bench --bench redis_endpoint -- --markdown      # the tables as markdown
//! cargo bench --bench redis_endpoint -- --quick         # small counts, one round
//! cargo bench --bench redis_endpoint -- --rounds 5 --transport unix --shape 50x16 --test set,incr
//! cargo bench --bench redis_endpoint -- --no-memory     # rates only
//! cargo bench --bench redis_endpoint -- --memory-only   # memory only
//! cargo bench --bench redis_endpoint -- --against-hub /tmp/old-bench-binary
//! ```
//!
//! `--against-hub PATH` measures another build of this bench (its executable, copied
//! aside before rebuilding) in Redis's place, alternated the same way: how a change to
//! the endpoint is measured before and after in one sitting. `--scale F` multiplies
//! every request count. Needs `redis-server` and `redis-benchmark` on `PATH`; fails
//! loudly without them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use yukicomm::{App, RedisConfig};

/// Set in the environment of the hub child.
const ENV_HUB: &str = "YUKICOMM_REDIS_BENCH_HUB";

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    if std::env::var_os(ENV_HUB).is_some() {
        return hub_main();
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redis_endpoint bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hub child: the endpoint on a private Unix socket and on a loopback port; prints
/// `REDIS <socket> <addr>` and stops when its standard input closes.
fn hub_main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut redis = RedisConfig::unix();
    redis.tcp = Some("127.0.0.1:0".parse().expect("a loopback address"));
    let mut app = App::new();
    app.redis(redis);
    app.on_after_start(|ctx| async move {
        println!(
            "REDIS {} {}",
            ctx.redis_socket_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ctx.redis_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let c = ctx.clone();
        tokio::task::spawn_blocking(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            c.shutdown();
        });
        Ok(())
    });
    match app.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redis_endpoint bench hub: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    quick: bool,
    markdown: bool,
    rounds: usize,
    scale: f64,
    transports: Vec<Transport>,
    shapes: Vec<(u32, u32)>,
    tests: Vec<&'static str>,
    rates: bool,
    memory: bool,
    keys: u64,
    against_hub: Option<PathBuf>,
    verbose: bool,
}

const TESTS: &[&str] = &["ping_mbulk", "set", "get", "incr", "mset"];
const SHAPES: &[(u32, u32)] = &[(1, 1), (1, 16), (50, 1), (50, 16)];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Transport {
    Unix,
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Unix => "Unix socket",
            Transport::Tcp => "TCP loopback",
        }
    }
}

fn options() -> Res<Options> {
    let mut o = Options {
        quick: std::env::var("YUKICOMM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0"),
        markdown: std::env::var("YUKICOMM_BENCH_MARKDOWN").is_ok_and(|v| !v.is_empty() && v != "0"),
        rounds: 0,
        scale: 1.0,
        transports: vec![Transport::Unix, Transport::Tcp],
        shapes: SHAPES.to_vec(),
        tests: TESTS.to_vec(),
        rates: true,
        memory: true,
        keys: 0,
        against_hub: None,
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    let value = |args: &mut dyn Iterator<Item = String>, name: &str| {
        args.next().ok_or_else(|| format!("{name} needs a value"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--markdown" => o.markdown = true,
            "--verbose" => o.verbose = true,
            "--no-memory" => o.memory = false,
            "--memory-only" => o.rates = false,
            "--rounds" => {
                o.rounds = value(&mut args, &a)?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?
            }
            "--scale" => {
                o.scale = value(&mut args, &a)?
                    .parse()
                    .map_err(|e| format!("--scale: {e}"))?
            }
            "--keys" => {
                o.keys = value(&mut args, &a)?
                    .parse()
                    .map_err(|e| format!("--keys: {e}"))?
            }
            "--against-hub" => o.against_hub = Some(PathBuf::from(value(&mut args, &a)?)),
            "--transport" => {
                o.transports = match value(&mut args, &a)?.as_str() {
                    "unix" => vec![Transport::Unix],
                    "tcp" => vec![Transport::Tcp],
                    "both" => vec![Transport::Unix, Transport::Tcp],
                    other => return Err(format!("--transport: '{other}': unix, tcp or both")),
                }
            }
            "--shape" => {
                o.shapes = value(&mut args, &a)?
                    .split(',')
                    .map(|s| {
                        let (c, p) = s.split_once('x').ok_or(format!("--shape: '{s}': CxP"))?;
                        Ok((
                            c.parse().map_err(|e| format!("--shape {s}: {e}"))?,
                            p.parse().map_err(|e| format!("--shape {s}: {e}"))?,
                        ))
                    })
                    .collect::<Res<_>>()?
            }
            "--test" => {
                o.tests = value(&mut args, &a)?
                    .split(',')
                    .map(|t| {
                        TESTS
                            .iter()
                            .find(|&&k| k == t || (t == "ping" && k == "ping_mbulk"))
                            .copied()
                            .ok_or(format!("--test: '{t}' is not one of {TESTS:?}"))
                    })
                    .collect::<Res<_>>()?
            }
            // What `cargo bench` passes, and anything else, is ignored.
            _ => {}
        }
    }
    if o.rounds == 0 {
        o.rounds = if o.quick { 1 } else { 3 };
    }
    if o.keys == 0 {
        o.keys = if o.quick { 100_000 } else { 1_000_000 };
    }
    if o.quick {
        o.scale *= 0.1;
    }
    Ok(o)
}

/// Requests per `redis-benchmark` run: about half a second to a second each against
/// Redis on a 2-vCPU machine.
fn requests(shape: (u32, u32), test: &str, scale: f64) -> u64 {
    let base: f64 = match shape {
        (1, 1) => 50_000.0,
        (1, _) => 400_000.0,
        (_, 1) => 150_000.0,
        _ => 1_000_000.0,
    };
    let per = if test == "mset" { 0.25 } else { 1.0 };
    ((base * per * scale) as u64).max(1_000)
}

fn find_in_path(program: &str) -> Res<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            format!("{program} is not on PATH (apt-get install redis-server redis-tools)")
        })
}

fn temp_dir(prefix: &str) -> Res<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let d = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
    Ok(d)
}

/// A child that gets `SIGKILL` when the bench's main thread ends.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A system under test: where it listens, and its process.
struct Server {
    label: String,
    child: Child,
    unix: String,
    tcp: (String, u16),
    dir: Option<PathBuf>,
    is_redis: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The hub stops when its stdin closes; a server that does not is killed.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Starts a hub (this executable, or `exe`) and reads where its endpoint listens.
fn start_hub(exe: &Path, label: &str) -> Res<Server> {
    let mut cmd = Command::new(exe);
    cmd.env(ENV_HUB, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start the hub {}: {e}", exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the hub did not say where it listens within 20 s".to_string())?;
    let mut parts = line.split_whitespace();
    let (Some("REDIS"), Some(unix), Some(tcp)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("the hub said '{}'", line.trim()));
    };
    let (host, port) = tcp.rsplit_once(':').ok_or("no port")?;
    Ok(Server {
        label: label.to_string(),
        unix: unix.to_string(),
        tcp: (
            host.to_string(),
            port.parse().map_err(|e| format!("port: {e}"))?,
        ),
        child,
        dir: None,
        is_redis: false,
    })
}

/// Starts a `redis-server` with no persistence on a private Unix socket and a free
/// loopback port, and waits until it answers.
fn start_redis() -> Res<Server> {
    let program = find_in_path("redis-server")?;
    let dir = temp_dir("yukicomm-redis-bench")?;
    let socket = dir.join("redis.sock");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let mut cmd = Command::new(&program);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--unixsocket")
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
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| format!("start redis-server: {e}"))?;
    let mut server = Server {
        label: String::new(),
        unix: socket.to_string_lossy().into_owned(),
        tcp: ("127.0.0.1".into(), port),
        child,
        dir: Some(dir),
        is_redis: true,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("redis-server exited at start: {status}"));
        }
        if let Ok(info) = command(&server.unix, &[b"INFO", b"server"]) {
            let version = info_field(&info, "redis_version").unwrap_or("?");
            server.label = format!("Redis {version}");
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
        }
        if Instant::now() >= deadline {
            return Err("redis-server did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One command over the Unix socket; its reply if it is a bulk string.
fn command(socket: &str, args: &[&[u8]]) -> Res<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    encode(&mut req, args);
    s.write_all(&req).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).map_err(|e| e.to_string())?;
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("reply '{}'", head.trim()))?;
    let mut body = vec![0; len + 2];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    body.truncate(len);
    String::from_utf8(body).map_err(|e| e.to_string())
}

/// One `redis-benchmark` run: requests per second.
fn bench_once(
    server: &Server,
    transport: Transport,
    shape: (u32, u32),
    test: &str,
    n: u64,
) -> Res<f64> {
    let mut cmd = Command::new("redis-benchmark");
    match transport {
        Transport::Unix => cmd.args(["-s", &server.unix]),
        Transport::Tcp => cmd.args(["-h", &server.tcp.0, "-p", &server.tcp.1.to_string()]),
    };
    cmd.args(["-n", &n.to_string(), "-c", &shape.0.to_string()])
        .args(["-P", &shape.1.to_string(), "-d", "64", "-r", "100000"])
        .args(["-t", test, "--csv"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    die_with_parent(&mut cmd);
    let out = cmd
        .output()
        .map_err(|e| format!("run redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark against {} failed ({}): {}{}",
            server.label,
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // "test","rps",... then one line per test.
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        if let Some(rps) = cells.get(1).and_then(|r| r.parse::<f64>().ok()) {
            if rps > 0.0 {
                return Ok(rps);
            }
        }
    }
    Err(format!(
        "redis-benchmark against {} printed no rate: {text}",
        server.label
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else {
        format!("{:.0}k", r / 1e3)
    }
}

fn test_name(t: &str) -> &str {
    match t {
        "ping_mbulk" => "PING",
        "set" => "SET",
        "get" => "GET",
        "incr" => "INCR",
        "mset" => "MSET (10 keys)",
        t => t,
    }
}

type Key = (Transport, (u32, u32), &'static str);

fn run() -> Res<()> {
    let o = options()?;
    find_in_path("redis-benchmark")?;
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpu}, {cpus} CPUs");

    // A last resort against a hang anywhere.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(3600));
        eprintln!("redis_endpoint bench: still running after an hour; giving up");
        std::process::exit(1);
    });

    let start_other = || -> Res<Server> {
        match &o.against_hub {
            Some(p) => start_hub(p, &format!("hub {}", p.display())),
            None => start_redis(),
        }
    };

    if o.rates {
        let yuki = start_hub(&me, "yukicomm")?;
        let other = start_other()?;
        // Per key: yukicomm's and the other's rate in each round.
        let mut results: BTreeMap<Key, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        let mut flip = false;
        for round in 0..o.rounds {
            for &t in &o.transports {
                for &shape in &o.shapes {
                    for &test in &o.tests {
                        let n = requests(shape, test, o.scale);
                        flip = !flip;
                        let order: [(&Server, bool); 2] = if flip {
                            [(&yuki, true), (&other, false)]
                        } else {
                            [(&other, false), (&yuki, true)]
                        };
                        for (server, is_yuki) in order {
                            let r = bench_once(server, t, shape, test, n)?;
                            if o.verbose {
                                eprintln!(
                                    "round {round} {} -c {} -P {} {test}: {}: {}",
                                    t.name(),
                                    shape.0,
                                    shape.1,
                                    server.label,
                                    rate(r)
                                );
                            }
                            let e = results.entry((t, shape, test)).or_default();
                            if is_yuki {
                                e.0.push(r)
                            } else {
                                e.1.push(r)
                            }
                        }
                    }
                }
            }
            flip = !flip;
        }
        println!(
            "\nredis-benchmark -d 64 -r 100000, requests/s, median of {} round(s): yukicomm / {} (ratio; lowest-highest ratio of one round)",
            o.rounds, other.label
        );
        for &t in &o.transports {
            println!("\n{}:\n", t.name());
            let head: Vec<String> = o
                .shapes
                .iter()
                .map(|s| format!("-c {} -P {}", s.0, s.1))
                .collect();
            if o.markdown {
                println!("| test | {} |", head.join(" | "));
                println!("|---|{}", "--:|".repeat(head.len()));
            } else {
                print!("{:<16}", "test");
                for h in &head {
                    print!("{h:>34}");
                }
                println!();
            }
            for &test in &o.tests {
                let mut cells = Vec::new();
                for &shape in &o.shapes {
                    let Some((y, r)) = results.get(&(t, shape, test)) else {
                        cells.push("-".to_string());
                        continue;
                    };
                    let ratios: Vec<f64> = y.iter().zip(r).map(|(a, b)| a / b).collect();
                    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = ratios.iter().copied().fold(0.0, f64::max);
                    let (my, mr) = (median(y.clone()), median(r.clone()));
                    cells.push(if ratios.len() > 1 {
                        format!(
                            "{} / {} ({:.2}x; {:.2}-{:.2})",
                            rate(my),
                            rate(mr),
                            my / mr,
                            lo,
                            hi
                        )
                    } else {
                        format!("{} / {} ({:.2}x)", rate(my), rate(mr), my / mr)
                    });
                }
                if o.markdown {
                    println!("| {} | {} |", test_name(test), cells.join(" | "));
                } else {
                    print!("{:<16}", test_name(test));
                    for c in &cells {
                        print!("{c:>34}");
                    }
                    println!();
                }
            }
        }
    }

    if o.memory {
        println!(
            "\nmemory per key: {} keys of 16 bytes with 64-byte values, written over the Unix socket in pipelines of 1,000 SETs, into a fresh process",
            o.keys
        );
        let yuki = start_hub(&me, "yukicomm")?;
        let y = fill(&yuki, o.keys)?;
        drop(yuki);
        let other = start_other()?;
        let r = fill(&other, o.keys)?;
        let per = |b: i64| b as f64 / o.keys as f64;
        let mut line = format!(
            "yukicomm: {:.0} B/key (RSS growth); {}: {:.0} B/key (RSS growth)",
            per(y.0),
            other.label,
            per(r.0)
        );
        if let Some(used) = r.1 {
            line.push_str(&format!(", used_memory growth {:.0} B/key", per(used)));
        }
        line.push_str(&format!("; ratio {:.2}x", y.0 as f64 / r.0 as f64));
        println!("{line}");
    }
    Ok(())
}

/// Resident memory of a process.
fn rss(pid: u32) -> Res<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmRSS".to_string())
}

/// Writes `keys` keys over one connection; the growth of the process's RSS, and of
/// Redis's `used_memory`.
fn fill(server: &Server, keys: u64) -> Res<(i64, Option<i64>)> {
    let used = |s: &Server| -> Res<Option<i64>> {
        if !s.is_redis {
            return Ok(None);
        }
        let info = command(&s.unix, &[b"INFO", b"memory"])?;
        Ok(info_field(&info, "used_memory").and_then(|v| v.parse().ok()))
    };
    let mut s = std::os::unix::net::UnixStream::connect(&server.unix)
        .map_err(|e| format!("connect {}: {e}", server.unix))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    // Warm the connection up, then take the baseline.
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|e| e.to_string())?;
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.child.id();
    let (rss0, used0) = (rss(pid)?, used(server)?);
    let value = [b'x'; 64];
    let mut req = Vec::new();
    let mut replies = vec![0u8; 5 * 1000];
    let mut i = 0;
    while i < keys {
        req.clear();
        let batch = (keys - i).min(1000);
        for k in i..i + batch {
            let key = format!("key:{k:012}");
            encode(&mut req, &[b"SET", key.as_bytes(), &value]);
        }
        s.write_all(&req).map_err(|e| e.to_string())?;
        let want = 5 * batch as usize;
        s.read_exact(&mut replies[..want])
            .map_err(|e| format!("read the replies: {e}"))?;
        if replies[..want].chunks(5).any(|r| r != b"+OK\r\n") {
            return Err(format!(
                "{}: a SET was not answered +OK: {}",
                server.label,
                String::from_utf8_lossy(&replies[..want.min(200)])
            ));
        }
        i += batch;
    }
    std::thread::sleep(Duration::from_millis(200));
    let (rss1, used1) = (rss(pid)?, used(server)?);
    Ok((rss1 - rss0, used0.zip(used1).map(|(a, b)| b - a)))
}
