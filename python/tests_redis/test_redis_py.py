"""The hub's Redis protocol endpoint (issue 14) from redis-py, over RESP2 and RESP3,
against a real Rust main process (`examples/redis_host.rs`), and `redis-benchmark`
against it as a smoke test.

Run by `.ci/run` (`python3 python/dev.py redis`). Needs redis-py and redis-benchmark:
a missing tool is a failure, never a skip."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

try:
    import redis
except ImportError:  # a failure, not a skip
    redis = None

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "py-s3cret"


def start_host(**extra_env):
    """Builds and starts `redis_host`: its process, and (unix socket path, tcp host, tcp
    port)."""
    if redis is None:
        pytest.fail("redis-py is not installed (pip install redis)")
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo is not on PATH")
    subprocess.run([cargo, "build", "--example", "redis_host"], cwd=ROOT, check=True)
    env = dict(os.environ, YUKICOMM_REDIS_PASSWORD=PASSWORD, **extra_env)
    proc = subprocess.Popen(
        [str(ROOT / "target" / "debug" / "examples" / "redis_host")],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()
    assert line and line[0] == "REDIS", line
    fields = dict(f.split("=", 1) for f in line[1:])
    host, port = fields["tcp"].rsplit(":", 1)
    return proc, (fields["unix"], host, int(port))


@pytest.fixture(scope="module")
def host():
    """A running `redis_host`: (unix socket path, tcp host, tcp port)."""
    proc, where = start_host()
    yield where
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def py_host():
    """A `redis_host` with a Python child (`py_child.py`) on its store."""
    proc, where = start_host(
        YUKICOMM_REDIS_HOST_PY=str(Path(__file__).parent / "py_child.py"),
        YUKICOMM_PYTHON=sys.executable,
    )
    yield where
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def client(host, protocol, tcp=False):
    path, h, port = host
    if tcp:
        return redis.Redis(host=h, port=port, password=PASSWORD, protocol=protocol)
    return redis.Redis(unix_socket_path=path, password=PASSWORD, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("tcp", [False, True])
def test_strings_and_keys(host, protocol, tcp):
    r = client(host, protocol, tcp)
    p = f"py{protocol}{tcp}:"
    assert r.ping()
    assert r.set(p + "a", "hello")
    assert r.get(p + "a") == b"hello"
    assert r.set(p + "a", "x", nx=True) is None
    assert r.set(p + "a", "again", xx=True, get=True) == b"hello"
    assert r.incr(p + "n") == 1
    assert r.incrby(p + "n", 10) == 11
    assert r.decr(p + "n") == 10
    assert r.mset({p + "m1": "1", p + "m2": b"\xff\x00"})
    assert r.mget([p + "m1", p + "m2", p + "none"]) == [b"1", b"\xff\x00", None]
    assert r.msetnx({p + "m1": "x", p + "m3": "y"}) is False
    assert r.expire(p + "m1", 100)
    assert r.ttl(p + "m1") == 100
    assert 99_000 < r.pttl(p + "m1") <= 100_000
    assert r.persist(p + "m1")
    assert r.ttl(p + "m1") == -1
    assert r.exists(p + "m1", p + "m2", p + "none") == 2
    assert r.type(p + "m1") in (b"string", "string")
    assert sorted(r.keys(p + "m*")) == [(p + "m1").encode(), (p + "m2").encode()]
    assert sorted(r.scan_iter(match=p + "*", count=2)) == sorted(r.keys(p + "*"))
    assert r.delete(p + "m1", p + "m2", p + "none") == 2
    assert r.append(p + "a", "!") == 6
    assert r.strlen(p + "a") == 6
    assert r.getdel(p + "a") == b"again!"
    assert r.get(p + "a") is None
    r.client_setname("tester")
    assert r.client_getname() in (b"tester", "tester")
    assert r.client_id() > 0
    assert any(c.get("name") == "tester" for c in r.client_list())
    assert r.dbsize() >= 4
    assert "redis_version" in r.info("server")
    assert r.config_get("databases") == {"databases": "1"} or r.config_get("databases") == {
        b"databases": b"1"
    }
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        r.lpush(p + "l", "x")
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        r.incr(p + "n", "x")
    # Pipelining, with a transaction refused clearly (MULTI is not a command here).
    pipe = r.pipeline(transaction=False)
    pipe.set(p + "pp", 1).incr(p + "pp").get(p + "pp")
    assert pipe.execute() == [True, 2, b"2"]


def test_auth(host):
    path, _, _ = host
    r = redis.Redis(unix_socket_path=path)
    with pytest.raises(redis.exceptions.AuthenticationError):
        r.get("x")
    bad = redis.Redis(unix_socket_path=path, password="wrong", protocol=3)
    with pytest.raises(redis.exceptions.AuthenticationError):
        bad.ping()


@pytest.mark.parametrize("protocol", [2, 3])
def test_values_written_in_rust_read_plainly(host, protocol):
    r = client(host, protocol)
    assert r.get("rust-string") == "written in Rust".encode()
    assert int(r.get("rust-int")) == 41
    assert r.get("rust-bytes") == b"\x00\x9f\xff"
    # Other typed values: their MessagePack bytes.
    assert r.get("rust-struct") == b"\x92\x01\xa3two"


@pytest.mark.parametrize("protocol", [2, 3])
def test_pubsub_both_ways_with_rust(host, protocol):
    r = client(host, protocol)
    ps = client(host, protocol).pubsub()
    ps.subscribe("from-rust")
    ps.psubscribe("from-*")
    deadline = time.time() + 10
    confirmations = 0
    while confirmations < 2 and time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] in ("subscribe", "psubscribe"):
            confirmations += 1
    assert confirmations == 2
    # Rust subscribes to to-rust (one subscription) and answers on from-rust.
    assert r.publish("to-rust", f"hello {protocol}") == 1
    got = []
    while len(got) < 2 and time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] in ("message", "pmessage"):
            got.append((m["type"], m["channel"], m["data"]))
    expected = f"rust got: hello {protocol}".encode()
    assert sorted(got) == [
        ("message", b"from-rust", expected),
        ("pmessage", b"from-rust", expected),
    ]
    assert r.pubsub_numsub("from-rust") == [(b"from-rust", 1)]
    assert r.pubsub_numpat() >= 1
    ps.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_pubsub_both_ways_with_python(py_host, protocol):
    """A RESP `PUBLISH` reaches a Python child's callback
    (`shared_memory.on_subscriber_receive`) and its subscriber stream
    (`shared_memory.subscribe`); what the child publishes in answer reaches a RESP
    subscriber."""
    r = client(py_host, protocol)
    ps = client(py_host, protocol).pubsub()
    ps.subscribe("from-py")
    deadline = time.time() + 30
    while time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] == "subscribe":
            break
    # The child subscribes once it has started: until then nobody takes the message.
    for channel in ("to-py", "to-py-stream"):
        while r.publish(channel, f"hello {protocol}") < 1:
            assert time.time() < deadline, f"the Python child never subscribed to {channel}"
            time.sleep(0.05)
    got = set()
    while len(got) < 2 and time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] == "message":
            assert m["channel"] == b"from-py"
            got.add(m["data"])
    assert got == {
        f"py callback got: hello {protocol}".encode(),
        f"py stream got: hello {protocol}".encode(),
    }
    assert r.pubsub_numsub("to-py", "to-py-stream") == [(b"to-py", 1), (b"to-py-stream", 1)]
    ps.close()


def test_resp3_push_handler(host):
    r = client(host, 3)
    got = []
    ps = client(host, 3).pubsub(push_handler_func=got.append)
    ps.subscribe(**{"py-topic": lambda m: got.append(m)})
    thread = ps.run_in_thread(sleep_time=0.05)
    try:
        deadline = time.time() + 10
        while r.pubsub_numsub("py-topic")[0][1] < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert r.publish("py-topic", "pushed") == 1
        # The push handler sees the raw RESP3 push: [b"message", channel, data].
        while [b"message", b"py-topic", b"pushed"] not in got:
            assert time.time() < deadline, got
            time.sleep(0.05)
    finally:
        thread.stop()


def test_bad_input_closes_only_that_connection(host):
    import socket as s

    path, _, _ = host
    with s.socket(s.AF_UNIX, s.SOCK_STREAM) as c:
        c.connect(path)
        c.sendall(b"*1\r\n$nope\r\n")
        c.settimeout(5)
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data == b"-ERR Protocol error: invalid bulk length\r\n"
    assert client(host, 2).ping()


def test_redis_benchmark_smoke(host):
    bench = shutil.which("redis-benchmark")
    if bench is None:
        pytest.fail("redis-benchmark is not installed (apt-get install redis-tools)")
    path, _, _ = host
    out = subprocess.run(
        [bench, "-s", path, "-a", PASSWORD, "-n", "2000", "-c", "4", "-P", "4", "-q",
         "-t", "ping,set,get,incr,mset"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for test in ("PING_INLINE", "SET", "GET", "INCR", "MSET"):
        assert test in text, text
    assert "requests per second" in text, text
