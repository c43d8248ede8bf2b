"""Joining from another machine over TLS (`yukicomm.join`, or `YUKICOMM_HUB=yk://...`
with `YUKICOMM_JOIN`), against a real Rust main process listening on 127.0.0.1
(`python_host remote`, in `examples/python_host.rs`). The remote Python process
(`tests/children/remote.py`) is started here, not by the supervisor."""

import os
import queue
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT

CHILD = str(Path(__file__).resolve().parent / "children" / "remote.py")
PYTHON_DIR = str(ROOT / "python")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("YUKICOMM_")}
    env.update(PYTHONPATH=PYTHON_DIR, PYTHONUNBUFFERED="1", **extra)
    return env


class Host:
    """The Rust main process, its stdout read line by line."""

    def __init__(self, path, state):
        self.proc = subprocess.Popen(
            [path, "remote", str(state)], cwd=ROOT, env=_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix, timeout=60):
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no '{prefix}' within {timeout} s:\n" + "\n".join(self.seen))
            if line is None:
                raise AssertionError(f"the host ended before '{prefix}':\n" + "\n".join(self.seen))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def finish(self, timeout=60):
        self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout)
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                break
            self.seen.append(line)
        return code, "\n".join(self.seen)


class Proxy:
    """A TCP proxy between the remote process and the hub, which can cut the
    connections it carries, or silence them (nothing forwarded, nothing closed)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = self.listener.getsockname()
        self.pairs = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.upstream)
            except OSError:
                a.close()
                continue
            pair = {"socks": (a, b), "silent": False}
            with self.lock:
                self.pairs.append(pair)
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True).start()

    def _pump(self, pair, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            while pair["silent"]:
                time.sleep(0.05)
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair["socks"]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(pairs)

    def silence(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            pair["silent"] = True
        return len(pairs)

    def close(self):
        self.listener.close()
        self.cut()


def _run(args, env, timeout=60):
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _try_join(url, token, state):
    code = (
        "import sys, yukicomm\n"
        "try:\n"
        f"    yukicomm.join({url!r}, sys.stdin.readline().strip(), state_dir={str(state)!r})\n"
        "except yukicomm.ConnectError as e:\n"
        "    print('REFUSED', e); sys.exit(3)\n"
        "print('JOINED')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=_env(), input=token + "\n",
        capture_output=True, text=True, timeout=60,
    )


def test_remote_python_process_over_tls(rust_bin, tmp_path):
    host = Host(rust_bin("python_host"), tmp_path / "hub")
    second = None
    try:
        _, url, token = host.wait_for("JOIN ").split()
        secret, fp = token.split(".")[2], token.split(".")[3]
        client = tmp_path / "client"

        # 1. From the environment: enrols, spending the token.
        r1 = _run([CHILD, "1"], _env(YUKICOMM_HUB=url, YUKICOMM_JOIN=token, YUKICOMM_STATE_DIR=str(client)))
        out1 = r1.stdout + r1.stderr
        assert r1.returncode == 0 and "run 1 ok" in r1.stdout, out1
        assert secret not in out1
        host.wait_for("REMOTE RUN 1 OK")

        # The certificate is kept privately, where the Rust client keeps it.
        kept = client / fp[:16] / "py-remote"
        for f in ("cert.pem", "key.pem", "ca.pem"):
            assert (kept / f).is_file(), f
        mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
        assert mode(kept / "key.pem") == 0o600
        assert mode(kept) == 0o700 and mode(kept.parent) == 0o700 and mode(client) == 0o700
        assert "BEGIN PRIVATE KEY" in (kept / "key.pem").read_text()

        # 2. With join(), through a proxy: the token is spent, the kept certificate is
        # used. It streams messages both ways while the link is cut, then silenced, and
        # stays joined until the main process shuts down.
        host_port = url[len("yk://"):].rsplit(":", 1)
        proxy = Proxy((host_port[0], int(host_port[1])))
        second = subprocess.Popen(
            [sys.executable, CHILD, "2"],
            env=_env(TEST_URL="yk://%s:%d" % proxy.addr, TEST_TOKEN=token, TEST_STATE_DIR=str(client)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        host.wait_for("REMOTE RUN 2 OK")
        time.sleep(0.5)
        assert proxy.cut() == 1
        time.sleep(1.0)
        assert proxy.silence() == 1  # the link that resumed after the cut
        host.wait_for("REMOTE STREAM OK")
        proxy.close()

        # 3. The spent token, without the certificate: refused, saying why.
        r3 = _try_join(url, token, tmp_path / "empty")
        assert r3.returncode == 3, r3.stdout + r3.stderr
        assert "already used" in r3.stdout and secret not in r3.stdout + r3.stderr, r3.stdout
        assert not (tmp_path / "empty" / fp[:16] / "py-remote" / "cert.pem").exists()

        # 4. A token pinning another authority: the hub is not trusted, nothing sent.
        wrong = ".".join(token.split(".")[:3] + ["0" * 64])
        r4 = _try_join(url, wrong, tmp_path / "wrong")
        assert r4.returncode == 3, r4.stdout + r4.stderr
        assert "not the one the token pins" in r4.stdout and secret not in r4.stdout + r4.stderr

        # 5. Not a token at all, and not an address.
        r5 = _try_join(url, "yk1.py-remote.nothex", tmp_path / "bad")
        assert r5.returncode == 3 and "not a join token" in r5.stdout, r5.stdout + r5.stderr
        r6 = _try_join("http://127.0.0.1:1", token, tmp_path / "bad")
        assert r6.returncode == 3 and "not a hub address" in r6.stdout, r6.stdout + r6.stderr
        assert secret not in r6.stdout + r6.stderr

        code, out = host.finish()
        assert code == 0 and "PASS remote" in out, out[-6000:]
        out2, _ = second.communicate(timeout=30)
        assert second.returncode == 0, out2
        assert "run 2 ok" in out2 and "stream ok" in out2, out2
        assert out2.count("is resumed") >= 2, out2  # after the cut, after the silence
        assert "DISCONNECTED" in out2 and "STILL HERE" in out2, out2
        assert secret not in out2
    finally:
        for p in (host.proc, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
