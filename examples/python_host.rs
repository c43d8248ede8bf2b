//! The Rust main process of the Python client's tests (`python/tests`): each scenario
//! supervises a Python child running `python/tests/children/<scenario>.py` (and, for the
//! store, a Rust child too), plays the Rust side, and exits 0 when both sides agree.
//!
//! Run by `python3 python/dev.py test`; by hand:
//!
//! ```text
//! cargo run --example python_host -- values      # or registry, store, services, kill, restart
//! cargo run --example python_host -- remote STATE_DIR
//! ```
//!
//! `remote` supervises no child: it listens for remote processes (TLS on 127.0.0.1),
//! prints `JOIN yk://ADDR TOKEN`, and expects `python/tests/children/remote.py` to join
//! with them, started by the test (`tests/test_remote.py`), not by the supervisor.
//!
//! `YUKICOMM_PYTHON` names the interpreter (default `python3`, which needs `msgpack`);
//! the package is taken from `python/` in this repository. The last line is `PASS
//! <scenario>` or `FAIL <scenario>: <why>`; the exit status says the same (0 or 1).

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use yukicomm::service::CallErrorKind;
use yukicomm::{
    App, Channel, ChildSpec, Context, MainContext, Payload, RecvError, RestartPolicy,
    SubscriberError,
};

type Outcome = Result<(), String>;

/// How long any one wait of a scenario may take.
const WAIT: Duration = Duration::from_secs(20);

/// A struct: a map keyed by field name in Python.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
    label: String,
}

/// An enum: unit variants are strings, the others one-entry maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Empty,
    Circle(f64),
    Rect { w: u32, h: u32 },
    Pair(i32, i32),
}

/// A message with a channel inside.
#[derive(Debug, Serialize, Deserialize)]
struct Carrier {
    note: String,
    reply: Channel<String>,
}

/// A language, for the translator service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lang {
    /// English.
    En,
    /// French.
    Fr,
}

/// Why a translation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TranslateError {
    /// Not in the dictionary.
    UnknownWord(String),
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TranslateError::UnknownWord(w) => write!(f, "unknown word '{w}'"),
        }
    }
}

/// Translates words: served by the main process, called from Python.
#[yukicomm::service]
pub trait Translator {
    /// Translates `text` into `to`.
    async fn translate(&self, text: String, to: Lang) -> Result<String, TranslateError>;
    /// The languages it knows.
    async fn languages(&self) -> Vec<Lang>;
}

struct MainTranslator;

#[yukicomm::service]
impl Translator for MainTranslator {
    async fn translate(&self, text: String, to: Lang) -> Result<String, TranslateError> {
        match (text.as_str(), to) {
            ("hello", Lang::Fr) => Ok("bonjour".into()),
            ("hello", Lang::En) => Ok("hello".into()),
            _ => Err(TranslateError::UnknownWord(text)),
        }
    }
    async fn languages(&self) -> Vec<Lang> {
        vec![Lang::En, Lang::Fr]
    }
}

fn python_child<'a>(app: &'a mut App, name: &str, script: &str) -> &'a mut ChildSpec {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = std::env::var("YUKICOMM_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(python);
    cmd.arg(format!("{root}/python/tests/children/{script}.py"))
        .env("PYTHONPATH", format!("{root}/python"))
        .env("PYTHONUNBUFFERED", "1");
    app.add_command(name, cmd)
}

/// Waits for the next message, at most [`WAIT`].
async fn recv<T: Serialize + DeserializeOwned + Send + 'static>(
    ch: &Channel<T>,
) -> Result<T, String> {
    match tokio::time::timeout(WAIT, ch.recv_async()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("receiving on {}: {e}", ch.name())),
        Err(_) => Err(format!("nothing on {} within {WAIT:?}", ch.name())),
    }
}

fn check<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Outcome {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// Receives the Python child's verdict on `py-active`: `ok`, or `fail: why`.
async fn verdict(active: &Channel<String>) -> Outcome {
    let v = recv(active).await?;
    if v == "ok" {
        Ok(())
    } else {
        Err(format!("the Python child says: {v}"))
    }
}

/// Runs `body` once the children have started, records its outcome, then shuts down.
fn scenario<F, Fut>(app: &mut App, outcome: Arc<Mutex<Option<Outcome>>>, body: F)
where
    F: FnOnce(MainContext) -> Fut + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let body = Arc::new(Mutex::new(Some(body)));
    app.on_after_start(move |ctx| {
        let outcome = outcome.clone();
        let body = body.lock().ok().and_then(|mut b| b.take());
        async move {
            let result = match body {
                Some(body) => body(ctx.clone()).await,
                None => Err("started twice".into()),
            };
            if let Ok(mut o) = outcome.lock() {
                *o = Some(result);
            }
            ctx.shutdown();
            Ok(())
        }
    });
}

async fn exchange<T>(ctx: &MainContext, name: &str, send: Vec<T>, want: Vec<T>) -> Outcome
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Send + Clone + 'static,
{
    let ch = ctx
        .get_channel::<T>(name)
        .map_err(|e| format!("{name}: {e}"))?;
    for v in send {
        ch.send(v).map_err(|e| format!("{name}: {e}"))?;
    }
    for w in want {
        let got = recv(&ch).await?;
        check(&format!("{name} from Python"), got, w)?;
    }
    Ok(())
}

/// Handles the main process keeps for the whole run (a channel it made and named).
static KEPT: Mutex<Vec<Box<dyn std::any::Any + Send>>> = Mutex::new(Vec::new());

/// Makes a channel, names it, and keeps the main process's end for the whole run.
fn register<T: Serialize + DeserializeOwned + Send + 'static>(
    ctx: &MainContext,
    name: &str,
) -> Result<(), yukicomm::RegistryError> {
    let ch = ctx.channel::<T>()?;
    ctx.set_channel(name, &ch)?;
    if let Ok(mut kept) = KEPT.lock() {
        kept.push(Box::new(ch));
    }
    Ok(())
}

/// Publications on `events.*` the main process has heard.
static HEARD: AtomicU32 = AtomicU32::new(0);

async fn values(ctx: MainContext) -> Outcome {
    let bytes: Vec<u8> = (0..=255).collect();
    exchange(
        &ctx,
        "values.str",
        vec!["héllo from rust ✓".to_string()],
        vec!["héllo from python ✓".to_string()],
    )
    .await?;
    exchange(
        &ctx,
        "values.i64",
        vec![-42i64, i64::MIN],
        vec![-7, i64::MAX],
    )
    .await?;
    exchange(&ctx, "values.u64", vec![u64::MAX], vec![u64::MAX - 1]).await?;
    exchange(
        &ctx,
        "values.bytes",
        vec![Payload::from(bytes.clone())],
        vec![Payload::from(
            bytes.iter().rev().copied().collect::<Vec<u8>>(),
        )],
    )
    .await?;
    exchange(
        &ctx,
        "values.list",
        vec![vec![1u32, 2, 3]],
        vec![vec![4, 5]],
    )
    .await?;
    let map: BTreeMap<String, i64> = [("a".to_string(), 1), ("b".to_string(), -2)].into();
    let pymap: BTreeMap<String, i64> = [("x".to_string(), 10)].into();
    exchange(&ctx, "values.map", vec![map], vec![pymap]).await?;
    exchange(
        &ctx,
        "values.struct",
        vec![Point {
            x: 1,
            y: -2,
            label: "rust".into(),
        }],
        vec![
            Point {
                x: 3,
                y: 4,
                label: "python dict".into(),
            },
            Point {
                x: 5,
                y: 6,
                label: "python dataclass".into(),
            },
        ],
    )
    .await?;
    let shapes = vec![
        Shape::Empty,
        Shape::Circle(1.5),
        Shape::Rect { w: 3, h: 4 },
        Shape::Pair(-1, 2),
    ];
    exchange(&ctx, "values.enum", shapes.clone(), shapes).await?;
    exchange(
        &ctx,
        "values.option",
        vec![None, Some("x".to_string())],
        vec![Some("y".to_string()), None],
    )
    .await?;
    exchange(
        &ctx,
        "values.tuple",
        vec![(7u8, "seven".to_string(), true)],
        vec![(8u8, "eight".to_string(), false)],
    )
    .await?;
    exchange(&ctx, "values.f64", vec![0.25f64], vec![-0.5]).await?;

    // Channels inside messages, both ways.
    let carrier = ctx
        .get_channel::<Carrier>("values.carrier")
        .map_err(|e| e.to_string())?;
    let (mine, theirs) = ctx.channel_pair::<String>().map_err(|e| e.to_string())?;
    carrier
        .send(Carrier {
            note: "from rust".into(),
            reply: theirs,
        })
        .map_err(|e| e.to_string())?;
    check(
        "reply on a Rust channel",
        recv(&mine).await?,
        "pong from python".to_string(),
    )?;
    let got = recv(&carrier).await?;
    check("carrier note", got.note.as_str(), "from python")?;
    got.reply
        .send("pong from rust".into())
        .map_err(|e| e.to_string())?;

    let active = ctx
        .get_channel::<String>("py-active")
        .map_err(|e| e.to_string())?;
    verdict(&active).await
}

async fn registry(ctx: MainContext) -> Outcome {
    let active = ctx
        .get_channel::<String>("py-active")
        .map_err(|e| e.to_string())?;
    check("first word", recv(&active).await?, "ready".to_string())?;
    let jobs = ctx
        .get_channel::<String>("py.jobs")
        .map_err(|e| e.to_string())?;
    let closing = ctx
        .get_channel::<String>("py.closing")
        .map_err(|e| e.to_string())?;
    let results = ctx
        .get_channel::<u32>("rust.results")
        .map_err(|e| e.to_string())?;
    check("job", recv(&jobs).await?, "job 1".to_string())?;
    jobs.send("done 1".into()).map_err(|e| e.to_string())?;
    jobs.send("sel".into()).map_err(|e| e.to_string())?;
    check("result", recv(&results).await?, 7)?;
    active.send("go-close".into()).map_err(|e| e.to_string())?;
    check(
        "last before close",
        recv(&closing).await?,
        "last".to_string(),
    )?;
    match tokio::time::timeout(WAIT, closing.recv_async()).await {
        Ok(Err(RecvError::Closed { .. })) => {}
        other => return Err(format!("after Python closed py.closing: {other:?}")),
    }
    verdict(&active).await
}

async fn rust_worker(ctx: Context) -> yukicomm::Result<()> {
    let store = ctx.store();
    let events = store.subscriber_async::<String>("events.*").await?;
    store.incr_async("ready", 1).await?;
    let ready = store.watch_async("ready").await?;
    let mut n: i64 = store.get_async("ready").await?.unwrap_or(0);
    while n < 2 {
        if let Some(v) = ready.recv_async().await?.value {
            n = v.decode()?;
        }
    }
    for _ in 0..10 {
        store.incr_async("counter", 1).await?;
    }
    store.publish_async("events.rust", "from rust").await?;
    loop {
        match events.recv_async().await {
            Ok(p) if p.topic == "events.py" => break,
            Ok(_) => {}
            Err(SubscriberError::Missed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    store
        .set_async(
            "rust.point",
            &Point {
                x: 9,
                y: 9,
                label: "rust child".into(),
            },
        )
        .await?;
    store.set_async("done.rust", &true).await?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn store(ctx: MainContext) -> Outcome {
    let store = ctx.store();
    let done = store.watch_prefix("done.").map_err(|e| e.to_string())?;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let c = tokio::time::timeout(WAIT, done.recv_async())
            .await
            .map_err(|_| format!("done: only {seen:?} within {WAIT:?}"))?
            .map_err(|e| e.to_string())?;
        seen.insert(c.key);
    }
    check(
        "counter",
        store.get::<i64>("counter").map_err(|e| e.to_string())?,
        Some(20),
    )?;
    check(
        "py.point",
        store.get::<Point>("py.point").map_err(|e| e.to_string())?,
        Some(Point {
            x: 1,
            y: 2,
            label: "python".into(),
        }),
    )?;
    check(
        "py.shape",
        store.get::<Shape>("py.shape").map_err(|e| e.to_string())?,
        Some(Shape::Rect { w: 1, h: 2 }),
    )?;
    check(
        "publications heard by main",
        HEARD.load(Ordering::Relaxed),
        2,
    )?;
    let active = ctx
        .get_channel::<String>("py-active")
        .map_err(|e| e.to_string())?;
    verdict(&active).await
}

async fn services(ctx: MainContext) -> Outcome {
    let active = ctx
        .get_channel::<String>("py-active")
        .map_err(|e| e.to_string())?;
    // A Python service called from Rust (waiting while the child starts serving).
    let calc = yukicomm::service::ServiceClient::new(&ctx, "py.calc")
        .waiting_for_server()
        .with_timeout(WAIT);
    let sum: i64 = calc
        .call::<_, i64, String>("add", &(2, 40))
        .await
        .map_err(|e| e.to_string())?;
    check("py.calc add", sum, 42)?;
    let p: Point = calc
        .call::<_, Point, String>(
            "flip",
            &(Point {
                x: 1,
                y: 2,
                label: "p".into(),
            },),
        )
        .await
        .map_err(|e| e.to_string())?;
    check(
        "py.calc flip",
        p,
        Point {
            x: 2,
            y: 1,
            label: "p".into(),
        },
    )?;
    match calc.call::<_, i64, String>("fail", &("boom",)).await {
        Err(e) => match e.into_kind() {
            CallErrorKind::Service(s) => check("service error", s.as_str(), "boom: refused")?,
            other => return Err(format!("fail: {other:?}")),
        },
        Ok(v) => return Err(format!("fail answered {v}")),
    }
    match calc.call::<_, i64, String>("nothing", &()).await {
        Err(e) if matches!(e.kind(), CallErrorKind::UnknownMethod(_)) => {}
        other => return Err(format!("unknown method: {other:?}")),
    }
    match calc.call::<_, i64, String>("crash", &()).await {
        Err(e) if matches!(e.kind(), CallErrorKind::Panicked(_)) => {}
        other => return Err(format!("crash: {other:?}")),
    }
    let slow = calc.with_timeout(Duration::from_millis(300));
    match slow.call::<_, i64, String>("slow", &(5.0,)).await {
        Err(e) if matches!(e.kind(), CallErrorKind::Timeout(_)) => {}
        other => return Err(format!("slow: {other:?}")),
    }
    let echo = ctx
        .caller::<Vec<String>, Vec<String>>("py.echo")
        .waiting_for_server()
        .with_timeout(WAIT);
    let words = vec!["a".to_string(), "b".to_string()];
    let back = echo
        .call_async(words.clone())
        .await
        .map_err(|e| e.to_string())?;
    check("py.echo", back, words)?;
    active.send("go".into()).map_err(|e| e.to_string())?;
    verdict(&active).await
}

async fn kill(ctx: MainContext) -> Outcome {
    let active = ctx
        .get_channel::<String>("py-active")
        .map_err(|e| e.to_string())?;
    let pid: i32 = recv(&active)
        .await?
        .parse()
        .map_err(|e| format!("pid: {e}"))?;
    let link = ctx
        .get_channel::<String>("py.link")
        .map_err(|e| e.to_string())?;
    check("before the kill", recv(&link).await?, "alive".to_string())?;
    // SAFETY: kill(2) on the pid of our own child process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
    }
    let start = std::time::Instant::now();
    match tokio::time::timeout(WAIT, link.recv_async()).await {
        Ok(Err(RecvError::Disconnected { .. })) => {}
        other => return Err(format!("after SIGKILL: {other:?}")),
    }
    println!("disconnected {:?} after SIGKILL", start.elapsed());
    match link.send("anyone?".into()) {
        Ok(()) => {}
        Err(e) => println!("send after the kill: {e}"),
    }
    Ok(())
}

async fn restart(ctx: MainContext) -> Outcome {
    let active = ctx
        .get_channel::<String>("py-active")
        .map_err(|e| e.to_string())?;
    let first = recv(&active).await?;
    let second = recv(&active).await?;
    let (a, b) = (
        first.strip_prefix("pid ").unwrap_or(&first),
        second.strip_prefix("pid ").unwrap_or(&second),
    );
    if a == b {
        return Err(format!("the same pid twice: {a}"));
    }
    println!("restarted: pid {a} then pid {b}");
    active.send("stay".into()).map_err(|e| e.to_string())?;
    verdict(&active).await
}

/// The remote process's name in the `remote` scenario.
const REMOTE: &str = "py-remote";
/// Messages each way while the test breaks the remote process's link.
const STREAMED: u32 = 150;

/// Receives the next message from the remote process on `NAME-passive`. Between runs
/// the channel is disconnected (the process of the run before has gone): the handle is
/// kept, and what the next process of that name sends comes to it.
async fn recv_remote(passive: &Channel<String>) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, passive.recv_async()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(RecvError::Disconnected { .. })) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => return Err(format!("receiving on {}: {e}", passive.name())),
            Err(_) => return Err(format!("nothing on {} within {WAIT:?}", passive.name())),
        }
    }
}

/// A Python process joins over TLS, from outside the supervisor, twice: the test
/// starts it with the address and token printed here (the first run enrols, the second
/// uses the certificate it kept). Each run exchanges messages both ways, uses the store
/// and calls the main process's services; the second then streams messages both ways
/// while the test cuts and silences its link. Then the test tries the spent token and a
/// wrong fingerprint, and closes this process's stdin: it shuts down, and the second
/// run, still joined, must see the hub go without exiting.
async fn remote(ctx: MainContext) -> Outcome {
    use std::io::Write;
    let token = ctx
        .join_token(REMOTE, Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    let addr = ctx
        .remote_addr()
        .ok_or("not listening for remote processes")?;
    println!("JOIN yk://{addr} {token}");
    let _ = std::io::stdout().flush();
    let store = ctx.store();
    // One handle on each channel for the whole scenario: a process that finds nobody
    // holding the other end of its channel counts it as disconnected.
    let passive = ctx
        .get_channel::<String>(&format!("{REMOTE}-passive"))
        .map_err(|e| e.to_string())?;
    let active = ctx
        .get_channel::<String>(&format!("{REMOTE}-active"))
        .map_err(|e| e.to_string())?;
    for run in 1..=2u32 {
        check(
            "first word of the remote process",
            recv_remote(&passive).await?,
            format!("hello {run}"),
        )?;
        active
            .send(format!("ping {run}"))
            .map_err(|e| e.to_string())?;
        let verdict = recv_remote(&passive).await?;
        if verdict != format!("ok {run}") {
            return Err(format!("run {run} of the remote process says: {verdict}"));
        }
        check(
            "py-remote.run in the store",
            store
                .get::<u32>("py-remote.run")
                .map_err(|e| e.to_string())?,
            Some(run),
        )?;
        println!("REMOTE RUN {run} OK");
        let _ = std::io::stdout().flush();
    }
    // The second run streams through a proxy that the test cuts, then silences: every
    // message arrives once, in order, both ways.
    for i in 0..STREAMED {
        check("streamed", recv_remote(&passive).await?, format!("n {i}"))?;
        active.send(format!("e {i}")).map_err(|e| e.to_string())?;
    }
    check(
        "after the stream",
        recv_remote(&passive).await?,
        "ok stream".into(),
    )?;
    println!("REMOTE STREAM OK");
    let _ = std::io::stdout().flush();
    // The test's other checks run now; it closes stdin when they are done.
    tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let outcome: Arc<Mutex<Option<Outcome>>> = Arc::new(Mutex::new(None));
    let mut app = App::new();
    match name.as_str() {
        "values" => {
            python_child(&mut app, "py", "values");
            app.on_before_start(|ctx| async move {
                register::<String>(&ctx, "values.str")?;
                register::<i64>(&ctx, "values.i64")?;
                register::<u64>(&ctx, "values.u64")?;
                register::<Payload>(&ctx, "values.bytes")?;
                register::<Vec<u32>>(&ctx, "values.list")?;
                register::<BTreeMap<String, i64>>(&ctx, "values.map")?;
                register::<Point>(&ctx, "values.struct")?;
                register::<Shape>(&ctx, "values.enum")?;
                register::<Option<String>>(&ctx, "values.option")?;
                register::<(u8, String, bool)>(&ctx, "values.tuple")?;
                register::<f64>(&ctx, "values.f64")?;
                register::<Carrier>(&ctx, "values.carrier")?;
                Ok(())
            });
            scenario(&mut app, outcome.clone(), values);
        }
        "registry" => {
            python_child(&mut app, "py", "registry");
            app.on_before_start(|ctx| async move {
                register::<u32>(&ctx, "rust.results")?;
                Ok(())
            });
            scenario(&mut app, outcome.clone(), registry);
        }
        "store" => {
            python_child(&mut app, "py", "store");
            app.add_target("rust", rust_worker);
            app.on_before_start(|ctx| async move {
                let store = ctx.store();
                store.set("main.greeting", "hello from main")?;
                store.set(
                    "main.point",
                    &Point {
                        x: -1,
                        y: 1,
                        label: "main".into(),
                    },
                )?;
                store.subscribe("events.*", |_: yukicomm::Publication<String>| {
                    HEARD.fetch_add(1, Ordering::Relaxed);
                })?;
                Ok(())
            });
            scenario(&mut app, outcome.clone(), store);
        }
        "services" => {
            python_child(&mut app, "py", "services");
            app.on_before_start(|ctx| async move {
                ctx.serve("translator", MainTranslator)?;
                ctx.serve_fn("double", |n: i64| async move { n * 2 })?;
                Ok(())
            });
            scenario(&mut app, outcome.clone(), services);
        }
        "kill" => {
            python_child(&mut app, "py", "kill").restart(RestartPolicy::Never);
            scenario(&mut app, outcome.clone(), kill);
        }
        "restart" => {
            python_child(&mut app, "py", "restart")
                .restart(RestartPolicy::OnFailure)
                .backoff(Duration::from_millis(50), Duration::from_millis(200));
            scenario(&mut app, outcome.clone(), restart);
        }
        "remote" => {
            let Some(state) = std::env::args().nth(2) else {
                eprintln!("usage: python_host remote STATE_DIR");
                std::process::exit(2);
            };
            app.listen_remote("127.0.0.1:0")
                .state_dir(state)
                .heartbeat(Duration::from_secs(1))
                .grace(Duration::from_secs(5));
            app.on_before_start(|ctx| async move {
                ctx.serve("translator", MainTranslator)?;
                ctx.serve_fn("double", |n: i64| async move { n * 2 })?;
                ctx.store().set("main.greeting", "hello from main")?;
                Ok(())
            });
            scenario(&mut app, outcome.clone(), remote);
        }
        other => {
            eprintln!(
                "unknown scenario '{other}': values, registry, store, services, kill, restart, remote"
            );
            std::process::exit(2);
        }
    }
    // A watchdog: a hung scenario is a failure, not a hung test run.
    let watched = name.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(90));
        println!("FAIL {watched}: still running after 90 s");
        std::process::exit(1);
    });
    if let Err(e) = app.run() {
        println!("FAIL {name}: {e}");
        std::process::exit(1);
    }
    let result = outcome.lock().ok().and_then(|mut o| o.take());
    match result {
        Some(Ok(())) => println!("PASS {name}"),
        Some(Err(e)) => {
            println!("FAIL {name}: {e}");
            std::process::exit(1);
        }
        None => {
            println!("FAIL {name}: the scenario did not finish");
            std::process::exit(1);
        }
    }
}
