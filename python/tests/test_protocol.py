"""The client against a scripted hub (this test, on a socket pair): the guarantees a
real hub cannot be made to break on purpose. Credit windows respected, a dead peer and
a lost hub wake waiters, malformed frames close the connection with a clear error, and
asyncio waits never block the event loop.

The child is a fresh interpreter joined as a supervised child would be
(`YUKICOMM_NAME`, `YUKICOMM_FD`); the test reads its frames and answers."""

import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack

from yukicomm import _wire as w

PYTHON_DIR = str(Path(__file__).resolve().parents[1])
ACTIVE, PASSIVE = 5, 6


class FakeHub:
    """One child process and our end of its connection."""

    def __init__(self, script, window=4, window_bytes=1 << 20):
        ours, theirs = socket.socketpair()
        self.sock = ours
        env = dict(os.environ, YUKICOMM_NAME="py", YUKICOMM_FD=str(theirs.fileno()),
                   PYTHONPATH=PYTHON_DIR, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            pass_fds=[theirs.fileno()], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        theirs.close()
        self.buf = b""
        kind, payload = self.frame()
        assert kind == w.REQUEST
        hello = msgpack.unpackb(payload[4:], raw=False)
        assert hello["op"] == "hello" and hello["version"] == 2 and hello["name"] == "py", hello
        self.reply(struct.unpack("<I", payload[:4])[0], {
            "reply": "welcome", "name": "py", "window": window, "window_bytes": window_bytes,
            "max_frame": 1 << 24, "active": ACTIVE, "passive": PASSIVE,
        })

    def frame(self, timeout=10.0):
        """The next frame from the child: (kind, payload); None at end of stream."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack("<I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    kind, payload = self.buf[4], self.buf[5:4 + n]
                    self.buf = self.buf[4 + n:]
                    return kind, payload
            left = deadline - time.monotonic()
            assert left > 0, "no frame from the child in time"
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                data = self.sock.recv(65536)
                if not data:
                    return None
                self.buf += data

    def frames_until(self, pred, timeout=10.0):
        seen = []
        while True:
            f = self.frame(timeout)
            assert f is not None, f"end of stream; saw {seen}"
            seen.append(f)
            if pred(f):
                return seen

    def send(self, data):
        self.sock.sendall(data)

    def reply(self, rid, body):
        self.send(w.frame(w.REPLY, struct.pack("<I", rid) + msgpack.packb(body)))

    def event(self, body):
        self.send(w.frame(w.EVENT, msgpack.packb(body)))

    def msg(self, chan, to, value):
        self.send(w.msg_frame(chan, to, msgpack.packb(value), []))

    def finish(self, timeout=20):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def test_sender_never_overruns_the_window_and_resumes_on_credit():
    hub = FakeHub("""
        from yukicomm import active_channel, Full, Timeout
        for i in range(4):
            active_channel.try_send(i)
        try:
            active_channel.try_send(4)
        except Full as e:
            print("full:", e)
        try:
            active_channel.send(4, timeout=0.2)
        except Timeout as e:
            print("timeout:", e)
        print("waiting", flush=True)
        active_channel.send(4, timeout=10)   # the hub's credit lets it go
        active_channel.send(5, timeout=10)
        print("sent all")
    """, window=4)
    msgs = hub.frames_until(lambda f: f[0] == w.MSG and f[1][7:] == msgpack.packb(3))
    assert [f for f in msgs if f[0] == w.MSG].__len__() == 4
    # Nothing more until credit: the child times out meanwhile.
    line = hub.proc.stdout.readline() + hub.proc.stdout.readline() + hub.proc.stdout.readline()
    assert "full:" in line and "'py-active'" in line and "timeout:" in line, line
    hub.send(w.credit_frame(ACTIVE, 0, 2, 4))
    hub.frames_until(lambda f: f[0] == w.MSG and f[1][7:] == msgpack.packb(5))
    code, out, err = hub.finish()
    assert code == 0 and "sent all" in out, (code, out, err)


def test_receiver_returns_credit_in_batches():
    hub = FakeHub("""
        from yukicomm import active_channel
        for i in range(4):
            assert active_channel.receive(timeout=10) == i
        print("done")
    """, window=4)
    attach = hub.frames_until(lambda f: f[0] == w.NOTICE)[-1]
    m = msgpack.unpackb(attach[1], raw=False)
    assert m == {"op": "attach", "chan": ACTIVE, "end": "A", "credit": 4, "bytes": 1 << 20}, m
    for i in range(4):
        hub.msg(ACTIVE, 0, i)
    credits = [f for f in hub.frames_until(lambda f: f[0] == w.CREDIT)]
    chan, end, n, nbytes = struct.unpack("<IBIQ", credits[-1][1])
    assert (chan, end, n, nbytes) == (ACTIVE, 0, 2, 2), (chan, end, n, nbytes)
    code, out, err = hub.finish()
    assert code == 0 and "done" in out, (code, out, err)


def test_dead_peer_wakes_a_blocked_receiver_with_an_error_naming_the_channel():
    hub = FakeHub("""
        from yukicomm import active_channel, Disconnected
        try:
            active_channel.receive(timeout=20)
        except Disconnected as e:
            print("disconnected:", e)
    """)
    hub.frames_until(lambda f: f[0] == w.NOTICE)
    time.sleep(0.2)
    hub.event({"event": "peer_gone", "chan": ACTIVE, "end": "B", "queued": False})
    code, out, err = hub.finish()
    assert code == 0 and "disconnected:" in out and "py-active" in out, (code, out, err)


def test_queued_messages_arrive_before_the_news_of_a_dead_peer():
    hub = FakeHub("""
        from yukicomm import active_channel
        print(list(active_channel))
    """)
    hub.frames_until(lambda f: f[0] == w.NOTICE)
    hub.event({"event": "peer_gone", "chan": ACTIVE, "end": "B", "queued": True})
    hub.msg(ACTIVE, 0, "a")
    hub.msg(ACTIVE, 0, "b")
    hub.event({"event": "peer_gone", "chan": ACTIVE, "end": "B", "queued": False})
    code, out, err = hub.finish()
    assert code == 0 and "['a', 'b']" in out, (code, out, err)


def test_lost_hub_ends_the_child_with_status_70():
    hub = FakeHub("""
        from yukicomm import active_channel
        active_channel.receive()
    """)
    hub.frames_until(lambda f: f[0] == w.NOTICE)
    hub.sock.close()
    code, out, err = hub.finish()
    assert code == 70 and "lost the hub connection" in err, (code, out, err)


def test_malformed_frame_closes_the_connection_with_a_clear_error():
    hub = FakeHub("""
        import threading, yukicomm
        yukicomm.connect()
        threading.Event().wait()
    """)
    hub.send(struct.pack("<IB", 3, 99) + b"xy")
    code, out, err = hub.finish()
    assert code == 70 and "kind 99" in err, (code, out, err)
    assert hub.frame() is None  # the child closed its end


def test_oversized_frame_length_closes_the_connection():
    hub = FakeHub("""
        import threading, yukicomm
        yukicomm.connect()
        threading.Event().wait()
    """)
    hub.send(struct.pack("<I", (1 << 24) + 1))
    code, out, err = hub.finish()
    assert code == 70 and "frame length" in err, (code, out, err)


def test_malformed_msg_in_a_reply_closes_the_connection():
    hub = FakeHub("""
        import threading, yukicomm
        yukicomm.connect()
        threading.Event().wait()
    """)
    hub.send(w.frame(w.MSG, b"\\x05\\x00"))
    code, out, err = hub.finish()
    assert code == 70 and "malformed Msg" in err, (code, out, err)


def test_asyncio_waits_never_block_the_event_loop():
    hub = FakeHub("""
        import asyncio
        from yukicomm import active_channel, Timeout

        async def main():
            ticks = 0
            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1
            t = asyncio.ensure_future(ticker())
            try:
                await active_channel.async_receive(timeout=0.3)
            except Timeout:
                print("timeout ok")
            got = await active_channel.async_receive(timeout=10)
            t.cancel()
            print("got", got, "ticks", ticks)
        asyncio.run(main())
    """)
    hub.frames_until(lambda f: f[0] == w.NOTICE)
    time.sleep(0.6)
    hub.msg(ACTIVE, 0, "late")
    code, out, err = hub.finish()
    assert code == 0 and "timeout ok" in out and "got late" in out, (code, out, err)
    ticks = int(out.split("ticks")[-1])
    assert ticks >= 20, out


def test_requests_time_out_naming_what_they_waited_for():
    hub = FakeHub("""
        from yukicomm import get_channel, Timeout
        try:
            get_channel("jobs", timeout=0.2)
        except Timeout as e:
            print("timeout:", e)
    """)
    code, out, err = hub.finish()
    assert code == 0 and "timeout:" in out and "'jobs'" in out, (code, out, err)


def test_not_a_child_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("YUKICOMM_")}
    env["PYTHONPATH"] = PYTHON_DIR
    r = subprocess.run(
        [sys.executable, "-c", "import yukicomm; yukicomm.connect()"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode != 0 and "not a child of a yukicomm program" in r.stderr, r.stderr


def test_remote_join_checks_address_and_token_without_showing_the_secret(tmp_path):
    import socket

    import pytest

    from yukicomm import _remote

    secret, fp = "ab" * 32, "cd" * 32
    token = f"yk1.w.{secret}.{fp}"
    t = _remote.JoinToken.parse(" " + token.upper().replace("YK1.W.", "yk1.w.") + "\n")
    assert (t.name, t.secret(), t.fingerprint) == ("w", secret, fp)
    assert secret not in repr(t) and secret not in str(t)
    assert _remote.parse_url("yk://host:7700") == ("host", 7700)
    assert _remote.parse_url("yk://[::1]:7700/") == ("::1", 7700)
    assert _remote.identity_dir(tmp_path, t) == tmp_path / fp[:16] / "w"
    for bad in ("yukicomm://h:1", "yk://h", "yk://:1", "yk://h:x", "yk://h:1/p", "yk://h:70000"):
        with pytest.raises(_remote.RemoteError, match="not a hub address"):
            _remote.parse_url(bad)
    for bad in ("token", f"yk1..{secret}.{fp}", f"yk2.w.{secret}.{fp}", f"yk1.w.{secret[:-1]}.{fp}",
                f"yk1.w.{secret}.{fp}.x", f"yk1.w.{secret}.{fp[:-1]}z"):
        with pytest.raises(_remote.RemoteError, match="not a join token") as e:
            _remote.JoinToken.parse(bad)
        assert secret[:16] not in str(e.value)

    # Nobody listening: a ConnectError naming the address, never the token.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import sys, yukicomm\n"
        "try:\n"
        f"    yukicomm.join('yk://127.0.0.1:{port}', sys.stdin.readline().strip(), "
        f"state_dir={str(tmp_path)!r}, connect_timeout=2)\n"
        "except yukicomm.ConnectError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], input=token + "\n", capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"127.0.0.1:{port}" in r.stdout and secret not in r.stdout + r.stderr, r.stdout
