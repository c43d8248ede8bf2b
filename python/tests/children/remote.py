"""A Python process on "another machine": started by the test (not supervised), it
joins the Rust main process of `python_host remote` over TLS.

    remote.py 1   joins from the environment (YUKICOMM_HUB, YUKICOMM_JOIN,
                  YUKICOMM_STATE_DIR): enrols, spending the token
    remote.py 2   joins with yukicomm.join(url, token, ...) (TEST_URL, TEST_TOKEN,
                  TEST_STATE_DIR): the token is spent, the certificate kept is used;
                  it streams messages both ways while the test breaks its link; then
                  it waits for the main process to shut down, and must see the hub
                  go (Disconnected) without exiting

Each run says `hello N` on its passive channel, waits for `ping N` on its active
channel, uses the store and the main process's services, and says `ok N` (or
`fail: <traceback>`)."""

import os
import sys
import traceback

import yukicomm
from yukicomm import ServiceClient, active_channel, call, passive_channel, shared_memory

run = int(sys.argv[1])
if run == 1:
    secret = os.environ["YUKICOMM_JOIN"].split(".")[2]
    yukicomm.connect()
    assert "YUKICOMM_JOIN" not in os.environ and "YUKICOMM_HUB" not in os.environ
    with open("/proc/self/environ", "rb") as f:
        assert secret.encode() not in f.read(), "the token is still in /proc/self/environ"
else:
    yukicomm.join(
        os.environ["TEST_URL"],
        os.environ["TEST_TOKEN"],
        state_dir=os.environ["TEST_STATE_DIR"],
        heartbeat=1.0,
        grace=5.0,
    )
assert yukicomm.name() == "py-remote", yukicomm.name()

passive_channel.send(f"hello {run}")
try:
    got = active_channel.receive(timeout=20)
    assert got == f"ping {run}", got
    shared_memory.set("py-remote.run", run)
    assert shared_memory.get("main.greeting") == "hello from main"
    assert shared_memory.get("py-remote.run") == run
    assert call("double", 21) == 42
    tr = ServiceClient("translator", timeout=10)
    assert tr.translate("hello", "Fr") == "bonjour"
    assert sorted(tr.languages()) == ["En", "Fr"]
except BaseException:
    text = traceback.format_exc()
    print(text, flush=True)
    passive_channel.send("fail: " + text[-2000:])
    sys.exit(1)
passive_channel.send(f"ok {run}")
print(f"run {run} ok", flush=True)

if run == 2:
    # Messages both ways while the test cuts, then silences, the link: each arrives
    # once, in order.
    import threading
    import time

    N = 150

    def stream():
        for i in range(N):
            passive_channel.send(f"n {i}")
            time.sleep(0.02)

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        for i in range(N):
            got = active_channel.receive(timeout=20)
            assert got == f"e {i}", (i, got)
        sender.join()
    except BaseException:
        text = traceback.format_exc()
        print(text, flush=True)
        passive_channel.send("fail: " + text[-2000:])
        sys.exit(1)
    passive_channel.send("ok stream")
    print("stream ok", flush=True)
    try:
        v = active_channel.receive(timeout=60)
        print(f"unexpected: {v!r}", flush=True)
        sys.exit(1)
    except yukicomm.Disconnected as e:
        print(f"DISCONNECTED {type(e).__name__}: {e}", flush=True)
    # The main process shuts down: its end of the channel goes first, then the hub
    # ends the session. This process is still here, and waiters get HubGone.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            shared_memory.get("main.greeting")
        except yukicomm.HubGone as e:
            assert isinstance(e, yukicomm.Disconnected)
            print(f"STILL HERE after: {e}", flush=True)
            break
        time.sleep(0.05)
    else:
        print("the hub did not go within 30 s", flush=True)
        sys.exit(1)
