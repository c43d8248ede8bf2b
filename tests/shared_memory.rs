//! Connections in shared memory (`docs/PROTOCOL.md` §20): a child's connection moves into
//! shared memory by itself and stays on its socket with `YUKICOMM_SHM=0`; a process that
//! corrupts its ring, sends garbage through it or dies in the middle of a frame loses its
//! own connection only, while another child's traffic goes on.
//!
//! The contract suite (`tests/contract.rs`) runs every behaviour over both transports.
//! Linux only: elsewhere connections stay on their sockets.
#![cfg(target_os = "linux")]

mod support;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{child, run_main};
use yukicomm::wire::{encode_frame, Frame, Reply, Request};
use yukicomm::{Context, RestartPolicy};
use yukicomm_link::shm::{self, Region};

const T: Duration = Duration::from_secs(30);
/// Set in a re-executed test binary: report how its connection travels.
const ROLE: &str = "SHM_TEST_ROLE";

/// Whether this process maps a connection's ring region.
fn maps_a_ring() -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .contains("yukicomm-ring")
}

async fn echo(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let active = ctx.active_channel::<String>();
        let passive = ctx.passive_channel::<bool>();
        passive.send_async(maps_a_ring()).await?;
        while let Ok(s) = active.recv_async().await {
            active.send_async(s).await?;
        }
        Ok(())
    })
    .await
}

#[test]
fn a_connection_moves_into_shared_memory_unless_the_child_says_no() {
    if std::env::var_os(ROLE).is_some() {
        // A child started with `YUKICOMM_SHM=0` by the test below.
        let ctx = yukicomm::connect().expect("joins");
        ctx.passive_channel::<bool>().send(maps_a_ring()).unwrap();
        let _ = ctx.active_channel::<String>().recv();
        return;
    }
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("echo", echo);
    let mut socket_only = Command::new(std::env::current_exe().unwrap());
    socket_only
        .args([
            "--exact",
            "a_connection_moves_into_shared_memory_unless_the_child_says_no",
            "--nocapture",
        ])
        .env(ROLE, "1")
        .env(yukicomm::wire::ENV_SHM, "0");
    app.add_command("plain", socket_only)
        .restart(RestartPolicy::Never);
    run_main(app, |ctx| {
        let shm = ctx.get_channel::<bool>("echo-passive").unwrap();
        assert!(
            shm.recv_timeout(T).unwrap(),
            "echo's connection is in shared memory"
        );
        let plain = ctx.get_channel::<bool>("plain-passive").unwrap();
        assert!(
            !plain.recv_timeout(T).unwrap(),
            "with YUKICOMM_SHM=0 the connection stays on its socket"
        );
        let echo = ctx.get_channel::<String>("echo-active").unwrap();
        let big = "x".repeat(3 << 20);
        for s in ["one", "two", big.as_str()] {
            echo.send(s.to_string()).unwrap();
            assert_eq!(echo.recv_timeout(T).unwrap(), s);
        }
    });
}

/// A connection to the hub's socket moved into shared memory by hand.
struct ByHand {
    socket: UnixStream,
    region: Region,
}

impl ByHand {
    fn open(path: &std::path::Path) -> ByHand {
        let mut socket = UnixStream::connect(path).unwrap();
        let mut ask = Vec::new();
        encode_frame(
            &mut ask,
            &Frame::Request {
                id: 7,
                body: Request::SharedMemory { capacity: 1 << 16 },
            },
        );
        socket.write_all(&ask).unwrap();
        socket.set_read_timeout(Some(T)).unwrap();
        let mut fds = Vec::new();
        let mut buf = [0u8; 256];
        let n = shm::recv_fds(socket.as_fd(), &mut buf, &mut fds, 3).unwrap();
        assert_eq!(fds.len(), 3, "the region and the two room counters");
        let mut bytes = bytes::BytesMut::from(&buf[..n]);
        let answer = yukicomm::wire::Decoder::new(1 << 20)
            .decode(&mut bytes)
            .unwrap()
            .expect("the whole answer in one read");
        assert!(
            matches!(
                answer,
                Frame::Reply {
                    id: 7,
                    body: Reply::SharedMemory { capacity: 65536 }
                }
            ),
            "{answer:?}"
        );
        let region = Region::open(fds.remove(0)).unwrap();
        ByHand { socket, region }
    }

    /// Writes `bytes` at the start of ring 1 (this side's ring to the hub) and sets its
    /// tail to `tail`, as a process writing its ring by hand would.
    fn scribble(&self, bytes: &[u8], tail: u64) {
        let len = 4096 + 2 * self.region.capacity();
        // SAFETY: a fresh shared mapping of the whole region, written through raw
        // pointers within its length and unmapped at the end.
        unsafe {
            let p = rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                self.region.fd(),
                0,
            )
            .unwrap()
            .cast::<u8>();
            let data = p.add(4096 + self.region.capacity());
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
            let tail_at = p.add(64 + 256).cast::<std::sync::atomic::AtomicU64>();
            (*tail_at).store(tail, std::sync::atomic::Ordering::Release);
            rustix::mm::munmap(p.cast(), len).unwrap();
        }
        // Wake the hub, whatever flag says.
        (&self.socket).write_all(&[1]).unwrap();
    }

    /// Whether the hub closed this connection within `T`.
    fn closed_by_hub(&mut self) -> bool {
        let deadline = Instant::now() + T;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            match self.socket.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }
}

#[test]
fn a_process_that_breaks_its_ring_loses_only_its_own_connection() {
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("echo", echo);
    run_main(app, |ctx| {
        let shm = ctx.get_channel::<bool>("echo-passive").unwrap();
        assert!(shm.recv_timeout(T).unwrap());
        let echo = ctx.get_channel::<String>("echo-active").unwrap();
        let round_trip = |s: &str| {
            echo.send(s.to_string()).unwrap();
            assert_eq!(echo.recv_timeout(T).unwrap(), s, "echo round trip");
        };
        round_trip("before");

        // A tail far beyond what the ring holds.
        let mut c = ByHand::open(ctx.socket_path());
        c.scribble(&[], u64::MAX / 2);
        assert!(
            c.closed_by_hub(),
            "a tail beyond the ring closes the connection"
        );
        round_trip("after a bad tail");

        // A tail within bounds over garbage: a frame that is not one.
        let mut c = ByHand::open(ctx.socket_path());
        c.scribble(&[0xff; 64], 64);
        assert!(
            c.closed_by_hub(),
            "garbage in the ring closes the connection"
        );
        round_trip("after garbage");

        // Half a hello, then the process goes: its socket closes mid-frame.
        let c = ByHand::open(ctx.socket_path());
        let mut hello = Vec::new();
        encode_frame(
            &mut hello,
            &Frame::Request {
                id: 0,
                body: Request::Hello {
                    version: yukicomm::wire::PROTOCOL_VERSION,
                    name: "nobody".into(),
                    token: "x".into(),
                },
            },
        );
        c.scribble(&hello[..hello.len() / 2], (hello.len() / 2) as u64);
        drop(c);
        round_trip("after a process died mid-frame");

        // A ring that says nothing at all: the hello deadline still closes it.
        let c = ByHand::open(ctx.socket_path());
        round_trip("beside a silent ring");
        drop(c);
    });
}
