//! The contract suite: what a user relies on between two processes (send and receive,
//! order, close, peer death, credit, byte windows, the registry, the store), written
//! once as a scenario with two roles, `A` and `B`, and run over every pairing of
//! processes that can play them.
//!
//! A test is named `behaviour::pairing`, such as `close::child_main`. A pairing says
//! which process plays each role ([`Pairing`]): the main process, a child, or a remote
//! process (this test binary started on its own, joining the main process over TCP
//! with mutual TLS on 127.0.0.1, as a process on another machine would). A new
//! transport is one more variant there and one more name in [`contract!`]'s list, and
//! every behaviour then runs over it too.
//!
//! Both roles find each other through the registry: `A` registers a control channel,
//! `B` looks it up; the roles then say words to each other on it to keep in step
//! ([`Side::tell`], [`Side::expect`]). A role played by a child reports how it ended on
//! the child's passive channel; the main process fails the test with every role's
//! failure.

mod support;

use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use support::run_main;
use yukicomm::{
    Channel, Context, HubConfig, JoinConfig, MainContext, Node, RecvError, RecvTimeoutError,
    RegistryError, RestartPolicy, SendError, SendTimeoutError, SessionConfig, Store,
};

/// How long one step may wait for the other role.
const T: Duration = Duration::from_secs(20);
/// How long a test may run before its watchdog fails the binary.
const LIMIT: Duration = Duration::from_secs(120);
/// How long the main process waits for a child's report once its own role is done.
const REPORT_WAIT: Duration = Duration::from_secs(90);
/// What a child reports when its role ended well.
const OK: &str = "ok";
/// What a child reports just before it kills itself, as its role asks.
const DIED: &str = "died on purpose";
/// The name of the control channel between the two roles.
const CONTROL: &str = "contract-control";
/// Set in a remote process's environment: the role it plays.
const REMOTE_ROLE: &str = "CONTRACT_REMOTE_ROLE";
/// The remote process's name.
const REMOTE: &str = "r";
/// The remote link's heartbeat and grace period: short, so that a killed remote
/// process is reported quickly.
const HEARTBEAT: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(2);

// --- Pairings and roles --------------------------------------------------------------

/// Which processes play the roles `A` and `B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pairing {
    /// The main process plays `A`, a child plays `B`; the child's connection in shared
    /// memory (the default on one machine).
    MainChild,
    /// As `MainChild`, with the hub offering no shared memory: the connection stays on
    /// its Unix socket.
    MainChildSocket,
    /// A child plays `A`, the main process plays `B`.
    ChildMain,
    /// Two children: `a` plays `A`, `b` plays `B`; their channels go through the hub
    /// with neither end in the main process.
    ChildChild,
    /// As `ChildChild`, both connections on their Unix sockets.
    ChildChildSocket,
    /// The main process plays `A`, a remote process plays `B`.
    MainRemote,
    /// A remote process plays `A`, a child plays `B`.
    RemoteChild,
}

impl Pairing {
    /// Every pairing with the name its tests carry.
    const ALL: [(&'static str, Pairing); 7] = [
        ("main_child", Pairing::MainChild),
        ("main_child_socket", Pairing::MainChildSocket),
        ("child_main", Pairing::ChildMain),
        ("child_child", Pairing::ChildChild),
        ("child_child_socket", Pairing::ChildChildSocket),
        ("main_remote", Pairing::MainRemote),
        ("remote_child", Pairing::RemoteChild),
    ];

    fn named(name: &str) -> Pairing {
        Pairing::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no pairing named '{name}'"))
    }

    /// The process other than main that plays `role` (a child, or the remote process
    /// [`REMOTE`]), or `None` when the main process does.
    fn child(self, role: Role) -> Option<&'static str> {
        match (self, role) {
            (Pairing::MainChild | Pairing::MainChildSocket | Pairing::MainRemote, Role::A)
            | (Pairing::ChildMain, Role::B) => None,
            (Pairing::MainRemote, Role::B) | (Pairing::RemoteChild, Role::A) => Some(REMOTE),
            (_, Role::A) => Some("a"),
            (_, Role::B) => Some("b"),
        }
    }

    /// The role a remote process plays, if any.
    fn remote_role(self) -> Option<Role> {
        [Role::A, Role::B]
            .into_iter()
            .find(|&r| self.child(r) == Some(REMOTE))
    }

    /// Whether the children's connections stay on their sockets.
    fn socket_only(self) -> bool {
        matches!(self, Pairing::MainChildSocket | Pairing::ChildChildSocket)
    }

    /// The role the main process plays, if any.
    fn main_role(self) -> Option<Role> {
        [Role::A, Role::B]
            .into_iter()
            .find(|&r| self.child(r).is_none())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    A,
    B,
}

/// A behaviour: hub settings and the two roles' work.
struct Scenario {
    config: fn() -> HubConfig,
    a: fn(&Side),
    b: fn(&Side),
}

impl Scenario {
    fn body(&self, role: Role) -> fn(&Side) {
        match role {
            Role::A => self.a,
            Role::B => self.b,
        }
    }
}

/// Generates one test per pairing for a behaviour: `contract!(name, SCENARIO)` for every
/// pairing, or `contract!(name, SCENARIO, [pairings])` when a role needs what some
/// process cannot do (the main process cannot be killed by its own test).
macro_rules! contract {
    ($behaviour:ident, $scenario:ident) => {
        contract!(
            $behaviour,
            $scenario,
            [
                main_child,
                main_child_socket,
                child_main,
                child_child,
                child_child_socket,
                main_remote,
                remote_child
            ]
        );
    };
    ($behaviour:ident, $scenario:ident, [$($pairing:ident),+]) => {
        mod $behaviour {
            $(
                #[test]
                fn $pairing() {
                    super::run(
                        crate::test_name!(),
                        super::Pairing::named(stringify!($pairing)),
                        &super::$scenario,
                    );
                }
            )+
        }
    };
}

/// Runs `scenario` with its roles played as `pairing` says.
fn run(test: &'static str, pairing: Pairing, scenario: &'static Scenario) {
    if std::env::var_os(REMOTE_ROLE).is_some() {
        return play_remote(pairing, scenario);
    }
    let (mut app, _w) = support::start(test, LIMIT);
    let mut config = (scenario.config)();
    if pairing.socket_only() {
        config.shared_memory = 0;
    }
    app.hub_config(config);
    let state = support::TempDir::new("contract");
    if pairing.remote_role().is_some() {
        app.listen_remote("127.0.0.1:0")
            .state_dir(state.path().join("hub"))
            .heartbeat(HEARTBEAT)
            .grace(GRACE);
    }
    for role in [Role::A, Role::B] {
        let Some(name) = pairing.child(role).filter(|&n| n != REMOTE) else {
            continue;
        };
        let body = scenario.body(role);
        app.add_target(name, move |ctx: Context| async move {
            let node = ctx.node().clone();
            let report = ctx.passive_channel::<String>();
            let to_main = report.clone();
            let outcome = match check_transport(pairing) {
                Err(e) => Err(e),
                Ok(()) => tokio::task::spawn_blocking(move || {
                    play(pairing, role, node, Some(to_main), body)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the role's thread failed: {e}"))),
            };
            report
                .send_async(outcome.err().unwrap_or_else(|| OK.into()))
                .await?;
            Ok(())
        })
        .restart(RestartPolicy::Never);
    }
    let remote_state = state.path().join("remote");
    run_main(app, move |ctx| {
        let mut remote = pairing
            .remote_role()
            .map(|role| start_remote(test, &ctx, role, &remote_state));
        let reports: Vec<(Role, &str, Channel<String>)> = [Role::A, Role::B]
            .into_iter()
            .filter_map(|role| pairing.child(role).map(|name| (role, name)))
            .map(|(role, name)| {
                let report = ctx
                    .get_channel::<String>(&format!("{name}-passive"))
                    .expect("a child's passive channel");
                (role, name, report)
            })
            .collect();
        let mut failures = Vec::new();
        if let Some(role) = pairing.main_role() {
            if let Err(e) = play(pairing, role, ctx.node().clone(), None, scenario.body(role)) {
                failures.push(format!("role {role:?} in the main process: {e}"));
            }
        }
        for (role, name, report) in reports {
            // After a failure here, wait only briefly for a child that may wait for us.
            let wait = if failures.is_empty() {
                REPORT_WAIT
            } else {
                Duration::from_secs(5)
            };
            let got = report.recv_timeout(wait).map_err(|e| e.to_string());
            match got {
                Ok(s) if s == OK || s == DIED => {}
                Ok(s) => failures.push(format!("role {role:?} in child '{name}': {s}")),
                Err(e) => failures.push(format!("role {role:?} in child '{name}': no report: {e}")),
            }
        }
        if let Some(remote) = remote.as_mut() {
            let _ = remote.kill();
            let _ = remote.wait();
        }
        assert!(failures.is_empty(), "{pairing:?}:\n{}", failures.join("\n"));
    });
}

/// Whether this child's connection is in shared memory (a ring region mapped into
/// this process) exactly when the pairing says it should be.
fn check_transport(pairing: Pairing) -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        // Elsewhere every connection stays on its socket.
        return Ok(());
    }
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let shm = maps.contains("yukicomm-ring");
    if shm != pairing.socket_only() {
        Ok(())
    } else {
        Err(format!(
            "the connection is {} shared memory, the pairing wants it {}",
            if shm { "in" } else { "not in" },
            if shm { "on its socket" } else { "there" },
        ))
    }
}

/// Starts this test binary again as the remote process playing `role`, with a join
/// token in its environment.
fn start_remote(
    test: &str,
    ctx: &MainContext,
    role: Role,
    state: &std::path::Path,
) -> std::process::Child {
    let token = ctx
        .join_token(REMOTE, Duration::from_secs(60))
        .expect("a join token");
    let addr = ctx.remote_addr().expect("listening for remote processes");
    std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(REMOTE_ROLE, format!("{role:?}"))
        .env("YUKICOMM_HUB", format!("yk://{addr}"))
        .env("YUKICOMM_JOIN", token)
        .env("YUKICOMM_STATE_DIR", state)
        .spawn()
        .expect("starts the remote process")
}

/// In the remote process: joins, plays the role the environment names, and reports on
/// this process's passive channel as a child does.
fn play_remote(pairing: Pairing, scenario: &'static Scenario) {
    let role = match std::env::var(REMOTE_ROLE).as_deref() {
        Ok("A") => Role::A,
        _ => Role::B,
    };
    let url = std::env::var("YUKICOMM_HUB").expect("the hub's address");
    let token = std::env::var("YUKICOMM_JOIN").expect("a join token");
    let config = JoinConfig {
        state_dir: std::env::var_os("YUKICOMM_STATE_DIR")
            .expect("a state directory")
            .into(),
        session: SessionConfig {
            heartbeat: HEARTBEAT,
            grace: GRACE,
            ..SessionConfig::default()
        },
        ..JoinConfig::default()
    };
    let ctx = yukicomm::join_with(&url, &token, config).expect("joins the main process");
    let report = ctx.passive_channel::<String>();
    let outcome = play(
        pairing,
        role,
        ctx.node().clone(),
        Some(report.clone()),
        scenario.body(role),
    );
    report
        .send(outcome.err().unwrap_or_else(|| OK.into()))
        .expect("reports");
    ctx.flush(T).expect("the report reaches the hub");
}

/// Plays `role`: joins the other role on the control channel, runs `body`, then waits
/// for the other role to end too (leaving earlier would drop this process's ends, which
/// the other role would see). Returns the panic message, if any.
fn play(
    pairing: Pairing,
    role: Role,
    node: Node,
    report: Option<Channel<String>>,
    body: fn(&Side),
) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        let control = match role {
            Role::A => {
                let control = node
                    .channel::<String>()
                    .expect("creates the control channel");
                node.set_channel(CONTROL, &control)
                    .expect("registers the control channel");
                control
            }
            Role::B => find(&node, CONTROL),
        };
        let side = Side {
            role,
            pairing,
            node,
            control,
            report,
        };
        match role {
            Role::A => side.expect("hello"),
            Role::B => side.tell("hello"),
        }
        body(&side);
        let _ = side.control.send("end".into());
        match side.control.recv_timeout(T) {
            Ok(word) if word == "end" => {}
            // The other role's process is gone; the main process learns why from its
            // report.
            Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. })) => {}
            other => panic!("waiting for the other role to end: {other:?}"),
        }
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// Looks `name` up until it is registered (the other role may not have got that far).
fn find<V: Serialize + DeserializeOwned>(node: &Node, name: &str) -> Channel<V> {
    let deadline = Instant::now() + T;
    loop {
        match node.get_channel::<V>(name) {
            Ok(ch) => return ch,
            Err(RegistryError::Unknown { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("cannot find channel '{name}': {e}"),
        }
    }
}

/// What a role's body gets: its process's connection, and the control channel to the
/// other role.
struct Side {
    role: Role,
    pairing: Pairing,
    node: Node,
    control: Channel<String>,
    /// The channel on which a child reports to the main process; `None` in the main
    /// process.
    report: Option<Channel<String>>,
}

impl Side {
    /// A channel between the two roles, registered under `name` by `A` and found by `B`;
    /// both hold their ends when this returns. Both roles call it, in the same order.
    fn open<V: Serialize + DeserializeOwned>(&self, name: &str) -> Channel<V> {
        match self.role {
            Role::A => {
                let ch = self.node.channel::<V>().expect("creates a channel");
                self.node.set_channel(name, &ch).expect("registers it");
                self.expect(&format!("holding {name}"));
                ch
            }
            Role::B => {
                let ch = find(&self.node, name);
                self.tell(&format!("holding {name}"));
                ch
            }
        }
    }

    /// Says `word` to the other role.
    fn tell(&self, word: &str) {
        self.control
            .send(word.into())
            .unwrap_or_else(|e| panic!("{:?} cannot say {word:?}: {e}", self.role));
    }

    /// The next word of the other role.
    fn hear(&self) -> String {
        self.control
            .recv_timeout(T)
            .unwrap_or_else(|e| panic!("{:?} heard nothing from the other role: {e}", self.role))
    }

    /// Waits for the other role to say `word`.
    fn expect(&self, word: &str) {
        assert_eq!(self.hear(), word, "{:?} out of step", self.role);
    }

    /// Waits until both roles got here.
    fn sync(&self, label: &str) {
        self.tell(label);
        self.expect(label);
    }

    fn store(&self) -> Store {
        self.node.store()
    }

    /// This role's name and the other's, for keys and messages.
    fn names(&self) -> (&'static str, &'static str) {
        match self.role {
            Role::A => ("a", "b"),
            Role::B => ("b", "a"),
        }
    }

    /// Ends this role's process with SIGKILL, after what it sent is written out.
    fn die(&self) -> ! {
        let report = self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "in {:?} the main process plays {:?}, which cannot die",
                self.pairing, self.role
            )
        });
        report.send(DIED.into()).expect("reports");
        self.node.flush(T).expect("what was sent is written out");
        // SAFETY: plain syscall on this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        loop {
            std::thread::park();
        }
    }
}

/// Asserts that nothing more arrives on `ch` for a moment: nothing was duplicated.
fn nothing_more<V: Serialize + DeserializeOwned + Debug>(ch: &Channel<V>) {
    match ch.recv_timeout(Duration::from_millis(200)) {
        Err(RecvTimeoutError::Timeout { .. }) => {}
        other => panic!("expected nothing more on '{}', got {other:?}", ch.name()),
    }
}

fn recv<V: Serialize + DeserializeOwned>(ch: &Channel<V>) -> V {
    ch.recv_timeout(T)
        .unwrap_or_else(|e| panic!("receiving on '{}': {e}", ch.name()))
}

// --- Send and receive in both directions ----------------------------------------------

/// Both roles send on a registered channel and receive what the other sent, then `A`
/// hands `B` one end of a new channel inside a message and they talk over it.
const SEND_AND_RECEIVE: Scenario = Scenario {
    config: HubConfig::default,
    a: send_and_receive,
    b: send_and_receive,
};

fn send_and_receive(side: &Side) {
    let (me, other) = side.names();
    let words = side.open::<String>("words");
    for i in 0..3 {
        words.send(format!("{i} from {me}")).unwrap();
    }
    for i in 0..3 {
        assert_eq!(recv(&words), format!("{i} from {other}"));
    }

    let carrier = side.open::<Channel<u64>>("carrier");
    match side.role {
        Role::A => {
            let (mine, theirs) = side.node.channel_pair::<u64>().unwrap();
            carrier.send(theirs).unwrap();
            mine.send(7).unwrap();
            assert_eq!(recv(&mine), 8, "the answer on the carried channel");
            // Nothing else comes: `B` let go of its end after answering.
            match mine.recv_timeout(T) {
                Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. })) => {}
                other => panic!("after the answer: {other:?}"),
            }
        }
        Role::B => {
            let got = recv(&carrier);
            assert_eq!(recv(&got), 7, "a message on the carried channel");
            got.send(8).unwrap();
        }
    }
    side.sync("answered");
    // Each message was delivered once, and a process never receives its own.
    nothing_more(&words);
    // Neither lets go of its end while the other still checks.
    side.sync("checked");
}

contract!(send_and_receive, SEND_AND_RECEIVE);

// --- Order per sender under a stream --------------------------------------------------

/// Messages each role streams to the other, both at once.
const STREAM: u32 = 5000;

const ORDER: Scenario = Scenario {
    config: HubConfig::default,
    a: order,
    b: order,
};

fn order(side: &Side) {
    let ch = side.open::<u32>("stream");
    let out = ch.clone();
    let sender = std::thread::spawn(move || {
        for n in 0..STREAM {
            out.send(n).unwrap();
        }
    });
    for n in 0..STREAM {
        assert_eq!(recv(&ch), n, "out of order");
    }
    sender.join().expect("the sender thread");
    side.sync("received all");
    nothing_more(&ch);
    // Neither lets go of its end while the other still checks.
    side.sync("checked");
}

contract!(order, ORDER);

// --- Close ----------------------------------------------------------------------------

/// `A` sends three messages and closes; `B` starts receiving only afterwards, gets the
/// three, then `Closed`; sends fail with `Closed` on both sides.
const CLOSE: Scenario = Scenario {
    config: HubConfig::default,
    a: close_a,
    b: close_b,
};

fn close_a(side: &Side) {
    let ch = side.open::<u32>("closing");
    for n in 0..3 {
        ch.send(n).unwrap();
    }
    ch.close();
    assert!(ch.is_closed());
    match ch.send(3) {
        Err(SendError::Closed { channel, value }) => {
            assert_eq!((channel.as_str(), value), ("closing", 3))
        }
        other => panic!("send after close: {other:?}"),
    }
    assert!(matches!(
        ch.recv_timeout(T),
        Err(RecvTimeoutError::Recv(RecvError::Closed { .. }))
    ));
    side.tell("closed");
    side.expect("seen");
}

fn close_b(side: &Side) {
    let ch = side.open::<u32>("closing");
    side.expect("closed");
    for n in 0..3 {
        assert_eq!(recv(&ch), n, "what was sent before the close");
    }
    match ch.recv_timeout(T) {
        Err(RecvTimeoutError::Recv(RecvError::Closed { channel })) => {
            assert_eq!(channel, "closing")
        }
        other => panic!("expected closed, got {other:?}"),
    }
    assert!(ch.is_closed());
    match ch.send(9) {
        Err(SendError::Closed { value: 9, .. }) => {}
        other => panic!("send on a closed channel: {other:?}"),
    }
    side.tell("seen");
}

contract!(close, CLOSE);

// --- Peer death -----------------------------------------------------------------------

/// Messages `B` sends just before it dies.
const BEFORE_DEATH: u64 = 200;

/// `B` sends, has it written out, and is killed with SIGKILL; `A` is blocked receiving
/// on another channel and wakes with `Disconnected`; then it receives everything `B`
/// sent, and `Disconnected` after it.
const PEER_DEATH: Scenario = Scenario {
    config: HubConfig::default,
    a: peer_death_a,
    b: peer_death_b,
};

fn peer_death_a(side: &Side) {
    let data = side.open::<u64>("data");
    let idle = side.open::<u64>("idle");
    side.expect("sent");
    side.tell("die");
    match idle.recv_timeout(T) {
        Err(RecvTimeoutError::Recv(RecvError::Disconnected { channel })) => {
            assert_eq!(channel, "idle")
        }
        other => panic!("a blocked receive when the peer died: {other:?}"),
    }
    for n in 0..BEFORE_DEATH {
        assert_eq!(recv(&data), n, "what the peer sent before it died");
    }
    match data.recv_timeout(T) {
        Err(RecvTimeoutError::Recv(RecvError::Disconnected { channel })) => {
            assert_eq!(channel, "data")
        }
        other => panic!("after the dead peer's messages: {other:?}"),
    }
}

fn peer_death_b(side: &Side) {
    let data = side.open::<u64>("data");
    let _idle = side.open::<u64>("idle");
    for n in 0..BEFORE_DEATH {
        data.send(n).unwrap();
    }
    side.node.flush(T).expect("written out");
    side.tell("sent");
    side.expect("die");
    side.die();
}

// The main process cannot play `B`: its own test cannot kill it.
contract!(
    peer_death,
    PEER_DEATH,
    [
        main_child,
        main_child_socket,
        child_child,
        child_child_socket,
        main_remote,
        remote_child
    ]
);

// --- Credit ---------------------------------------------------------------------------

const WINDOW: u32 = 4;
/// Messages `A` sends in all, most of them waiting for credit.
const THROUGH_WINDOW: u32 = 40;

/// A window of a few messages: `A` fills it while `B` does not read; `try_send` is
/// `Full` and hands the value back, a send with a deadline times out; a blocked send
/// goes on once `B` reads, and `B` gets everything once, in order.
const CREDIT: Scenario = Scenario {
    config: || HubConfig {
        window: WINDOW,
        ..HubConfig::default()
    },
    a: credit_a,
    b: credit_b,
};

fn credit_a(side: &Side) {
    let ch = side.open::<u32>("credit");
    for n in 0..WINDOW {
        ch.send(n).unwrap();
    }
    match ch.try_send(WINDOW) {
        Err(e @ SendError::Full { .. }) => {
            assert!(e.to_string().contains("'credit'"), "{e}");
            assert_eq!(e.into_inner(), WINDOW, "the value comes back");
        }
        other => panic!("try_send with the window used up: {other:?}"),
    }
    match ch.send_timeout(WINDOW, Duration::from_millis(100)) {
        Err(SendTimeoutError::Timeout { value, .. }) => assert_eq!(value, WINDOW),
        other => panic!("send_timeout with the window used up: {other:?}"),
    }
    let out = ch.clone();
    let sender = std::thread::spawn(move || {
        for n in WINDOW..THROUGH_WINDOW {
            out.send(n).unwrap();
        }
    });
    side.tell("read");
    sender.join().expect("the blocked sender goes on");
    side.expect("all read");
}

fn credit_b(side: &Side) {
    let ch = side.open::<u32>("credit");
    side.expect("read");
    for n in 0..THROUGH_WINDOW {
        assert_eq!(recv(&ch), n);
    }
    nothing_more(&ch);
    side.tell("all read");
}

contract!(credit, CREDIT);

// --- Byte windows ---------------------------------------------------------------------

const WINDOW_BYTES: u64 = 1 << 20;
const PAYLOAD: usize = 256 << 10;
/// The most bytes a message body adds to its payload (a string's header).
const BODY_OVERHEAD: u64 = 16;
/// Messages `A` sends after the window was found full.
const AFTER_FULL: usize = 8;

/// A payload that says which it is.
fn payload(i: usize) -> String {
    let mut s = format!("{i:08}");
    s.extend(std::iter::repeat_n(
        char::from(b'a' + (i % 26) as u8),
        PAYLOAD - 8,
    ));
    s
}

/// A small byte window and large messages: `A` sends while `B` does not read, until
/// `try_send` says `Full`, after about `window_bytes`; once `B` reads, everything
/// arrives.
const BYTE_WINDOW: Scenario = Scenario {
    config: || HubConfig {
        window_bytes: WINDOW_BYTES,
        ..HubConfig::default()
    },
    a: byte_window_a,
    b: byte_window_b,
};

fn byte_window_a(side: &Side) {
    let ch = side.open::<String>("big");
    let mut sent = 0;
    loop {
        assert!(
            sent < 64,
            "never full after {sent} messages of {PAYLOAD} bytes"
        );
        match ch.try_send(payload(sent)) {
            Ok(()) => sent += 1,
            Err(SendError::Full { value, .. }) => {
                assert!(value == payload(sent), "the value comes back");
                break;
            }
            Err(e) => panic!("try_send: {e}"),
        }
    }
    // A process may send while fewer than `window_bytes` it sent are undelivered: the
    // last one accepted started below the window, and the window is used up after it.
    let accepted = sent as u64;
    assert!(
        (accepted - 1) * (PAYLOAD as u64) < WINDOW_BYTES
            && accepted * (PAYLOAD as u64 + BODY_OVERHEAD) >= WINDOW_BYTES,
        "{accepted} messages of {PAYLOAD} bytes accepted in a window of {WINDOW_BYTES}"
    );
    let out = ch.clone();
    let sender = std::thread::spawn(move || {
        for i in sent..sent + AFTER_FULL {
            out.send(payload(i)).unwrap();
        }
    });
    side.tell(&format!("read {}", sent + AFTER_FULL));
    sender.join().expect("the sender goes on");
    side.expect("all read");
}

fn byte_window_b(side: &Side) {
    let ch = side.open::<String>("big");
    let word = side.hear();
    let total: usize = word
        .strip_prefix("read ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected word {word:?}"));
    for i in 0..total {
        let got = recv(&ch);
        assert!(got == payload(i), "message {i} is not what was sent");
    }
    nothing_more(&ch);
    side.tell("all read");
}

contract!(byte_window, BYTE_WINDOW);

// --- The registry ---------------------------------------------------------------------

/// Each role registers a channel of its own type; both list both, a lookup with the
/// wrong type is an error naming both types, and each talks over the other's channel.
const REGISTRY: Scenario = Scenario {
    config: HubConfig::default,
    a: |side| registry::<u32, String>(side, 42, "to b".into()),
    b: |side| registry::<String, u32>(side, "to b".into(), 42),
};

fn registry<Mine, Theirs>(side: &Side, expected: Mine, to_them: Theirs)
where
    Mine: Serialize + DeserializeOwned + PartialEq + Debug,
    Theirs: Serialize + DeserializeOwned + Debug,
{
    let (me, other) = side.names();
    let mine_name = format!("made-by-{me}");
    let their_name = format!("made-by-{other}");
    let mine = side.node.channel::<Mine>().unwrap();
    side.node.set_channel(&mine_name, &mine).unwrap();
    side.sync("registered");

    let listed = side.node.get_channels().unwrap();
    for (name, type_name) in [
        (&mine_name, std::any::type_name::<Mine>()),
        (&their_name, std::any::type_name::<Theirs>()),
    ] {
        let info = listed
            .iter()
            .find(|c| &c.name == name)
            .unwrap_or_else(|| panic!("'{name}' is not listed: {listed:?}"));
        assert_eq!(info.type_name, type_name);
    }

    match side.node.get_channel::<Mine>(&their_name) {
        Err(e @ RegistryError::TypeMismatch { .. }) => {
            let text = e.to_string();
            let RegistryError::TypeMismatch {
                name,
                expected,
                found,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(name, their_name);
            assert_eq!(expected, std::any::type_name::<Mine>());
            assert_eq!(found, std::any::type_name::<Theirs>());
            assert!(
                text.contains(&their_name) && text.contains(&expected) && text.contains(&found),
                "{text}"
            );
        }
        other => panic!(
            "a lookup with the wrong type: {:?}",
            other.map(|c| c.name())
        ),
    }
    let nobody = side.node.get_channel::<Mine>("made-by-nobody");
    assert_eq!(
        nobody.map(|c| c.name()),
        Err(RegistryError::Unknown {
            name: "made-by-nobody".into()
        })
    );
    let spare = side.node.channel::<Mine>().unwrap();
    assert_eq!(
        side.node.set_channel(&their_name, &spare),
        Err(RegistryError::NameTaken {
            name: their_name.clone()
        })
    );

    let theirs = side.node.get_channel::<Theirs>(&their_name).unwrap();
    side.sync("looked up");
    theirs.send(to_them).unwrap();
    assert_eq!(
        recv(&mine),
        expected,
        "over the channel this role registered"
    );
    side.sync("talked");
}

contract!(registry, REGISTRY);

// --- The store ------------------------------------------------------------------------

/// Increments and swaps each role makes.
const STORE_OPS: u64 = 100;

/// Both roles use the same keys: each reads what the other set, both increment one
/// counter and swap one value at once without losing an update, and each publishes to
/// a topic the other subscribed to.
const STORE: Scenario = Scenario {
    config: HubConfig::default,
    a: store_ops,
    b: store_ops,
};

fn store_ops(side: &Side) {
    let (me, other) = side.names();
    let store = side.store();

    // set / get
    store
        .set(&format!("set-by-{me}"), &format!("value of {me}"))
        .unwrap();
    side.sync("set");
    assert_eq!(
        store.get::<String>(&format!("set-by-{other}")).unwrap(),
        Some(format!("value of {other}"))
    );

    // incr: every increment counts once.
    let counts = side.open::<Vec<i64>>("counts");
    let mine: Vec<i64> = (0..STORE_OPS)
        .map(|_| store.incr("counter", 1).unwrap())
        .collect();
    assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
    counts.send(mine.clone()).unwrap();
    let mut all = recv(&counts);
    all.extend(mine);
    all.sort_unstable();
    assert!(
        all.iter().copied().eq(1..=2 * STORE_OPS as i64),
        "each increment returns its own count: {all:?}"
    );
    side.sync("counted");
    assert_eq!(
        store.get::<i64>("counter").unwrap(),
        Some(2 * STORE_OPS as i64)
    );

    // compare_and_swap: each role adds one STORE_OPS times through a swap loop.
    let mut swapped = 0;
    while swapped < STORE_OPS {
        let seen: Option<u64> = store.get("swapped").unwrap();
        let next = seen.unwrap_or(0) + 1;
        if store
            .compare_and_swap("swapped", seen.as_ref(), Some(&next))
            .unwrap()
        {
            swapped += 1;
        }
    }
    side.sync("swapped");
    assert_eq!(store.get::<u64>("swapped").unwrap(), Some(2 * STORE_OPS));

    // publish / subscribe
    let subscriber = store.subscriber::<String>(&format!("to-{me}")).unwrap();
    side.sync("subscribed");
    for i in 0..3 {
        let given = store
            .publish(&format!("to-{other}"), &format!("{i} from {me}"))
            .unwrap();
        assert_eq!(given, 1, "one subscription matches 'to-{other}'");
    }
    for i in 0..3 {
        let got = subscriber.recv_timeout(T).unwrap();
        assert_eq!(got.topic, format!("to-{me}"));
        assert_eq!(got.into_inner(), format!("{i} from {other}"));
    }
    side.sync("published");
}

contract!(store, STORE);
