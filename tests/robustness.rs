//! Bad input from other processes: oversized frames, random bytes, bad hellos and
//! oversized messages close or refuse only what is at fault; the hub keeps serving
//! everyone else.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use support::{child, run_main};
use yukicomm::wire::{encode_control, Frame, Request, PROTOCOL_VERSION};
use yukicomm::{Context, SendError};

const T: Duration = Duration::from_secs(20);

async fn echo(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let active = ctx.active_channel::<Vec<u8>>();
        while let Ok(v) = active.recv_async().await {
            active.send_async(v).await?;
        }
        Ok(())
    })
    .await
}

/// Reads until the hub closes the connection; true if it did within the deadline.
fn closed_by_hub(mut s: UnixStream) -> bool {
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn bad_peers_are_cut_off_and_everyone_else_is_served() {
    let (mut app, _w) = test_app!(Duration::from_secs(90));
    app.add_target("echo", echo);
    run_main(app, |ctx| {
        let echo = ctx.get_channel::<Vec<u8>>("echo-active").unwrap();
        let round_trip = |n: u8| {
            echo.send(vec![n; 16]).unwrap();
            assert_eq!(echo.recv_timeout(T).unwrap(), vec![n; 16]);
        };
        round_trip(1);
        let path = ctx.socket_path().to_path_buf();

        // A frame announcing 2 GiB.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&[0xff, 0xff, 0xff, 0x7f, 3, 0, 0, 0, 0])
            .unwrap();
        assert!(closed_by_hub(s), "an oversized frame closes the connection");
        round_trip(2);

        // Random bytes.
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let mut s = UnixStream::connect(&path).unwrap();
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = s.write_all(&noise);
        assert!(closed_by_hub(s), "random bytes close the connection");
        round_trip(3);

        // A well-formed hello with a wrong token is answered, then closed.
        let mut hello = Vec::new();
        encode_control(
            &mut hello,
            &Frame::Request {
                id: 0,
                body: Request::Hello {
                    version: PROTOCOL_VERSION,
                    name: "echo".into(),
                    token: "guess".into(),
                },
            },
        );
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&hello).unwrap();
        assert!(closed_by_hub(s), "a bad hello closes the connection");
        round_trip(4);

        // A peer that connects and says nothing does not stop anyone else.
        let _silent = UnixStream::connect(&path).unwrap();
        round_trip(5);

        // A message larger than the hub's limit is refused at the sender, whole.
        let big = vec![0u8; 17 * 1024 * 1024];
        match echo.send(big) {
            Err(SendError::TooLarge {
                channel,
                max,
                value,
                ..
            }) => {
                assert_eq!(channel, "echo-active");
                assert_eq!(max, 16 * 1024 * 1024);
                assert_eq!(value.len(), 17 * 1024 * 1024);
            }
            other => panic!(
                "expected too large, got {:?}",
                other.map_err(|e| e.to_string())
            ),
        }
        round_trip(6);
    });
}

#[test]
fn an_oversized_message_from_a_child_is_refused_and_the_child_goes_on() {
    let (mut app, _w) = test_app!(Duration::from_secs(90));
    app.add_target("big", |ctx: Context| async move {
        child(async move {
            let active = ctx.active_channel::<String>();
            let err = active
                .send_async("x".repeat(17 * 1024 * 1024))
                .await
                .unwrap_err();
            active.send_async(format!("refused: {err}")).await?;
            let _ = active.recv_async().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let active = ctx.get_channel::<String>("big-active").unwrap();
        let report = active.recv_timeout(T).unwrap();
        assert!(
            report.starts_with("refused: channel 'big-active'") && report.contains("exceeds"),
            "{report}"
        );
        active.send(String::new()).unwrap();
    });
}
