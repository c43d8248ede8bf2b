//! The router as a state machine: frames in, frames out. No sockets, no threads.

use super::*;
use yukicomm_wire::ProcessName;

/// A router with children `a` and `b` connected as connections 1 and 2.
struct Harness {
    r: Router,
    out: Vec<Out>,
}

const A: ConnId = ConnId(1);
const B: ConnId = ConnId(2);
const C: ConnId = ConnId(3);

impl Harness {
    fn new(window: u32, window_bytes: u64) -> Harness {
        let mut h = Harness {
            r: Router::new(window, window_bytes),
            out: Vec::new(),
        };
        for (conn, name) in [(A, "a"), (B, "b"), (C, "c")] {
            h.r.add_child(&ProcessName::new(name).unwrap(), format!("token-{name}"));
            h.r.hello(
                conn,
                yukicomm_wire::PROTOCOL_VERSION,
                name,
                &format!("token-{name}"),
                1 << 20,
                &mut h.out,
            )
            .expect("hello accepted");
        }
        h.take();
        h
    }

    /// Feeds one frame from `conn`; returns the protocol error, if any.
    fn feed(&mut self, conn: ConnId, frame: Frame) -> Result<(), String> {
        self.r.frame(conn, frame, &mut self.out)
    }

    /// What the router produced since the last call.
    fn take(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    fn request(&mut self, conn: ConnId, body: Request) -> Reply {
        self.feed(conn, Frame::Request { id: 9, body }).unwrap();
        let mut reply = None;
        self.out.retain(|(c, f)| match f {
            Frame::Reply { id: 9, body } if *c == conn && reply.is_none() => {
                reply = Some(body.clone());
                false
            }
            _ => true,
        });
        reply.expect("a reply")
    }

    /// A channel created by `creator` (end A) and registered as `name`; `other` looks it
    /// up (end B).
    fn channel(&mut self, creator: ConnId, name: &str, other: ConnId) -> ChanId {
        let Reply::Created { chan } = self.request(
            creator,
            Request::Create {
                type_name: "t".into(),
                pair: false,
            },
        ) else {
            panic!("not created")
        };
        assert_eq!(
            self.request(
                creator,
                Request::Register {
                    name: name.into(),
                    chan
                }
            ),
            Reply::Done
        );
        let found = self.request(
            other,
            Request::Lookup {
                name: name.into(),
                type_name: "t".into(),
            },
        );
        assert!(
            matches!(found, Reply::Found { end: End::B, .. }),
            "{found:?}"
        );
        self.take();
        chan
    }

    fn attach(&mut self, conn: ConnId, chan: ChanId, end: End, credit: u32, bytes: u64) {
        self.feed(
            conn,
            Frame::Notice(Notice::Attach {
                chan,
                end,
                credit,
                bytes,
            }),
        )
        .unwrap();
    }

    fn send(&mut self, conn: ConnId, chan: ChanId, to: End, body: &[u8]) -> Result<(), String> {
        self.feed(
            conn,
            Frame::Msg(Msg {
                chan,
                to,
                carried: Vec::new(),
                body: Bytes::copy_from_slice(body),
            }),
        )
    }
}

/// The bodies of the messages delivered to `conn` in `out`.
fn delivered(out: &[Out], conn: ConnId) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|(c, f)| match f {
            Frame::Msg(m) if *c == conn => Some(m.body.to_vec()),
            _ => None,
        })
        .collect()
}

/// The credit returned to `conn` in `out`: messages and bytes.
fn credited(out: &[Out], conn: ConnId) -> (u32, u64) {
    out.iter()
        .filter_map(|(c, f)| match f {
            Frame::Credit { n, bytes, .. } if *c == conn => Some((*n, *bytes)),
            _ => None,
        })
        .fold((0, 0), |(n, b), (n2, b2)| (n + n2, b + b2))
}

fn events(out: &[Out], conn: ConnId) -> Vec<Event> {
    out.iter()
        .filter_map(|(c, f)| match f {
            Frame::Event(e) if *c == conn => Some(e.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_wait_for_receiver_credit_and_flow_as_it_returns() {
    let mut h = Harness::new(8, 1 << 20);
    let ch = h.channel(A, "c", B);
    for i in 0..5u8 {
        h.send(A, ch, End::B, &[i]).unwrap();
    }
    assert!(delivered(&h.take(), B).is_empty(), "nobody receives yet");
    h.attach(B, ch, End::B, 2, 1 << 20);
    assert_eq!(delivered(&h.take(), B), vec![vec![0], vec![1]]);
    h.feed(
        B,
        Frame::Credit {
            chan: ch,
            end: End::B,
            n: 2,
            bytes: 2,
        },
    )
    .unwrap();
    let out = h.take();
    assert_eq!(delivered(&out, B), vec![vec![2], vec![3]]);
    // Credit goes back to the sender in batches of half a window.
    assert_eq!(credited(&out, A), (4, 4));
}

#[test]
fn a_sender_past_its_window_breaks_the_protocol() {
    let mut h = Harness::new(4, 1 << 20);
    let ch = h.channel(A, "c", B);
    for _ in 0..4 {
        h.send(A, ch, End::B, b"x").unwrap();
    }
    assert!(h.send(A, ch, End::B, b"x").is_err());
}

#[test]
fn a_sender_past_its_byte_window_breaks_the_protocol() {
    let mut h = Harness::new(100, 1000);
    let ch = h.channel(A, "c", B);
    // Sent while fewer than 1000 bytes were in flight: the last takes it past.
    h.send(A, ch, End::B, &[0; 600]).unwrap();
    h.send(A, ch, End::B, &[0; 600]).unwrap();
    let err = h.send(A, ch, End::B, &[0; 1]).unwrap_err();
    assert!(err.contains("1200 bytes in flight"), "{err}");
}

#[test]
fn byte_credit_returns_to_the_sender_in_half_windows() {
    let mut h = Harness::new(100, 1000);
    let ch = h.channel(A, "c", B);
    h.attach(B, ch, End::B, 100, 1000);
    h.send(A, ch, End::B, &[0; 400]).unwrap();
    assert_eq!(credited(&h.take(), A), (0, 0));
    h.send(A, ch, End::B, &[0; 400]).unwrap();
    assert_eq!(credited(&h.take(), A), (2, 800));
    // Credited bytes are no longer in flight: the sender may go on.
    h.send(A, ch, End::B, &[0; 900]).unwrap();
}

#[test]
fn a_receiver_gets_bytes_while_its_byte_credit_is_positive() {
    let mut h = Harness::new(100, 1 << 20);
    let ch = h.channel(A, "c", B);
    h.attach(B, ch, End::B, 100, 100);
    for i in 0..3u8 {
        h.send(A, ch, End::B, &[i; 60]).unwrap();
    }
    // 100 bytes of credit: the first takes 60, the second goes below zero.
    assert_eq!(delivered(&h.take(), B).len(), 2);
    h.feed(
        B,
        Frame::Credit {
            chan: ch,
            end: End::B,
            n: 1,
            bytes: 60,
        },
    )
    .unwrap();
    // -20 + 60 > 0: the third goes.
    assert_eq!(delivered(&h.take(), B), vec![vec![2; 60]]);
}

#[test]
fn credit_beyond_a_window_is_capped() {
    let mut h = Harness::new(2, 1 << 20);
    let ch = h.channel(A, "c", B);
    h.attach(B, ch, End::B, 0, 1 << 20);
    h.feed(
        B,
        Frame::Credit {
            chan: ch,
            end: End::B,
            n: u32::MAX,
            bytes: u64::MAX,
        },
    )
    .unwrap();
    // A's window lets it send 2, then it needs credit back: the receiver never holds
    // more than 2 undelivered-to-it messages' worth of grant.
    for _ in 0..2 {
        h.send(A, ch, End::B, b"x").unwrap();
    }
    let out = h.take();
    assert_eq!(delivered(&out, B).len(), 2);
    assert_eq!(credited(&out, A), (2, 2));
    for _ in 0..2 {
        h.send(A, ch, End::B, b"y").unwrap();
    }
    assert!(delivered(&h.take(), B).is_empty(), "credit was capped at 2");
}

#[test]
fn receivers_take_turns() {
    let mut h = Harness::new(100, 1 << 20);
    let ch = h.channel(A, "c", B);
    let found = h.request(
        C,
        Request::Lookup {
            name: "c".into(),
            type_name: "t".into(),
        },
    );
    assert!(matches!(found, Reply::Found { end: End::B, .. }));
    h.attach(B, ch, End::B, 100, 1 << 20);
    h.attach(C, ch, End::B, 100, 1 << 20);
    h.take();
    for i in 0..4u8 {
        h.send(A, ch, End::B, &[i]).unwrap();
    }
    let out = h.take();
    assert_eq!(delivered(&out, B), vec![vec![0], vec![2]]);
    assert_eq!(delivered(&out, C), vec![vec![1], vec![3]]);
}

#[test]
fn a_departed_senders_messages_arrive_before_the_last_word_of_its_departure() {
    let mut h = Harness::new(100, 1 << 20);
    let ch = h.channel(A, "c", B);
    h.send(A, ch, End::B, b"1").unwrap();
    h.send(A, ch, End::B, b"2").unwrap();
    h.r.drop_conn(A, &mut h.out);
    let out = h.take();
    assert_eq!(
        events(&out, B),
        vec![Event::PeerGone {
            chan: ch,
            end: End::A,
            queued: true
        }]
    );
    h.attach(B, ch, End::B, 100, 1 << 20);
    let out = h.take();
    assert_eq!(delivered(&out, B), vec![b"1".to_vec(), b"2".to_vec()]);
    // After the messages, the final word.
    let last = out
        .iter()
        .rposition(|(c, f)| *c == B && matches!(f, Frame::Msg(_)));
    let gone = out.iter().position(|(c, f)| {
        *c == B && matches!(f, Frame::Event(Event::PeerGone { queued: false, .. }))
    });
    assert!(gone > last, "{out:?}");
}

#[test]
fn a_close_comes_after_what_was_sent_before_it() {
    let mut h = Harness::new(100, 1 << 20);
    let ch = h.channel(A, "c", B);
    h.send(A, ch, End::B, b"1").unwrap();
    h.feed(A, Frame::Notice(Notice::Close { chan: ch }))
        .unwrap();
    let out = h.take();
    assert!(events(&out, B).contains(&Event::Closed {
        chan: ch,
        queued: true
    }));
    // The first receiver gets the message regardless of credit, then the final close.
    h.attach(B, ch, End::B, 0, 0);
    let out = h.take();
    assert_eq!(delivered(&out, B), vec![b"1".to_vec()]);
    assert!(events(&out, B).contains(&Event::Closed {
        chan: ch,
        queued: false
    }));
    // Sending on a closed channel is refused, and the credit comes back.
    h.send(A, ch, End::B, b"2").unwrap();
    let out = h.take();
    assert!(matches!(
        events(&out, A).as_slice(),
        [Event::Refused {
            code: ErrorCode::Closed,
            ..
        }]
    ));
}

#[test]
fn messages_sent_before_a_release_earn_no_credit_after_it() {
    let mut h = Harness::new(4, 1 << 20);
    let ch = h.channel(A, "c", B);
    h.send(A, ch, End::B, b"old").unwrap();
    // A releases its end and gets it again (a new epoch), with a fresh window.
    h.feed(
        A,
        Frame::Notice(Notice::Release {
            chan: ch,
            end: End::A,
            count: 1,
        }),
    )
    .unwrap();
    let found = h.request(
        A,
        Request::Lookup {
            name: "c".into(),
            type_name: "t".into(),
        },
    );
    assert!(matches!(found, Reply::Found { end: End::A, .. }));
    h.attach(B, ch, End::B, 100, 1 << 20);
    let out = h.take();
    assert_eq!(delivered(&out, B), vec![b"old".to_vec()]);
    // The old message's delivery is not counted for the new epoch.
    assert_eq!(credited(&out, A), (0, 0));
    for _ in 0..4 {
        h.send(A, ch, End::B, b"new").unwrap();
    }
}

#[test]
fn messages_on_unknown_or_unheld_channels_are_refused_with_their_credit() {
    let mut h = Harness::new(4, 1 << 20);
    h.send(A, ChanId(999), End::B, b"abc").unwrap();
    let out = h.take();
    assert!(matches!(
        events(&out, A).as_slice(),
        [Event::Refused {
            code: ErrorCode::UnknownChannel,
            ..
        }]
    ));
    assert_eq!(credited(&out, A), (1, 3));
    let ch = h.channel(A, "c", B);
    // C holds neither end.
    h.send(C, ch, End::B, b"abcd").unwrap();
    let out = h.take();
    assert_eq!(credited(&out, C), (1, 4));
    assert!(delivered(&out, B).is_empty());
}

#[test]
fn an_unnamed_channel_nobody_holds_is_freed_with_what_is_queued_on_it() {
    let mut h = Harness::new(100, 1 << 20);
    let Reply::Created { chan: inner } = h.request(
        A,
        Request::Create {
            type_name: "t".into(),
            pair: true,
        },
    ) else {
        panic!("not created")
    };
    let Reply::Created { chan: outer } = h.request(
        A,
        Request::Create {
            type_name: "t".into(),
            pair: true,
        },
    ) else {
        panic!("not created")
    };
    // Nobody receives on `outer`: its messages queue, one of them carrying `inner`.
    for _ in 0..10 {
        h.send(A, outer, End::B, &[0; 100]).unwrap();
    }
    h.feed(
        A,
        Frame::Msg(Msg {
            chan: outer,
            to: End::B,
            carried: vec![EndRef {
                chan: inner,
                end: End::B,
            }],
            body: Bytes::from_static(b"x"),
        }),
    )
    .unwrap();
    let release = |h: &mut Harness, chan, end| {
        h.feed(
            A,
            Frame::Notice(Notice::Release {
                chan,
                end,
                count: 1,
            }),
        )
        .unwrap()
    };
    release(&mut h, inner, End::A);
    release(&mut h, inner, End::B);
    assert!(
        h.r.chans.contains_key(&inner),
        "still carried by a queued message"
    );
    release(&mut h, outer, End::A);
    release(&mut h, outer, End::B);
    assert!(!h.r.chans.contains_key(&outer));
    assert!(!h.r.chans.contains_key(&inner));
}
