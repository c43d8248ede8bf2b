//! Issue 8: no secret in a child's environment. A child the supervisor starts joins
//! through a connection it inherits; nothing another process of the same user can read
//! in `/proc/<pid>/environ` lets it pass for that child, and the processes the child
//! starts inherit neither the connection nor the variables.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{eventually, run_main};
use yukicomm::wire::{encode_control, Frame, Request, PROTOCOL_VERSION};

const T: Duration = Duration::from_secs(20);

/// The child: writes its pid, waits for the test's go-ahead (so that an impostor has
/// all the time it wants), joins, reports what a process it starts inherits, then
/// echoes.
fn act_as_child(dir: &Path) -> ! {
    let pid = std::process::id();
    let tmp = dir.join(format!("pid.{pid}.tmp"));
    std::fs::write(&tmp, pid.to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("pid")).unwrap();
    let go = dir.join(format!("go.{pid}"));
    let start = std::time::Instant::now();
    while !go.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no go-ahead");
        std::thread::sleep(Duration::from_millis(10));
    }
    let fd = std::env::var("YUKICOMM_FD").unwrap_or_default();
    let ctx = yukicomm::connect().expect("joins the hub");
    // A grandchild: is the connection's descriptor open in it, and which yukicomm
    // variables does it see?
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "if [ -n '{fd}' ] && [ -e /proc/$$/fd/{fd} ]; then echo inherited; else echo closed; fi; \
             env | grep '^YUKICOMM_' | cut -d= -f1 | tr '\\n' ' '"
        ))
        .output()
        .unwrap();
    let active = ctx.active_channel::<String>();
    active
        .send(format!(
            "fd={fd} {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ))
        .unwrap();
    for text in active.iter() {
        active.send(format!("echo {}", text.unwrap())).unwrap();
    }
    std::process::exit(0);
}

/// Waits for the child to write its pid, and takes the file away for the next one.
fn child_pid(dir: &Path) -> u32 {
    let file = dir.join("pid");
    let mut pid = None;
    assert!(
        eventually(T, || {
            pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.parse().ok());
            pid.is_some()
        }),
        "the child wrote its pid"
    );
    std::fs::remove_file(&file).unwrap();
    pid.unwrap()
}

/// Whether the hub welcomes a hello for `name` with `token` on its socket (a refusal
/// is answered and the connection closed; a welcome leaves it open).
fn welcomed(socket: &Path, name: &str, token: &str) -> bool {
    let mut hello = Vec::new();
    encode_control(
        &mut hello,
        &Frame::Request {
            id: 0,
            body: Request::Hello {
                version: PROTOCOL_VERSION,
                name: name.into(),
                token: token.into(),
            },
        },
    );
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(&hello).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
            // Still open after a while: welcomed.
            Err(_) => return true,
        }
    }
}

/// Checks a freshly started child from outside, as another process of the same user
/// could, then lets it join and talks to it.
fn check_child(ctx: &yukicomm::MainContext, dir: &Path) {
    let pid = child_pid(dir);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<(String, String)> = environ
        .split(|b| *b == 0)
        .filter_map(|v| {
            let v = String::from_utf8_lossy(v);
            v.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let names: Vec<&str> = vars
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("YUKICOMM_"))
        .collect();
    assert!(
        !names.contains(&"YUKICOMM_TOKEN") && !names.contains(&"YUKICOMM_HUB"),
        "no token or socket in the child's environment: {names:?}"
    );
    // An impostor tries everything it could read.
    let socket = ctx.socket_path();
    for token in std::iter::once("").chain(vars.iter().map(|(_, v)| v.as_str())) {
        assert!(
            !welcomed(socket, "joiner", token),
            "an impostor with {token:?} from the child's environment was refused"
        );
    }
    std::fs::write(dir.join(format!("go.{pid}")), "").unwrap();
    let active = ctx.get_channel::<String>("joiner-active").unwrap();
    let report = active.recv_timeout(T).unwrap();
    assert!(
        report.starts_with("fd=") && report.ends_with("closed") && !report.starts_with("fd= "),
        "the grandchild inherits neither the connection nor a yukicomm variable: {report}"
    );
    active.send("hi".into()).unwrap();
    assert_eq!(active.recv_timeout(T).unwrap(), "echo hi");
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yukicomm-join-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_supervised_child_has_no_secret_to_steal() {
    if let Some(dir) = std::env::var_os("ACT_AS_JOINING_CHILD") {
        act_as_child(Path::new(&dir));
    }
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    let dir = scratch();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test_name!(),
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env("ACT_AS_JOINING_CHILD", &dir);
    app.add_command("joiner", cmd);
    run_main(app, move |ctx| {
        check_child(&ctx, &dir);
        // And again for a restarted child, the moment an impostor used to win.
        ctx.restart_process("joiner").unwrap();
        check_child(&ctx, &dir);
    });
}

/// A process joining through the socket with a token from its environment: once
/// joined, the token is gone from what the kernel shows of its environment.
#[test]
fn a_token_from_the_environment_is_erased_once_read() {
    if std::env::var_os("ACT_AS_TOKEN_JOINER").is_some() {
        let token = std::env::var("YUKICOMM_TOKEN").unwrap();
        let ctx = yukicomm::connect().expect("joins with the token");
        let environ = std::fs::read(format!("/proc/{}/environ", std::process::id())).unwrap();
        let visible = environ.windows(token.len()).any(|w| w == token.as_bytes());
        println!(
            "joined as {}: token visible={visible} variable={}",
            ctx.name(),
            std::env::var_os("YUKICOMM_TOKEN").is_some()
        );
        std::process::exit(0);
    }
    let _w = test_watchdog!(Duration::from_secs(60));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(async {
        let hub = yukicomm_hub::Hub::bind(yukicomm::HubConfig::default()).unwrap();
        let name = yukicomm::wire::ProcessName::new("joiner").unwrap();
        let token = hub.admit_child(&name);
        let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            test_name!(),
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env("ACT_AS_TOKEN_JOINER", "1")
        .env("YUKICOMM_HUB", hub.socket_path())
        .env("YUKICOMM_NAME", "joiner")
        .env("YUKICOMM_TOKEN", &token)
        .env_remove("YUKICOMM_FD");
        let out = tokio::time::timeout(T, cmd.output())
            .await
            .unwrap()
            .unwrap();
        hub.shutdown();
        out
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("joined as joiner: token visible=false variable=false"),
        "{stdout}"
    );
}
