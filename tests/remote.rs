//! Processes on other machines: enrolment with join tokens, attacks on the TCP endpoint,
//! and faults of the link (a killed remote process, a cut link, a silent link), on
//! 127.0.0.1. The behaviours a remote process shares with a local child (channels, the
//! registry, the store, peer death) run in the contract suite (`tests/contract.rs`).
//!
//! A remote process here is this test binary started again on its own (not by the
//! supervisor) with `REMOTE_ROLE` set: the test's function sees it and plays the remote
//! side ([`remote_side`]).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{eventually, run_main, TempDir};
use yukicomm::service::CallErrorKind;
use yukicomm::{
    ConnectError, Context, JoinConfig, MainContext, RecvError, RecvTimeoutError, SessionConfig,
    TokenError,
};
use yukicomm_remote::opening::{Answer, Opening};

const LIMIT: Duration = Duration::from_secs(120);
const T: Duration = Duration::from_secs(20);
const HEARTBEAT: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(2);
/// Set in a remote process's environment.
const REMOTE_ROLE: &str = "REMOTE_ROLE";

fn session() -> SessionConfig {
    SessionConfig {
        heartbeat: HEARTBEAT,
        grace: GRACE,
        ..SessionConfig::default()
    }
}

fn join_config(state: &Path) -> JoinConfig {
    JoinConfig {
        state_dir: state.to_path_buf(),
        session: session(),
        ..JoinConfig::default()
    }
}

/// An app listening for remote processes on 127.0.0.1, with short heartbeat and grace
/// and an authority in `state`.
macro_rules! remote_app {
    ($state:expr) => {{
        let (mut app, w) = test_app!(LIMIT);
        app.listen_remote("127.0.0.1:0")
            .state_dir($state.path().join("hub"))
            .heartbeat(HEARTBEAT)
            .grace(GRACE)
            .handshake_timeout(Duration::from_millis(500));
        (app, w)
    }};
}

fn url(ctx: &MainContext) -> String {
    format!("yk://{}", ctx.remote_addr().expect("listening"))
}

/// In a remote process started by [`start_remote`], runs `body` with its context and
/// returns true; in the test's own process, returns false.
fn remote_side(body: impl FnOnce(Context)) -> bool {
    if std::env::var_os(REMOTE_ROLE).is_none() {
        return false;
    }
    let url = std::env::var("YUKICOMM_HUB").expect("the hub's address");
    let token = std::env::var("YUKICOMM_JOIN").expect("a token");
    let state = std::env::var_os("YUKICOMM_STATE_DIR").expect("a state directory");
    let mut config = join_config(Path::new(&state));
    if let Some(ms) = std::env::var("REMOTE_GRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.session.grace = Duration::from_millis(ms);
    }
    let ctx = yukicomm::join_with(&url, &token, config).expect("joins the main process");
    body(ctx);
    true
}

/// Starts this test binary as a remote process joining `url` with `token`.
fn start_remote(test: &str, url: &str, token: &str, state: &Path) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(REMOTE_ROLE, "1")
        .env("YUKICOMM_HUB", url)
        .env("YUKICOMM_JOIN", token)
        .env("YUKICOMM_STATE_DIR", state)
        .spawn()
        .expect("starts the remote process")
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("yk://").parse().expect("an address")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The remote error inside a failed join, as text.
fn join_error(r: Result<Context, ConnectError>) -> String {
    match r {
        Err(ConnectError::Remote { source, .. }) => source.to_string(),
        Err(other) => panic!("expected a remote error, got {other}"),
        Ok(ctx) => panic!("joined as '{}' when it should not", ctx.name()),
    }
}

// --- Enrolment ------------------------------------------------------------------------

#[test]
fn a_token_is_used_once_expires_and_names_one_process() {
    let state = TempDir::new("remote-token");
    let (mut app, _w) = remote_app!(state);
    app.add_target("local", |_ctx: Context| std::future::pending());
    let dir = state.path().to_path_buf();
    run_main(app, move |ctx| {
        let url = url(&ctx);
        let token = ctx.join_token("w1", Duration::from_secs(60)).unwrap();
        assert!(!format!("{:?}", ctx).contains(&token));
        let first = yukicomm::join_with(&url, &token, join_config(&dir.join("p1"))).unwrap();
        assert_eq!(first.name(), "w1");
        // The certificate is kept privately.
        let kept = std::fs::read_dir(dir.join("p1"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("w1");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&kept), 0o700);
        assert_eq!(mode(&kept.join("key.pem")), 0o600);
        assert_eq!(mode(&dir.join("hub")), 0o700);
        assert_eq!(mode(&dir.join("hub").join("ca.key")), 0o600);

        // Spent: another process (without the certificate) cannot use it again.
        let e = join_error(yukicomm::join_with(
            &url,
            &token,
            join_config(&dir.join("p2")),
        ));
        assert!(e.contains("unknown or already used"), "{e}");
        // The process that enrolled connects again with its certificate.
        let again = yukicomm::join_with(&url, &token, join_config(&dir.join("p1"))).unwrap();
        assert_eq!(again.name(), "w1");

        // Expired.
        let short = ctx.join_token("w2", Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let e = join_error(yukicomm::join_with(
            &url,
            &short,
            join_config(&dir.join("p3")),
        ));
        assert!(e.contains("expired"), "{e}");

        // For another name: the name is part of what the hub checks.
        let t3 = ctx.join_token("w3", Duration::from_secs(60)).unwrap();
        let forged = t3.replacen("yk1.w3.", "yk1.w4.", 1);
        let e = join_error(yukicomm::join_with(
            &url,
            &forged,
            join_config(&dir.join("p4")),
        ));
        assert!(e.contains("another process"), "{e}");

        // Pinning another authority: the hub is not trusted.
        let t5 = ctx.join_token("w5", Duration::from_secs(60)).unwrap();
        let (head, _fp) = t5.rsplit_once('.').unwrap();
        let pinned_elsewhere = format!("{head}.{}", "ab".repeat(32));
        let e = join_error(yukicomm::join_with(
            &url,
            &pinned_elsewhere,
            join_config(&dir.join("p5")),
        ));
        assert!(e.contains("authority"), "{e}");

        // A client that cannot read the hub's chain asks for the authority, checks it
        // against the token, and may have the hub make its key.
        let t6 = ctx.join_token("w6", Duration::from_secs(60)).unwrap();
        let parsed = yukicomm_remote::token::JoinToken::parse(&t6).unwrap();
        let addr = addr_of(&url).to_string();
        runtime().block_on(async {
            use tokio::io::AsyncWriteExt;
            let ask = |opening: Opening| {
                let addr = addr.clone();
                let config =
                    yukicomm_remote::tls::client_config(&parsed.fingerprint, None).unwrap();
                async move {
                    let mut link = yukicomm_remote::client::connect_tls(&addr, config)
                        .await
                        .unwrap();
                    link.write_all(&opening.encode()).await.unwrap();
                    link.flush().await.unwrap();
                    Answer::read(&mut link).await.unwrap()
                }
            };
            let Answer::Authority(ca) = ask(Opening::Authority).await else {
                panic!("no authority");
            };
            assert_eq!(
                yukicomm_remote::authority::fingerprint(&ca),
                parsed.fingerprint
            );
            let enrol = Opening::Enrol {
                name: "w6".into(),
                secret: parsed.secret().into(),
                request: Vec::new(),
            };
            let Answer::Enrolled {
                cert,
                ca: ca2,
                key: Some(key),
            } = ask(enrol).await
            else {
                panic!("no certificate and key");
            };
            assert_eq!(ca2, ca);
            let identity = yukicomm_remote::authority::Identity {
                chain: vec![cert.into()],
                key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
            };
            let config =
                yukicomm_remote::tls::client_config(&parsed.fingerprint, Some(&identity)).unwrap();
            let mut link = yukicomm_remote::client::connect_tls(&addr, config)
                .await
                .unwrap();
            link.write_all(&Opening::Session { id: 0, received: 0 }.encode())
                .await
                .unwrap();
            link.flush().await.unwrap();
            let answer = Answer::read(&mut link).await.unwrap();
            assert!(matches!(answer, Answer::Opened { .. }), "{answer:?}");
        });

        // Names a remote process cannot have.
        assert!(matches!(
            ctx.join_token("local", Duration::from_secs(60)),
            Err(TokenError::ChildName { .. })
        ));
        assert!(matches!(
            ctx.join_token("bad name/", Duration::from_secs(60)),
            Err(TokenError::BadName { .. })
        ));
        let e = join_error(yukicomm::join_with(&url, "not a token", join_config(&dir)));
        assert!(e.contains("not a join token"), "{e}");
    });
}

// --- Attacks --------------------------------------------------------------------------

/// Reads what the hub sends on `stream` until it closes it (or 5 s pass).
fn all_it_says(mut stream: TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

/// The open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn who_cannot_prove_who_it_is_gets_nothing() {
    let state = TempDir::new("remote-attacks");
    let (app, _w) = remote_app!(state);
    let dir = state.path().to_path_buf();
    run_main(app, move |ctx| {
        let url = url(&ctx);
        let addr = addr_of(&url);
        let token = ctx.join_token("w", Duration::from_secs(60)).unwrap();
        let parsed = yukicomm_remote::token::JoinToken::parse(&token).unwrap();
        let rt = runtime();

        // Plaintext: a child's hello, as on the Unix socket, and an HTTP request.
        for bytes in [
            &b"\x00\x00\x00\x10\x01garbage hello...."[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(bytes).unwrap();
            let said = all_it_says(s);
            assert!(
                said.is_empty() || said[0] == 0x15,
                "plaintext got an answer other than a TLS alert: {said:?}"
            );
        }

        // TLS without a client certificate: only enrolment is answered; a session
        // opening gets nothing.
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let config = yukicomm_remote::tls::client_config(&parsed.fingerprint, None).unwrap();
            let mut link = yukicomm_remote::client::connect_tls(&addr.to_string(), config)
                .await
                .unwrap();
            link.write_all(&Opening::Session { id: 0, received: 0 }.encode())
                .await
                .unwrap();
            link.flush().await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(T, link.read_to_end(&mut got)).await;
            assert!(
                got.is_empty(),
                "a session without a certificate got {got:?}"
            );
        });

        // A certificate from another authority: the handshake fails.
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let other = yukicomm_remote::authority::Authority::open(&dir.join("other-ca")).unwrap();
            let (key, csr) = yukicomm_remote::authority::new_request().unwrap();
            let cert = other.issue("w", &csr).unwrap();
            let identity = yukicomm_remote::authority::Identity {
                chain: vec![cert],
                key: rustls::pki_types::PrivateKeyDer::Pkcs8(
                    rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
                ),
            };
            let config =
                yukicomm_remote::tls::client_config(&parsed.fingerprint, Some(&identity)).unwrap();
            // TLS 1.3 reports a refused client certificate after the client's side of
            // the handshake: at the first read.
            let answer = async {
                let mut link =
                    yukicomm_remote::client::connect_tls(&addr.to_string(), config).await?;
                link.write_all(&Opening::Session { id: 0, received: 0 }.encode())
                    .await?;
                link.flush().await?;
                let mut got = Vec::new();
                link.read_to_end(&mut got).await?;
                Ok::<_, Box<dyn std::error::Error>>(got)
            }
            .await;
            match answer {
                Err(_) => {}
                Ok(got) => assert!(
                    got.is_empty(),
                    "another authority's certificate got {got:?}"
                ),
            }
        });

        // Garbage after the handshake: an unknown opening, then a huge record.
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for garbage in [vec![0xEE; 64], {
                let mut v = vec![0x01, 1, b'w', 0xFF, 0xFF];
                v.extend_from_slice(&[0u8; 64]);
                v
            }] {
                let config =
                    yukicomm_remote::tls::client_config(&parsed.fingerprint, None).unwrap();
                let mut link = yukicomm_remote::client::connect_tls(&addr.to_string(), config)
                    .await
                    .unwrap();
                link.write_all(&garbage).await.unwrap();
                link.flush().await.unwrap();
                let mut got = Vec::new();
                let _ = tokio::time::timeout(T, link.read_to_end(&mut got)).await;
                assert!(got.is_empty(), "garbage got {got:?}");
            }
        });

        // A slow client that never finishes its handshake is let go at the deadline.
        let started = Instant::now();
        let s = TcpStream::connect(addr).unwrap();
        let said = all_it_says(s);
        assert!(said.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a silent client was held {:?}",
            started.elapsed()
        );

        // Thousands of failed handshakes leave nothing behind.
        let before = open_fds();
        let rss_before = rss_kib();
        std::thread::scope(|scope| {
            for _ in 0..20 {
                scope.spawn(|| {
                    for i in 0..100 {
                        let Ok(mut s) = TcpStream::connect(addr) else {
                            continue;
                        };
                        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x00, (i % 200) as u8, 1, 2, 3]);
                        let _ = s.shutdown(Shutdown::Write);
                        let _ = all_it_says(s);
                    }
                });
            }
        });
        assert!(
            eventually(T, || open_fds() <= before + 2),
            "descriptors: {before} before, {} after",
            open_fds()
        );
        let grown = rss_kib().saturating_sub(rss_before);
        assert!(grown < 32 * 1024, "memory grew by {grown} KiB");

        // After all that, a real process still joins.
        let joined = yukicomm::join_with(&url, &token, join_config(&dir.join("p"))).expect("joins");
        assert_eq!(joined.name(), "w");
    });
}

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_oversized_record_or_frame_ends_only_that_link() {
    let state = TempDir::new("remote-oversized");
    let (app, _w) = remote_app!(state);
    let dir = state.path().to_path_buf();
    run_main(app, move |ctx| {
        let url = url(&ctx);
        let addr = addr_of(&url).to_string();
        let token = ctx.join_token("w", Duration::from_secs(60)).unwrap();
        let parsed = yukicomm_remote::token::JoinToken::parse(&token).unwrap();
        // Enrol through the real client, then speak by hand with the certificate.
        let joined = yukicomm::join_with(&url, &token, join_config(&dir)).unwrap();
        drop(joined);
        let kept = dir.join(&parsed.fingerprint[..16]).join("w");
        let identity = yukicomm_remote::authority::Identity {
            chain: vec![yukicomm_remote::authority::read_cert(&kept.join("cert.pem")).unwrap()],
            key: yukicomm_remote::authority::read_key(&kept.join("key.pem")).unwrap(),
        };
        let rt = runtime();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let config =
                yukicomm_remote::tls::client_config(&parsed.fingerprint, Some(&identity)).unwrap();
            for (what, bytes) in [
                // A session record claiming 1 GiB.
                ("record", {
                    let mut v = vec![0x10];
                    v.extend_from_slice(&(1u32 << 30).to_le_bytes());
                    v
                }),
                // A well-formed record carrying a frame that claims 1 GiB.
                ("frame", {
                    let mut v = vec![0x10];
                    v.extend_from_slice(&8u32.to_le_bytes());
                    v.extend_from_slice(&(1u32 << 30).to_be_bytes());
                    v.extend_from_slice(&(1u32 << 30).to_le_bytes());
                    v
                }),
            ] {
                let mut link = yukicomm_remote::client::connect_tls(&addr, config.clone())
                    .await
                    .unwrap();
                link.write_all(&Opening::Session { id: 0, received: 0 }.encode())
                    .await
                    .unwrap();
                link.flush().await.unwrap();
                let answer = Answer::read(&mut link).await.unwrap();
                assert!(matches!(answer, Answer::Opened { .. }), "{answer:?}");
                link.write_all(&bytes).await.unwrap();
                link.flush().await.unwrap();
                let mut rest = Vec::new();
                let closed = tokio::time::timeout(T, link.read_to_end(&mut rest)).await;
                assert!(
                    closed.is_ok(),
                    "the hub kept a link that sent an oversized {what}"
                );
            }
        });
        // The main process is unharmed, and the process joins properly afterwards.
        let again = yukicomm::join_with(&url, &token, join_config(&dir)).unwrap();
        again.store().set("still", &1u32).unwrap();
        assert_eq!(ctx.store().get::<u32>("still").unwrap(), Some(1));
    });
}

// --- Faults ---------------------------------------------------------------------------

/// A service a remote process serves; `hang` never answers.
#[yukicomm::service]
pub trait Far {
    /// The serving process's id.
    async fn pid(&self) -> u32;
    /// Never answers.
    async fn hang(&self) -> u32;
}

struct FarImpl;

impl Far for FarImpl {
    async fn pid(&self) -> u32 {
        std::process::id()
    }
    async fn hang(&self) -> u32 {
        std::future::pending().await
    }
}

#[test]
fn a_killed_remote_process_is_reported_to_waiters_after_the_grace_period() {
    if remote_side(|ctx| {
        ctx.serve("far", FarServer::new(FarImpl)).unwrap();
        // A remote process calls too: a service the main process serves.
        let doubled: u32 = ctx
            .caller::<u32, u32>("near")
            .call(std::process::id())
            .unwrap();
        assert_eq!(doubled, std::process::id() * 2);
        ctx.passive_channel::<u32>()
            .send(std::process::id())
            .unwrap();
        // Until killed (`park` may return at once: a wake-up left from joining).
        loop {
            std::thread::park();
        }
    }) {
        return;
    }
    let state = TempDir::new("remote-killed");
    let (app, _w) = remote_app!(state);
    let dir = state.path().to_path_buf();
    run_main(app, move |ctx| {
        ctx.serve_fn("near", |n: u32| async move { n * 2 }).unwrap();
        let token = ctx.join_token("far", Duration::from_secs(60)).unwrap();
        let mut remote = start_remote(test_name!(), &url(&ctx), &token, &dir.join("r"));
        let far = FarClient::new(&ctx, "far")
            .waiting_for_server()
            .with_timeout(T);
        let pid = far.blocking().pid().unwrap();
        assert_eq!(pid, remote.id());
        // Not this supervisor's to restart or stop.
        for refused in [ctx.restart_process("far"), ctx.stop_process("far")] {
            let e = refused.unwrap_err().to_string();
            assert!(e.contains("another machine"), "{e}");
        }
        let passive = ctx.get_channel::<u32>("far-passive").unwrap();
        assert_eq!(passive.recv_timeout(T).unwrap(), pid);
        let receiving = std::thread::spawn(move || passive.recv_timeout(T));
        let calling = std::thread::spawn({
            let far = far.clone();
            move || far.blocking().hang()
        });
        std::thread::sleep(Duration::from_millis(300));
        remote.kill().unwrap();
        remote.wait().unwrap();
        let killed = Instant::now();
        let err = calling.join().unwrap().unwrap_err();
        assert!(matches!(err.kind(), CallErrorKind::ServerGone(_)), "{err}");
        match receiving.join().unwrap() {
            Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. })) => {}
            other => panic!("a receiver of the killed process's channel got {other:?}"),
        }
        let took = killed.elapsed();
        // Within the grace period and a heartbeat, not before the link could resume.
        assert!(took < GRACE + HEARTBEAT * 3, "reported after {took:?}");

        // The process runs again (its certificate kept, the token spent): it joins as a
        // new process of the same name, with its channels and its service.
        let mut again = start_remote(test_name!(), &url(&ctx), &token, &dir.join("r"));
        let new_pid = far.blocking().pid().unwrap();
        assert_eq!(new_pid, again.id());
        let passive = ctx.get_channel::<u32>("far-passive").unwrap();
        assert_eq!(passive.recv_timeout(T).unwrap(), new_pid);
        again.kill().unwrap();
        again.wait().unwrap();
    });
}

/// A TCP proxy between a remote process and the hub, which the test can cut or silence.
struct Proxy {
    addr: SocketAddr,
    pairs: Arc<parking_lot::Mutex<Vec<Pair>>>,
    accepted: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Pair {
    sockets: [Arc<TcpStream>; 2],
    silent: Arc<AtomicBool>,
}

impl Proxy {
    fn new(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pairs: Arc<parking_lot::Mutex<Vec<Pair>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (p, a) = (pairs.clone(), accepted.clone());
        std::thread::spawn(move || {
            for down in listener.incoming().flatten() {
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let pair = Pair {
                    sockets: [Arc::new(down), Arc::new(up)],
                    silent: Arc::new(AtomicBool::new(false)),
                };
                for (from, to) in [(0, 1), (1, 0)] {
                    let pair = pair.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match (&*pair.sockets[from]).read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // A silent link carries nothing more and reads nothing
                            // more: neither side hears, and their writes stall once
                            // the socket buffers are full.
                            while pair.silent.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            if (&*pair.sockets[to]).write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = pair.sockets[to].shutdown(Shutdown::Write);
                    });
                }
                p.lock().push(pair);
            }
        });
        Proxy {
            addr,
            pairs,
            accepted,
        }
    }

    /// Closes every connection through it.
    fn cut(&self) {
        for pair in self.pairs.lock().drain(..) {
            for s in &pair.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Makes every connection through it silent (a network that drops everything).
    fn silence(&self) {
        for pair in self.pairs.lock().drain(..) {
            pair.silent.store(true, Ordering::SeqCst);
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Messages each way per cut.
const PER_CUT: u64 = 1000;

#[test]
fn a_cut_or_silent_link_resumes_with_nothing_lost_or_repeated() {
    if remote_side(|ctx| {
        // Sends PER_CUT * 3 numbers to the main process, paced, and checks what comes the
        // other way: every number once, in order.
        let out = ctx.passive_channel::<u64>();
        let inbox = ctx.active_channel::<u64>();
        let checker = std::thread::spawn(move || {
            for n in 0..PER_CUT * 3 {
                match inbox.recv_timeout(T) {
                    Ok(got) if got == n => {}
                    other => return format!("expected {n}, got {other:?}"),
                }
            }
            "ok".to_string()
        });
        for n in 0..PER_CUT * 3 {
            out.send(n).unwrap();
            std::thread::sleep(Duration::from_micros(1500));
        }
        let verdict = checker.join().unwrap();
        ctx.store().set("remote-verdict", &verdict).unwrap();
        loop {
            std::thread::park();
        }
    }) {
        return;
    }
    let state = TempDir::new("remote-cut");
    let (app, _w) = remote_app!(state);
    let dir = state.path().to_path_buf();
    run_main(app, move |ctx| {
        let proxy = Proxy::new(ctx.remote_addr().unwrap());
        let token = ctx.join_token("cut", Duration::from_secs(60)).unwrap();
        let mut remote = start_remote(
            test_name!(),
            &format!("yk://{}", proxy.addr),
            &token,
            &dir.join("r"),
        );
        let from = ctx.get_channel::<u64>("cut-passive").unwrap();
        let to = ctx.get_channel::<u64>("cut-active").unwrap();
        let sender = std::thread::spawn(move || {
            for n in 0..PER_CUT * 3 {
                to.send(n).unwrap();
                std::thread::sleep(Duration::from_micros(1500));
            }
        });
        let mut reconnect_took = Vec::new();
        for n in 0..PER_CUT * 3 {
            assert_eq!(from.recv_timeout(T).unwrap(), n, "in order, once each");
            if n == PER_CUT / 2 || n == PER_CUT + PER_CUT / 2 {
                let links = proxy.accepted();
                let at = Instant::now();
                if n < PER_CUT {
                    proxy.cut();
                } else {
                    proxy.silence();
                }
                let back = std::thread::spawn({
                    let accepted = proxy.accepted.clone();
                    move || {
                        eventually(T, || accepted.load(Ordering::SeqCst) > links);
                        at.elapsed()
                    }
                });
                reconnect_took.push(back);
            }
        }
        sender.join().unwrap();
        let took: Vec<Duration> = reconnect_took
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        // A cut is seen at once; silence within the heartbeat (and a reconnection).
        assert!(took[0] < HEARTBEAT, "reconnected {:?} after a cut", took[0]);
        assert!(
            took[1] < HEARTBEAT * 2 + Duration::from_millis(500),
            "reconnected {:?} after the link fell silent",
            took[1]
        );
        let verdict = (|| {
            let deadline = Instant::now() + T;
            while Instant::now() < deadline {
                if let Some(v) = ctx.store().get::<String>("remote-verdict").unwrap() {
                    return v;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            "no verdict".to_string()
        })();
        assert_eq!(verdict, "ok", "what the remote process received");
        // Nothing more came: no message was delivered twice.
        match from.recv_timeout(Duration::from_millis(300)) {
            Err(RecvTimeoutError::Timeout { .. }) => {}
            other => panic!("after the last message: {other:?}"),
        }
        let _ = remote.kill();
        let _ = remote.wait();
    });
}

#[test]
fn a_remote_process_learns_at_once_that_the_main_process_shut_down() {
    if remote_side(|ctx| {
        let inbox = ctx.active_channel::<u32>();
        ctx.passive_channel::<u32>().send(1).unwrap();
        let started = Instant::now();
        match inbox.recv_timeout(Duration::from_secs(60)) {
            Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. })) => {
                println!("disconnected after {} ms", started.elapsed().as_millis());
            }
            other => panic!("when the main process shut down: {other:?}"),
        }
    }) {
        return;
    }
    let state = TempDir::new("remote-shutdown");
    let (app, _w) = remote_app!(state);
    let dir = state.path().to_path_buf();
    let remote = Arc::new(parking_lot::Mutex::new(None));
    let r = remote.clone();
    run_main(app, move |ctx| {
        let token = ctx.join_token("leaver", Duration::from_secs(60)).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                test_name!(),
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(REMOTE_ROLE, "1")
            .env("REMOTE_GRACE_MS", "60000")
            .env("YUKICOMM_HUB", url(&ctx))
            .env("YUKICOMM_JOIN", token)
            .env("YUKICOMM_STATE_DIR", dir.join("r"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        *r.lock() = Some(child);
        let hello = ctx.get_channel::<u32>("leaver-passive").unwrap();
        assert_eq!(hello.recv_timeout(T).unwrap(), 1);
    });
    // The main process has shut down; the remote process's grace period is a minute.
    let child = remote.lock().take().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let ms: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("disconnected after "))
        .and_then(|l| l.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(ms < 10_000, "the remote process learnt it after {ms} ms");
}

// --- The example ----------------------------------------------------------------------

#[test]
fn the_remote_example_runs_both_halves() {
    let _w = test_watchdog!(LIMIT);
    let state = TempDir::new("remote-example");
    let out = std::process::Command::new(support::example("remote"))
        .env("XDG_STATE_HOME", state.path())
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("square(3) = 9"), "{stdout}");
    assert!(
        stdout.contains("job 4 summed to 28 by gpu-worker"),
        "{stdout}"
    );
    assert!(stdout.contains("all 5 jobs done"), "{stdout}");
    // The worker's certificate and the authority are where the docs say.
    assert!(state.path().join("yukicomm/hub/ca.pem").exists());
    assert!(state.path().join("yukicomm/remote").is_dir());
}

#[test]
fn tokens_stay_out_of_logs_and_of_what_ps_shows() {
    use std::io::BufRead;
    let _w = test_watchdog!(LIMIT);
    let state = TempDir::new("remote-secrets");
    let logs = state.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = |name: &str| std::fs::File::create(logs.join(name)).unwrap();
    // The two halves as on two machines, with every log line on.
    let mut main = std::process::Command::new(support::example("remote"))
        .args(["main", "127.0.0.1:0", "--jobs", "3"])
        .env("XDG_STATE_HOME", state.path())
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(log("main.err"))
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(main.stdout.take().unwrap()).lines();
    let mut command = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("YUKICOMM_JOIN=") {
            command = Some(line);
            break;
        }
    }
    let command = command.expect("the main half prints how to join");
    let field = |prefix: &str| {
        command
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .unwrap()
            .to_string()
    };
    let token = field("YUKICOMM_JOIN=");
    let hub = field("YUKICOMM_HUB=");
    let secret = token.split('.').nth(2).unwrap().to_string();
    let worker = std::process::Command::new(support::example("remote"))
        .arg("worker")
        .env("XDG_STATE_HOME", state.path())
        .env("RUST_LOG", "trace")
        .env("YUKICOMM_HUB", &hub)
        .env("YUKICOMM_JOIN", &token)
        .stdout(log("worker.out"))
        .stderr(log("worker.err"))
        .spawn()
        .unwrap();
    let mut rest = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        rest.push_str(&line);
        rest.push('\n');
        if line.contains("computed remotely") {
            // Joined: what `ps` and /proc show of the worker no longer has the token.
            let pid = worker.id();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            for (what, bytes) in [("command line", cmdline), ("environment", environ)] {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&secret),
                    "the worker's {what} shows the token"
                );
            }
        }
    }
    assert!(main.wait().unwrap().success(), "{rest}");
    let mut worker = worker;
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(rest.contains("all 3 jobs done"), "{rest}");
    let ca_key = std::fs::read_to_string(state.path().join("yukicomm/hub/ca.key")).unwrap();
    let ca_key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    for name in ["main.err", "worker.err", "worker.out"] {
        let text = std::fs::read_to_string(logs.join(name)).unwrap();
        assert!(!text.contains(&secret), "{name} shows the token's secret");
        assert!(
            !text.contains(&ca_key_body[..40]),
            "{name} shows the authority's key"
        );
    }
}
