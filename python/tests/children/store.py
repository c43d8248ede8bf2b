"""The store and pub/sub between this Python child, a Rust child and the main process:
values both ways, atomic operations, TTL, watches, subscriber streams and callbacks."""

import asyncio
import math
import threading
import time

from _common import expect_raises, report
from yukicomm import ABSENT, Missed, StoreError, Timeout, shared_memory

heard_by_callback = []
heard_event = threading.Event()


@shared_memory.on_subscriber_receive("events.rust")
def on_rust(data):
    heard_by_callback.append(data)
    heard_event.set()


def body():
    s = shared_memory
    # What the main process stored, in Python's natural types.
    assert s.get("main.greeting") == "hello from main"
    assert s.get("main.point") == {"x": -1, "y": 1, "label": "main"}
    assert s.get("no.such.key") is None
    assert s.get("no.such.key", 5) == 5

    events = s.subscribe("events.*")
    ready = s.watch("ready")
    n = s.incr("ready")
    while n < 2:
        change = ready.receive(timeout=20)
        if change.kind == "set":
            n = change.value
    for _ in range(10):
        s.incr("counter")
    assert s.publish("events.py", "from python") >= 1
    while True:
        p = events.receive(timeout=20)
        if p.topic == "events.rust":
            assert p.data == "from rust", p
            break
    assert heard_event.wait(20), "the on_subscriber_receive callback did not run"
    assert heard_by_callback == ["from rust"], heard_by_callback

    # Atomic operations, TTL, errors naming the key.
    s.set("py.tmp", "v")
    assert s.contains("py.tmp")
    assert not s.set_if_absent("py.tmp", "w")
    assert s.set_if_absent("py.new", 1)
    assert s.compare_and_swap("py.tmp", "v", "w")
    assert not s.compare_and_swap("py.tmp", "v", "x")
    assert s.compare_and_swap("py.absent", ABSENT, 3)
    assert s.compare_and_swap("py.absent", 3, ABSENT)
    assert not s.contains("py.absent")
    assert s.decr("py.new", 5) == -4
    assert s.ttl("py.tmp") == math.inf
    assert s.ttl("py.nothing") is None
    s.set("py.short", 1, ttl=0.2)
    left = s.ttl("py.short")
    assert left is not None and 0 < left <= 0.2, left
    w = s.watch("py.short")
    change = w.receive(timeout=5)
    assert change == ("expired", "py.short", None), change
    w.close()
    assert s.expire("py.tmp", 60)
    assert 59 < s.ttl("py.tmp") <= 60
    assert s.expire("py.tmp", None)
    e = expect_raises(StoreError, lambda: s.incr("py.tmp"), "py.tmp")
    assert e.code == "not_an_integer" and e.key == "py.tmp", (e.code, e.key)
    expect_raises(StoreError, lambda: s.get(""), "")
    assert s.delete("py.tmp")
    assert not s.delete("py.tmp")
    expect_raises(KeyError, lambda: s.delete("py.tmp", ignore_key_error=False))
    all_py = s.get_all("py.*")
    assert all_py == {"py.new": -4}, all_py
    assert "main.greeting" in s.get_all()
    assert "main.greeting" in s.keys("main.*")

    # Subscriber with a small buffer: a slow reader is told what it missed.
    small = s.subscribe("burst", buffer=4)
    for i in range(20):
        s.publish("burst", i)
    got, missed = [], 0
    while len(got) + missed < 20:
        try:
            got.append(small.receive(timeout=5).data)
        except Missed as m:
            missed += m.count
    assert missed > 0 and got[:4] == [0, 1, 2, 3], (got, missed)
    small.close()
    quiet = s.subscribe("quiet.*")
    expect_raises(Timeout, lambda: quiet.receive(timeout=0.05), "quiet.*")
    quiet.close()

    # The asyncio forms.
    async def aio():
        await s.async_set("py.async", [1, 2])
        assert await s.async_get("py.async") == [1, 2]
        assert await s.async_incr("py.async.n", 2) == 2
        assert await s.async_delete("py.async")
        sub = s.subscribe("aio")
        await s.async_publish("aio", {"k": "v"})
        p = await sub.async_receive(timeout=5)
        assert p.data == {"k": "v"}

    asyncio.run(aio())

    # Values for the Rust side to read.
    s.set("py.point", {"x": 1, "y": 2, "label": "python"})
    s.set("py.shape", {"Rect": {"w": 1, "h": 2}})
    assert s.get("rust.point", None) is None or s.get("rust.point")["label"] == "rust child"
    s.set("done.py", True)
    # The Rust child's struct, once it has stored it.
    deadline = time.monotonic() + 20
    while s.get("rust.point") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.get("rust.point") == {"x": 9, "y": 9, "label": "rust child"}


report(body)
