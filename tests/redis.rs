//! The Redis protocol endpoint (issue 14) with real tools: the Rust `redis` crate,
//! scripted `redis-cli`, and interoperation with the Rust store both ways. These tests
//! need `redis-cli` (package `redis-tools`); without it they fail, they do not skip.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::run_main;
use yukicomm::{MainContext, RedisConfig, Ttl};

const T: Duration = Duration::from_secs(20);

fn unix_and_tcp() -> RedisConfig {
    let mut c = RedisConfig::unix();
    c.tcp = Some("127.0.0.1:0".parse().unwrap());
    c
}

fn socket(ctx: &MainContext) -> PathBuf {
    ctx.redis_socket_path()
        .expect("the endpoint has a socket")
        .to_path_buf()
}

fn unix_client(path: &Path, resp3: bool) -> redis::Connection {
    let proto = if resp3 { "?protocol=resp3" } else { "" };
    let url = format!("redis+unix://{}{proto}", path.display());
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(T)
        .unwrap()
}

/// Runs `redis-cli` with `args`; its standard output. Fails the test if the tool is
/// missing.
fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("redis-cli is needed (apt-get install redis-tools): {e}"));
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends raw bytes and reads until the peer closes (or 5 s pass).
fn raw(path: &Path, input: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The endpoint may close first (a refused connection): then read what it said.
    let _ = s.write_all(input);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn strings_keys_and_errors_over_the_redis_crate_in_resp2_and_resp3() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.redis(unix_and_tcp());
    run_main(app, |ctx| {
        let path = socket(&ctx);
        for resp3 in [false, true] {
            let mut c = unix_client(&path, resp3);
            let k = |s: &str| format!("{s}-{resp3}");
            let _: () = redis::cmd("SET")
                .arg(k("a"))
                .arg("hello")
                .query(&mut c)
                .unwrap();
            let v: String = redis::cmd("GET").arg(k("a")).query(&mut c).unwrap();
            assert_eq!(v, "hello");
            let none: Option<String> = redis::cmd("GET").arg(k("nope")).query(&mut c).unwrap();
            assert_eq!(none, None);
            let n: i64 = redis::cmd("INCRBY")
                .arg(k("n"))
                .arg(41)
                .query(&mut c)
                .unwrap();
            assert_eq!(n, 41);
            let n: i64 = redis::cmd("INCR").arg(k("n")).query(&mut c).unwrap();
            assert_eq!(n, 42);
            let n: i64 = redis::cmd("DECRBY")
                .arg(k("n"))
                .arg(2)
                .query(&mut c)
                .unwrap();
            assert_eq!(n, 40);
            let e = redis::cmd("INCR")
                .arg(k("a"))
                .query::<i64>(&mut c)
                .unwrap_err();
            assert!(e.to_string().contains("not an integer"), "{e}");
            let len: i64 = redis::cmd("APPEND")
                .arg(k("a"))
                .arg(" world")
                .query(&mut c)
                .unwrap();
            assert_eq!(len, 11);
            let len: i64 = redis::cmd("STRLEN").arg(k("a")).query(&mut c).unwrap();
            assert_eq!(len, 11);
            // SET's options.
            let r: Option<String> = redis::cmd("SET")
                .arg(k("a"))
                .arg("x")
                .arg("NX")
                .query(&mut c)
                .unwrap();
            assert_eq!(r, None);
            let r: Option<String> = redis::cmd("SET")
                .arg(k("a"))
                .arg("y")
                .arg("XX")
                .arg("GET")
                .query(&mut c)
                .unwrap();
            assert_eq!(r.as_deref(), Some("hello world"));
            let _: () = redis::cmd("SET")
                .arg(k("t"))
                .arg("1")
                .arg("PX")
                .arg(100_000)
                .query(&mut c)
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(k("t"))
                .arg("2")
                .arg("KEEPTTL")
                .query(&mut c)
                .unwrap();
            let ttl: i64 = redis::cmd("PTTL").arg(k("t")).query(&mut c).unwrap();
            assert!(ttl > 90_000 && ttl <= 100_000, "{ttl}");
            let ttl: i64 = redis::cmd("TTL").arg(k("t")).query(&mut c).unwrap();
            assert_eq!(ttl, 100);
            let p: i64 = redis::cmd("PERSIST").arg(k("t")).query(&mut c).unwrap();
            assert_eq!(p, 1);
            let ttl: i64 = redis::cmd("TTL").arg(k("t")).query(&mut c).unwrap();
            assert_eq!(ttl, -1);
            let ttl: i64 = redis::cmd("TTL").arg(k("none")).query(&mut c).unwrap();
            assert_eq!(ttl, -2);
            // MSET, MGET, MSETNX, GETSET, GETDEL, EXISTS, DEL, TYPE.
            let _: () = redis::cmd("MSET")
                .arg(k("m1"))
                .arg("1")
                .arg(k("m2"))
                .arg("two")
                .query(&mut c)
                .unwrap();
            let m: Vec<Option<String>> = redis::cmd("MGET")
                .arg(k("m1"))
                .arg(k("m2"))
                .arg(k("m3"))
                .query(&mut c)
                .unwrap();
            assert_eq!(m, vec![Some("1".into()), Some("two".into()), None]);
            let r: i64 = redis::cmd("MSETNX")
                .arg(k("m3"))
                .arg("3")
                .arg(k("m1"))
                .arg("x")
                .query(&mut c)
                .unwrap();
            assert_eq!(r, 0);
            let old: String = redis::cmd("GETSET")
                .arg(k("m1"))
                .arg("one")
                .query(&mut c)
                .unwrap();
            assert_eq!(old, "1");
            let old: String = redis::cmd("GETDEL").arg(k("m1")).query(&mut c).unwrap();
            assert_eq!(old, "one");
            let n: i64 = redis::cmd("EXISTS")
                .arg(k("m1"))
                .arg(k("m2"))
                .arg(k("m2"))
                .query(&mut c)
                .unwrap();
            assert_eq!(n, 2);
            let t: String = redis::cmd("TYPE").arg(k("m2")).query(&mut c).unwrap();
            assert_eq!(t, "string");
            let n: i64 = redis::cmd("DEL")
                .arg(k("m2"))
                .arg(k("m3"))
                .query(&mut c)
                .unwrap();
            assert_eq!(n, 1);
            // Redis's error formats.
            let e = redis::cmd("LPUSH")
                .arg("l")
                .arg("x")
                .query::<()>(&mut c)
                .unwrap_err();
            assert!(e.to_string().contains("unknown command 'LPUSH'"), "{e}");
            let e = redis::cmd("GET").query::<()>(&mut c).unwrap_err();
            assert!(
                e.to_string()
                    .contains("wrong number of arguments for 'get' command"),
                "{e}"
            );
            let e = redis::cmd("SELECT").arg(1).query::<()>(&mut c).unwrap_err();
            assert!(e.to_string().contains("DB index is out of range"), "{e}");
            let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();
            let e = redis::cmd("KEYS")
                .arg("a[bc]")
                .query::<()>(&mut c)
                .unwrap_err();
            assert!(e.to_string().contains("not supported"), "{e}");
            // Pipelining.
            let (a, b): (String, i64) = redis::pipe()
                .cmd("ECHO")
                .arg("hi")
                .cmd("INCR")
                .arg(k("n"))
                .query(&mut c)
                .unwrap();
            assert_eq!((a.as_str(), b), ("hi", 41));
        }
        // TCP, and SCAN over everything written above.
        let addr = ctx.redis_addr().expect("a TCP address");
        let mut c = redis::Client::open(format!("redis://{addr}"))
            .unwrap()
            .get_connection_with_timeout(T)
            .unwrap();
        let mut seen = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("*-true")
                .arg("COUNT")
                .arg(2)
                .query(&mut c)
                .unwrap();
            seen.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        seen.sort();
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*-true").query(&mut c).unwrap();
        keys.sort();
        assert_eq!(seen, keys);
        assert!(keys.contains(&"a-true".to_string()));
        let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, ctx.store().len().unwrap() as i64);
        let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
        assert_eq!(ctx.store().len().unwrap(), 0);
    });
}

#[test]
fn one_store_two_faces() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.redis(RedisConfig::unix());
    run_main(app, |ctx| {
        let store = ctx.store();
        let mut c = unix_client(&socket(&ctx), false);
        // Written in Rust, read over RESP.
        store.set("s", "text").unwrap();
        store.set("i", &7i64).unwrap();
        store
            .set("b", &yukicomm::Payload::from(vec![0u8, 255]))
            .unwrap();
        store.set("other", &(1, "two")).unwrap();
        let s: String = redis::cmd("GET").arg("s").query(&mut c).unwrap();
        assert_eq!(s, "text");
        let i: i64 = redis::cmd("GET").arg("i").query(&mut c).unwrap();
        assert_eq!(i, 7);
        let b: Vec<u8> = redis::cmd("GET").arg("b").query(&mut c).unwrap();
        assert_eq!(b, vec![0u8, 255]);
        let o: Vec<u8> = redis::cmd("GET").arg("other").query(&mut c).unwrap();
        assert_eq!(o, rmp_serde::to_vec(&(1, "two")).unwrap());
        // Written over RESP, read in Rust.
        let _: () = redis::cmd("SET")
            .arg("rs")
            .arg("from redis")
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg("ri")
            .arg("-12")
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg("rb")
            .arg(&[0xffu8, 0][..])
            .query(&mut c)
            .unwrap();
        assert_eq!(
            store.get::<String>("rs").unwrap().as_deref(),
            Some("from redis")
        );
        assert_eq!(store.get::<i64>("ri").unwrap(), Some(-12));
        let rb: yukicomm::Payload = store.get("rb").unwrap().unwrap();
        assert_eq!(&rb[..], &[0xff, 0]);
        // Counters are shared.
        assert_eq!(store.incr("ri", 2).unwrap(), -10);
        let n: i64 = redis::cmd("INCR").arg("ri").query(&mut c).unwrap();
        assert_eq!(n, -9);
        assert_eq!(store.incr("i", 1).unwrap(), 8);
        // TTLs are shared.
        let _: () = redis::cmd("EXPIRE")
            .arg("rs")
            .arg(100)
            .query(&mut c)
            .unwrap();
        match store.ttl("rs").unwrap() {
            Ttl::Remaining(d) => assert!(d > Duration::from_secs(90)),
            other => panic!("{other:?}"),
        }
        store.expire("s", Some(Duration::from_secs(50))).unwrap();
        let ttl: i64 = redis::cmd("TTL").arg("s").query(&mut c).unwrap();
        assert_eq!(ttl, 50);
        store
            .set_with_ttl("gone", &1, Duration::from_millis(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let g: Option<i64> = redis::cmd("GET").arg("gone").query(&mut c).unwrap();
        assert_eq!(g, None);

        // Publish/subscribe both ways, and the counts include both.
        let rust_sub = store.subscriber::<String>("news").unwrap();
        let mut sub_conn = unix_client(&socket(&ctx), false);
        let mut ps = sub_conn.as_pubsub();
        ps.subscribe("news").unwrap();
        ps.psubscribe("ne*").unwrap();
        ps.set_read_timeout(Some(T)).unwrap();
        let reached: i64 = redis::cmd("PUBLISH")
            .arg("news")
            .arg("over resp")
            .query(&mut c)
            .unwrap();
        assert_eq!(reached, 3);
        assert_eq!(rust_sub.recv_timeout(T).unwrap().value, "over resp");
        assert_eq!(store.publish("news", "from rust").unwrap(), 3);
        assert_eq!(rust_sub.recv_timeout(T).unwrap().value, "from rust");
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = ps.get_message().unwrap();
            got.push((
                m.get_channel_name().to_string(),
                m.get_pattern::<Option<String>>().unwrap(),
                m.get_payload::<String>().unwrap(),
            ));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                ("news".into(), None, "from rust".into()),
                ("news".into(), None, "over resp".into()),
                ("news".into(), Some("ne*".into()), "from rust".into()),
                ("news".into(), Some("ne*".into()), "over resp".into()),
            ]
        );
        let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("news")
            .query(&mut c)
            .unwrap();
        assert_eq!(numsub, vec![("news".to_string(), 2)]);
        let numpat: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut c).unwrap();
        assert_eq!(numpat, 1);
        let chans: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").query(&mut c).unwrap();
        assert_eq!(chans, vec!["news".to_string()]);
    });
}

#[test]
fn redis_cli_scripted_and_bad_input() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.redis(RedisConfig::unix());
    run_main(app, |ctx| {
        let path = socket(&ctx);
        let s = path.to_str().unwrap();
        assert_eq!(cli(&["-s", s, "PING"]).trim(), "PONG");
        assert_eq!(cli(&["-s", s, "SET", "counter", "10"]).trim(), "OK");
        assert_eq!(cli(&["-s", s, "INCR", "counter"]).trim(), "11");
        assert_eq!(ctx.store().get::<i64>("counter").unwrap(), Some(11));
        ctx.store().set("greeting", "hi there").unwrap();
        assert_eq!(cli(&["-s", s, "GET", "greeting"]).trim(), "hi there");
        assert_eq!(cli(&["-3", "-s", s, "GET", "greeting"]).trim(), "hi there");
        // A script on standard input, pipelined.
        let mut p = Command::new("redis-cli")
            .args(["-s", s])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli is needed (apt-get install redis-tools)");
        p.stdin
            .take()
            .unwrap()
            .write_all(b"SET a 1\nINCRBY a 5\nGET a\nDBSIZE\nNOSUCH x\n")
            .unwrap();
        let out = p.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..4], &["OK", "6", "6", "3"]);
        assert!(
            lines[4].starts_with("ERR unknown command 'NOSUCH'"),
            "{text}"
        );
        assert!(cli(&["-s", s, "INFO", "keyspace"]).contains("db0:keys=3"));

        // Bad input: Redis's protocol error, then the connection closes; others go on.
        let out = raw(&path, b"*1\r\n$x\r\nPING\r\n");
        assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
        let out = raw(&path, b"*1\r\n$999999999\r\n");
        assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
        let out = raw(&path, b"PING\r\n*2\r\n+x\r\n");
        assert_eq!(
            out,
            b"+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n"
        );
        let out = raw(&path, b"SET k \"unbalanced\r\n");
        assert_eq!(
            out,
            b"-ERR Protocol error: unbalanced quotes in request\r\n"
        );
        let out = raw(&path, &vec![b'x'; 100_000]);
        assert_eq!(out, b"-ERR Protocol error: too big inline request\r\n");
        let out = raw(
            &path,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nQUIT\r\nPING\r\n",
        );
        assert_eq!(out, b"+OK\r\n+OK\r\n");
        assert_eq!(cli(&["-s", s, "PING"]).trim(), "PONG");
    });
}

#[test]
fn auth_and_protected_mode() {
    // Without a password, TCP only on loopback: the app does not start otherwise.
    let mut open = RedisConfig::tcp("0.0.0.0:0".parse().unwrap());
    let mut app = support::app("auth_and_protected_mode");
    app.redis(open.clone());
    let e = app.run().unwrap_err();
    assert!(
        e.to_string().contains("protected mode") || format!("{e:?}").contains("protected mode"),
        "{e:?}"
    );

    let (mut app, _w) = test_app!(Duration::from_secs(60));
    open.password = Some("s3cret".into());
    app.redis(open);
    run_main(app, |ctx| {
        let addr = ctx.redis_addr().unwrap();
        let url = format!("redis://127.0.0.1:{}", addr.port());
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_with_timeout(T)
            .unwrap();
        let e = redis::cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut c)
            .unwrap_err();
        assert!(e.to_string().contains("NOAUTH"), "{e}");
        let e = redis::cmd("AUTH")
            .arg("wrong")
            .query::<()>(&mut c)
            .unwrap_err();
        assert!(e.to_string().contains("WRONGPASS"), "{e}");
        let e = redis::cmd("AUTH")
            .arg("alice")
            .arg("s3cret")
            .query::<()>(&mut c)
            .unwrap_err();
        assert!(e.to_string().contains("WRONGPASS"), "{e}");
        let _: () = redis::cmd("AUTH")
            .arg("default")
            .arg("s3cret")
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
        // The password in the URL: the crate authenticates itself; with RESP3, by
        // HELLO 3 AUTH.
        for q in ["", "?protocol=resp3"] {
            let url = format!("redis://default:s3cret@127.0.0.1:{}{q}", addr.port());
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_connection_with_timeout(T)
                .unwrap();
            let v: String = redis::cmd("GET").arg("k").query(&mut c).unwrap();
            assert_eq!(v, "v");
        }
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &addr.port().to_string(),
                "--user",
                "default",
                "--pass",
                "s3cret",
                "--no-auth-warning",
                "GET",
                "k",
            ])
            .output()
            .expect("redis-cli is needed (apt-get install redis-tools)");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
        // HELLO without AUTH is refused before authentication.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"HELLO 3\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"-NOAUTH HELLO must be called"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    });
}

#[test]
fn resp3_pushes_and_resp2_subscribe_mode() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.redis(RedisConfig::unix());
    run_main(app, |ctx| {
        let path = socket(&ctx);
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let read_until = |s: &mut UnixStream, want: &[u8]| {
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            while !got.ends_with(want) {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&b[..n]);
            }
            String::from_utf8_lossy(&got).into_owned()
        };
        // RESP2: subscribe mode allows only the pub/sub commands and PING.
        s.write_all(b"SUBSCRIBE ch\r\nGET x\r\nPING\r\n").unwrap();
        let got = read_until(&mut s, b"$4\r\npong\r\n$0\r\n\r\n");
        assert!(
            got.starts_with("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n-ERR Can't execute 'get'"),
            "{got}"
        );
        ctx.store().publish("ch", "hello").unwrap();
        read_until(
            &mut s,
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n",
        );
        s.write_all(b"UNSUBSCRIBE\r\nGET x\r\n").unwrap();
        read_until(
            &mut s,
            b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n$-1\r\n",
        );
        // RESP3: pushes, and commands go on while subscribed.
        s.write_all(b"HELLO 3\r\n").unwrap();
        read_until(&mut s, b"*0\r\n");
        s.write_all(b"SUBSCRIBE ch\r\nGET x\r\n").unwrap();
        read_until(&mut s, b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n_\r\n");
        ctx.store().publish("ch", &5i64).unwrap();
        read_until(&mut s, b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\n5\r\n");
    });
}

#[test]
fn a_subscriber_that_does_not_read_is_disconnected_and_others_go_on() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    let mut c = RedisConfig::unix();
    c.output_limit = 1 << 20;
    c.max_clients = 4;
    app.redis(c);
    run_main(app, |ctx| {
        let path = socket(&ctx);
        let mut slow = UnixStream::connect(&path).unwrap();
        slow.write_all(b"SUBSCRIBE flood\r\n").unwrap();
        let mut b = [0u8; 64];
        let _ = slow.read(&mut b).unwrap();
        let big = "x".repeat(60_000);
        let store = ctx.store();
        // Publishing never waits for it; past the limit (and the socket's buffers) it
        // is closed, and it no longer counts.
        // (Once closed, it counts no more when its connection's task has cleaned up,
        // which may take a moment on a busy machine.)
        let mut reached_zero = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for i in 0.. {
            if store.publish("flood", big.as_str()).unwrap() == 0 {
                reached_zero = true;
                break;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            if i > 2000 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(reached_zero, "the slow subscriber was never disconnected");
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        let _ = slow.read_to_end(&mut sink);
        // Others are not affected.
        let mut c = unix_client(&path, false);
        let pong: String = redis::cmd("PING").query(&mut c).unwrap();
        assert_eq!(pong, "PONG");
        // The connection limit.
        let _keep: Vec<_> = (0..3).map(|_| unix_client(&path, false)).collect();
        let out = raw(&path, b"PING\r\n");
        assert_eq!(out, b"-ERR max number of clients reached\r\n");
    });
}

#[test]
fn the_journal_covers_writes_over_resp() {
    let dir = std::env::temp_dir().join(format!("yk-redis-journal-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let journal = dir.join("store.journal");
    let _ = std::fs::remove_file(&journal);
    for round in 0..2 {
        let (mut app, _w) = test_app!(Duration::from_secs(60));
        let mut hub = yukicomm::HubConfig::default();
        hub.store.journal = Some(journal.clone());
        hub.store.fsync = yukicomm::Fsync::Always;
        app.hub_config(hub);
        app.redis(RedisConfig::unix());
        run_main(app, move |ctx| {
            let mut c = unix_client(&socket(&ctx), false);
            if round == 0 {
                let _: () = redis::cmd("MSET")
                    .arg("a")
                    .arg("1")
                    .arg("b")
                    .arg("bee")
                    .query(&mut c)
                    .unwrap();
                let _: i64 = redis::cmd("INCRBY").arg("a").arg(9).query(&mut c).unwrap();
                let _: () = redis::cmd("SET")
                    .arg("t")
                    .arg("x")
                    .arg("EX")
                    .arg(1000)
                    .query(&mut c)
                    .unwrap();
                let _: i64 = redis::cmd("DEL").arg("b").query(&mut c).unwrap();
            } else {
                let a: i64 = redis::cmd("GET").arg("a").query(&mut c).unwrap();
                assert_eq!(a, 10);
                let b: Option<String> = redis::cmd("GET").arg("b").query(&mut c).unwrap();
                assert_eq!(b, None);
                let ttl: i64 = redis::cmd("TTL").arg("t").query(&mut c).unwrap();
                assert!(ttl > 900, "{ttl}");
            }
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pipeline_longer_than_a_batch_is_answered_whole() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.redis(RedisConfig::unix());
    run_main(app, |ctx| {
        let path = socket(&ctx);
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Everything sent before anything is read: more commands than are run under
        // one taking of the store's lock, so the endpoint must go on without new input.
        let n = 3000;
        let mut input = Vec::new();
        for i in 0..n {
            let key = format!("pipe:{i}");
            input.extend_from_slice(
                format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n", key.len()).as_bytes(),
            );
        }
        input.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$6\r\npipe:7\r\n");
        s.write_all(&input).unwrap();
        let want = "+OK\r\n".repeat(n) + "$1\r\nv\r\n";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
        assert_eq!(
            ctx.store().get::<String>("pipe:2999").unwrap().as_deref(),
            Some("v")
        );
    });
}
