"""Joining a yukicomm program from another machine: TLS 1.3 to the main process's
remote endpoint (``App::listen_remote``), with a join token (``docs/PROTOCOL.md``
section 17), as the Rust client does (``crates/remote/src/client.rs``).

Python's ``ssl`` cannot show the chain the hub presents, so the hub is checked in two
steps: one connection without verification asks for the authority's certificate
(``authority`` opening) and checks its SHA-256 against the token's fingerprint; from
then on that certificate alone is trusted, for the name ``yukicomm-hub``. Nothing
secret is sent before the check. The first time, the token is spent to obtain this
process's certificate (the hub makes the key: an empty certificate request), which is
kept in the state directory and used for every later connection.

The session (section 17.3) carries one byte stream over a succession of TLS links: a
daemon thread runs an asyncio loop that moves bytes between one end of a local socket
pair and the current link, counts them, keeps what the hub has not acknowledged, and
reconnects when a link breaks or falls silent. The other end of the pair goes to the
ordinary connection code (:class:`~yukicomm._node.Node`), which says ``hello`` on it
exactly as on a supervised child's inherited descriptor.

The token's secret is never logged nor put in an exception's text."""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import hashlib
import os
import socket
import ssl
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Deque, Optional, Tuple

from .errors import ConnectError

#: The scheme of a hub's address: ``yk://host:port``.
SCHEME = "yk://"
#: The DNS name the hub's certificate is issued for, whatever address it listens on.
HUB_NAME = "yukicomm-hub"

# Openings and answers (section 17.2). Integers are little-endian.
ENROL = 0x01
SESSION = 0x02
AUTHORITY = 0x03
ENROLLED = 0x81
OPENED = 0x82
AUTHORITY_IS = 0x83
ENROLLED_WITH_KEY = 0x84
SESSION_REFUSED = 0x8E
ENROL_REFUSED = 0x8F

# Session records (section 17.3).
DATA = 0x10
ACK = 0x11
PING = 0x12
PONG = 0x13
CLOSE = 0x14

#: Largest record payload.
MAX_RECORD = 64 * 1024
#: Acknowledge at least this often, in bytes received.
ACK_EVERY = 256 * 1024
#: Largest certificate or key accepted in an answer.
MAX_DER = 16 * 1024
#: Largest refusal message read.
MAX_MESSAGE = 4096

#: How long a link lasts without hearing from the hub (pings go every quarter of it).
DEFAULT_HEARTBEAT = 3.0
#: How long the session waits for a new link before it ends.
DEFAULT_GRACE = 30.0
#: Each connection attempt (TCP, TLS and the opening) must finish within this.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Most bytes sent and not yet acknowledged; beyond, the local side is not read.
DEFAULT_MAX_UNACKED = 64 << 20
#: How long a process that exits waits for what it sent to leave.
EXIT_FLUSH = 2.0


def _log(text: str) -> None:
    from ._node import log

    log(text)


class RemoteError(Exception):
    """A step of joining failed; :func:`join` reports it as a ``ConnectError``."""


class Refused(RemoteError):
    """The hub answered with a refusal (its reason is the text)."""


# ---- the token and the address ------------------------------------------------------


def _is_hex(s: str, n: int) -> bool:
    return len(s) == n and all(c in "0123456789abcdefABCDEF" for c in s)


class JoinToken:
    """A parsed join token ``yk1.NAME.SECRET.FINGERPRINT``. Its ``repr`` and ``str``
    never show the secret."""

    __slots__ = ("name", "_secret", "fingerprint")

    def __init__(self, name: str, secret: str, fingerprint: str) -> None:
        self.name = name
        self._secret = secret
        self.fingerprint = fingerprint

    @classmethod
    def parse(cls, text: str) -> "JoinToken":
        parts = str(text).strip().split(".")
        if (
            len(parts) != 4
            or parts[0] != "yk1"
            or not parts[1]
            or not _is_hex(parts[2], 64)
            or not _is_hex(parts[3], 64)
        ):
            # Never the text itself: it may be a token with a typo.
            raise RemoteError("not a join token (expected yk1.NAME.SECRET.FINGERPRINT)")
        return cls(parts[1], parts[2].lower(), parts[3].lower())

    def secret(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return f"<JoinToken for '{self.name}'>"

    __str__ = __repr__


def parse_url(url: str) -> Tuple[str, int]:
    """The host and port of ``yk://host:port``."""
    bad = RemoteError(f"'{url}' is not a hub address (expected yk://host:port)")
    if not url.startswith(SCHEME):
        raise bad
    rest = url[len(SCHEME) :].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or "/" in rest or not port.isdigit() or int(port) > 65535:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


# ---- the state directory ----------------------------------------------------------


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/yukicomm/remote``, or ``~/.local/state/yukicomm/remote`` (as
    the Rust client, so that both share the certificates they keep)."""
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    elif os.environ.get("HOME"):
        base = Path(os.environ["HOME"]) / ".local" / "state"
    else:
        base = Path(tempfile.gettempdir())
    return base / "yukicomm" / "remote"


def identity_dir(state_dir: Path, token: JoinToken) -> Path:
    """Where the certificate of ``token``'s process is kept."""
    return Path(state_dir) / token.fingerprint[:16] / token.name


def _private_dir(path: Path) -> None:
    """Creates ``path`` and its missing parents with mode 0700, or makes an existing
    one private."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Writes ``data`` to ``path`` with ``mode``, replacing it atomically."""
    tmp = path.with_suffix(".tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _pem(tag: str, der: bytes) -> bytes:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (tag, "\n".join(lines), tag)).encode("ascii")


def _first_pem(text: str, tag: str) -> Optional[bytes]:
    begin, end = f"-----BEGIN {tag}-----", f"-----END {tag}-----"
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    try:
        return base64.b64decode("".join(text[i + len(begin) : j].split()), validate=True)
    except ValueError:
        return None


def fingerprint(der: bytes) -> str:
    """The SHA-256 of a certificate (DER), in lowercase hex."""
    return hashlib.sha256(der).hexdigest()


# ---- TLS ----------------------------------------------------------------------------


def _context(ca_der: Optional[bytes], identity: Optional[Path] = None) -> ssl.SSLContext:
    """TLS 1.3 only. Without ``ca_der``, no verification (only to ask for the
    authority); with it, that certificate is the only trust anchor, for the name
    ``yukicomm-hub``. ``identity``: the directory with this process's ``cert.pem``
    and ``key.pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_der is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        ctx.load_verify_locations(cadata=ca_der)
    if identity is not None:
        try:
            ctx.load_cert_chain(str(identity / "cert.pem"), str(identity / "key.pem"))
        except (OSError, ssl.SSLError) as e:
            raise RemoteError(f"cannot use the certificate kept in {identity}: {e}") from None
    return ctx


class _Link:
    """One TLS connection to the hub."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def abort(self) -> None:
        try:
            self.writer.transport.abort()
        except Exception:
            pass


async def _connect(host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> _Link:
    where = f"{host}:{port}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=HUB_NAME, ssl_handshake_timeout=timeout
            ),
            timeout,
        )
    except asyncio.TimeoutError:
        raise RemoteError(f"cannot connect to the hub at {where}: timed out") from None
    except ssl.SSLCertVerificationError as e:
        raise RemoteError(
            f"the hub at {where} is not the one the token pins: {e.verify_message}"
        ) from None
    except (OSError, ssl.SSLError) as e:
        raise RemoteError(f"cannot connect to the hub at {where}: {e}") from None
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return _Link(reader, writer)


async def _read_exact(link: _Link, n: int, what: str) -> bytes:
    try:
        return await link.reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise RemoteError(f"the hub closed the connection during {what}") from None
    except (OSError, ssl.SSLError) as e:
        raise RemoteError(f"{what}: {e}") from None


async def _read_len(link: _Link, size: int, limit: int, what: str) -> bytes:
    n = int.from_bytes(await _read_exact(link, size, what), "little")
    if n > limit:
        raise RemoteError(f"{what}: {n} bytes exceeds {limit}")
    return await _read_exact(link, n, what)


async def _exchange(link: _Link, opening: bytes, what: str) -> Tuple[int, Any]:
    """Sends an opening; returns the answer's kind and contents."""
    try:
        link.writer.write(opening)
        await link.writer.drain()
    except (OSError, ssl.SSLError) as e:
        raise RemoteError(f"{what}: {e}") from None
    kind = (await _read_exact(link, 1, what))[0]
    if kind in (ENROLLED, ENROLLED_WITH_KEY):
        cert = await _read_len(link, 4, MAX_DER, what)
        ca = await _read_len(link, 4, MAX_DER, what)
        key = await _read_len(link, 4, MAX_DER, what) if kind == ENROLLED_WITH_KEY else None
        return kind, (cert, ca, key)
    if kind == AUTHORITY_IS:
        return kind, await _read_len(link, 4, MAX_DER, what)
    if kind == OPENED:
        body = await _read_exact(link, 16, what)
        return kind, (int.from_bytes(body[:8], "little"), int.from_bytes(body[8:], "little"))
    if kind in (ENROL_REFUSED, SESSION_REFUSED):
        msg = await _read_len(link, 2, MAX_MESSAGE, what)
        return kind, msg.decode("utf-8", "replace")
    raise RemoteError(f"{what}: the hub answered with an unknown record {kind:#04x}")


def _session_opening(sid: int, received: int) -> bytes:
    return bytes([SESSION]) + sid.to_bytes(8, "little") + received.to_bytes(8, "little")


class _Joiner:
    """The steps of joining: the authority, the identity, a session's links."""

    def __init__(self, url: str, token: JoinToken, state_dir: Path, timeout: float) -> None:
        self.url = url
        self.host, self.port = parse_url(url)
        self.token = token
        self.dir = identity_dir(state_dir, token)
        self.timeout = timeout
        self.ca: Optional[bytes] = None
        self.tls: Optional[ssl.SSLContext] = None

    def _kept_authority(self) -> Optional[bytes]:
        """The authority's certificate kept at enrolment, if it is the pinned one."""
        try:
            der = _first_pem((self.dir / "ca.pem").read_text("ascii", "replace"), "CERTIFICATE")
        except OSError:
            return None
        if der is not None and fingerprint(der) == self.token.fingerprint:
            return der
        return None

    async def authority(self) -> bytes:
        """The authority's certificate: asked for without verification, and accepted
        only if its SHA-256 is the token's fingerprint."""
        link = await _connect(self.host, self.port, _context(None), self.timeout)
        try:
            kind, ca = await _exchange(link, bytes([AUTHORITY]), "asking for the authority")
        finally:
            link.abort()
        if kind != AUTHORITY_IS:
            raise RemoteError("the hub did not answer the request for its authority")
        if fingerprint(ca) != self.token.fingerprint:
            raise RemoteError(
                f"the hub at {self.host}:{self.port} is not the one the token pins: its "
                "authority's fingerprint is not the token's"
            )
        return ca  # type: ignore[no-any-return]

    async def enrol(self, ca: bytes) -> None:
        """Spends the token for a certificate; the hub makes the key. Keeps both and
        the authority's certificate in the identity directory."""
        link = await _connect(self.host, self.port, _context(ca), self.timeout)
        name = self.token.name.encode("utf-8")[:255]
        secret = self.token.secret().encode("ascii")
        opening = (
            bytes([ENROL, len(name)])
            + name
            + len(secret).to_bytes(2, "little")
            + secret
            + (0).to_bytes(4, "little")  # no request: the hub makes the key
        )
        try:
            kind, body = await _exchange(link, opening, "enrolment")
        finally:
            link.abort()
        if kind == ENROL_REFUSED:
            raise Refused(f"enrolment refused: {body}")
        if kind != ENROLLED_WITH_KEY:
            raise RemoteError("enrolment: the hub did not send the key it made")
        cert, ca2, key = body
        if fingerprint(ca2) != self.token.fingerprint:
            raise RemoteError("enrolment: the hub sent an authority other than the one the token pins")
        try:
            _private_dir(self.dir)
            _write_file(self.dir / "key.pem", _pem("PRIVATE KEY", key), 0o600)
            _write_file(self.dir / "ca.pem", _pem("CERTIFICATE", ca2), 0o644)
            _write_file(self.dir / "cert.pem", _pem("CERTIFICATE", cert), 0o644)
        except OSError as e:
            raise RemoteError(f"cannot keep the certificate in {self.dir}: {e}") from None

    async def prepare(self) -> None:
        """The authority checked, and this process's certificate (kept, or obtained
        with the token)."""
        ca = self._kept_authority()
        if ca is None:
            ca = await self.authority()
        if not ((self.dir / "cert.pem").exists() and (self.dir / "key.pem").exists()):
            await self.enrol(ca)
        self.ca = ca
        self.tls = _context(ca, self.dir)
        # From now on the certificate is the credential: the secret is not kept.
        self.token._secret = ""

    async def open_link(self, sid: int, received: int) -> Tuple[_Link, int, int]:
        """A link opening (``sid`` 0) or resuming session ``sid``: the link, the
        session's id and the bytes the hub received in it."""
        assert self.tls is not None
        link = await _connect(self.host, self.port, self.tls, self.timeout)
        try:
            kind, body = await _exchange(link, _session_opening(sid, received), "opening a session")
        except RemoteError as e:
            link.abort()
            if sid == 0 and "closed the connection" in str(e):
                raise RemoteError(
                    f"{e} (the hub did not accept this process's certificate: "
                    f"was {self.dir} made for another deployment?)"
                ) from None
            raise
        except BaseException:
            link.abort()
            raise
        if kind == SESSION_REFUSED:
            link.abort()
            raise Refused(f"session refused: {body}")
        if kind != OPENED:
            link.abort()
            raise RemoteError("opening a session: an unexpected answer")
        return link, body[0], body[1]


# ---- the session --------------------------------------------------------------------


def _record(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + len(payload).to_bytes(4, "little") + payload


async def _within(aw: Any, timeout: float) -> Any:
    """``aw``'s result, or ``asyncio.TimeoutError`` after ``timeout``. Unlike
    ``asyncio.wait_for`` before Python 3.12, never swallows the cancellation of the task
    that awaits it (a link's tasks must all stop when one of them ends the link)."""
    fut = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({fut}, timeout=timeout)
    finally:
        if not fut.done():
            fut.cancel()
    if not done:
        raise asyncio.TimeoutError()
    return fut.result()


class _Lost(Exception):
    """The link broke or fell silent: another may resume the session."""


class _Closed(Exception):
    """The stream ended for good."""


class Session:
    """This side of a session: the local stream, what was sent and not yet
    acknowledged, and what was received. Lives on the link thread's loop."""

    def __init__(
        self,
        joiner: _Joiner,
        local: socket.socket,
        heartbeat: float,
        grace: float,
        max_unacked: int,
    ) -> None:
        self.joiner = joiner
        self.local_sock = local
        self.heartbeat = heartbeat
        self.grace = grace
        self.max_unacked = max_unacked
        self.sid = 0
        self.acked = 0
        self.sent = 0
        self.chunks: Deque[bytes] = collections.deque()
        self.received = 0
        self.local_closed = False
        self.lr: Optional[asyncio.StreamReader] = None
        self.lw: Optional[asyncio.StreamWriter] = None
        self.room: Optional[asyncio.Event] = None
        self.ended = threading.Event()

    def _ack(self, upto: int) -> None:
        if upto < self.acked or upto > self.sent:
            raise _Lost(f"an acknowledgement of {upto} bytes, outside {self.acked}..={self.sent}")
        drop = upto - self.acked
        while drop > 0 and self.chunks:
            front = self.chunks[0]
            if len(front) <= drop:
                drop -= len(front)
                self.chunks.popleft()
            else:
                self.chunks[0] = front[drop:]
                drop = 0
        self.acked = upto
        if self.room is not None and self.sent - self.acked < self.max_unacked:
            self.room.set()

    async def _drain(self, link: _Link) -> None:
        try:
            await _within(link.writer.drain(), self.heartbeat)
        except asyncio.TimeoutError:
            raise _Lost(f"nothing could be written for {int(self.heartbeat * 1000)} ms") from None
        except (OSError, ssl.SSLError) as e:
            raise _Lost(f"cannot write: {e}") from None

    def _write(self, link: _Link, data: bytes) -> None:
        try:
            link.writer.write(data)
        except (OSError, ssl.SSLError, RuntimeError) as e:
            raise _Lost(f"cannot write: {e}") from None

    async def _to_hub(self, link: _Link) -> None:
        """Local stream to the link, as DATA (CLOSE at the local end of stream)."""
        assert self.lr is not None and self.room is not None
        while True:
            if self.sent - self.acked >= self.max_unacked:
                self.room.clear()
                await self.room.wait()
                continue
            try:
                data = await self.lr.read(MAX_RECORD)
            except (OSError, ValueError):
                data = b""
            if not data:
                self.local_closed = True
                self._write(link, _record(CLOSE))
                await self._drain(link)
                raise _Closed()
            self.sent += len(data)
            self.chunks.append(data)
            self._write(link, _record(DATA, data))
            await self._drain(link)

    async def _from_hub(self, link: _Link, state: list) -> None:
        """Records from the link: DATA to the local stream; ACK, PING, CLOSE."""
        assert self.lw is not None
        buf = bytearray()
        while True:
            try:
                data = await link.reader.read(2 * MAX_RECORD)
            except (OSError, ssl.SSLError) as e:
                raise _Lost(f"cannot read: {e}") from None
            if not data:
                raise _Lost("the link closed")
            state[0] = time.monotonic()
            buf += data
            wrote = False
            while len(buf) >= 5:
                kind = buf[0]
                n = int.from_bytes(buf[1:5], "little")
                if n > MAX_RECORD:
                    raise _Lost(f"a record of {n} bytes exceeds {MAX_RECORD}")
                if len(buf) < 5 + n:
                    break
                payload = bytes(buf[5 : 5 + n])
                del buf[: 5 + n]
                if kind == DATA:
                    try:
                        self.lw.write(payload)
                    except (OSError, RuntimeError):
                        await self._local_gone(link)
                    # Written to the local stream, which outlives the link: received.
                    self.received += n
                    wrote = True
                elif kind == ACK and n == 8:
                    self._ack(int.from_bytes(payload, "little"))
                elif kind == PING and n == 0:
                    self._write(link, _record(PONG))
                elif kind == PONG and n == 0:
                    pass
                elif kind == CLOSE and n == 0:
                    try:
                        await _within(self.lw.drain(), self.heartbeat)
                        self.lw.write_eof()
                    except (OSError, RuntimeError, asyncio.TimeoutError):
                        pass
                    self.local_closed = True
                    raise _Closed()
                else:
                    raise _Lost(f"an unknown record {kind:#x} of {n} bytes")
            if self.received - state[1] >= ACK_EVERY:
                self._write(link, _record(ACK, self.received.to_bytes(8, "little")))
                state[1] = self.received
            if wrote:
                # While this process is slow to take what came, the link is not silent:
                # it is not being read.
                state[2] = True
                try:
                    await self.lw.drain()
                except (OSError, RuntimeError):
                    await self._local_gone(link)
                finally:
                    state[2] = False
                state[0] = time.monotonic()

    async def _local_gone(self, link: _Link) -> None:
        self.local_closed = True
        self._write(link, _record(CLOSE))
        await self._drain(link)
        raise _Closed()

    async def _ticks(self, link: _Link, state: list) -> None:
        """PING (and ACK if anything came since the last) every quarter heartbeat; a
        link silent for the heartbeat is broken."""
        while True:
            await asyncio.sleep(self.heartbeat / 4)
            if not state[2] and time.monotonic() - state[0] > self.heartbeat:
                raise _Lost(f"nothing heard for {int(self.heartbeat * 1000)} ms")
            out = _record(PING)
            if self.received != state[1]:
                out += _record(ACK, self.received.to_bytes(8, "little"))
                state[1] = self.received
            self._write(link, out)

    async def run_link(self, link: _Link, peer_received: int) -> bool:
        """Carries the stream over ``link`` until it breaks (True: another link may
        resume the session) or the stream ends (False)."""
        try:
            self._ack(peer_received)
        except _Lost as e:
            _log(f"cannot resume the session: {e}")
            return False
        try:
            for chunk in list(self.chunks):
                for i in range(0, len(chunk), MAX_RECORD):
                    self._write(link, _record(DATA, chunk[i : i + MAX_RECORD]))
                    await self._drain(link)
            if self.local_closed:
                self._write(link, _record(CLOSE))
                await self._drain(link)
                return False
        except _Lost as e:
            self._lost(str(e))
            return True
        # [last heard, bytes received when the last ACK went, writing to the local side]
        state = [time.monotonic(), self.received, False]
        tasks = [
            asyncio.ensure_future(self._to_hub(link)),
            asyncio.ensure_future(self._from_hub(link, state)),
            asyncio.ensure_future(self._ticks(link, state)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ends = [t.exception() for t in done]
        exc = next((e for e in ends if isinstance(e, _Closed)), ends[0])
        if isinstance(exc, _Closed):
            await self._goodbye(link)
            return False
        self._lost(str(exc) if isinstance(exc, _Lost) else repr(exc))
        return True

    def _lost(self, why: str) -> None:
        _log(f"the link to the hub at {self.joiner.url} was lost ({why}); reconnecting")

    async def _goodbye(self, link: _Link) -> None:
        """Lets what was written leave, then closes the link."""
        try:
            link.writer.close()
            await asyncio.wait_for(link.writer.wait_closed(), 1.0)
        except Exception:
            link.abort()

    async def keep(self, first: Tuple[_Link, int, int]) -> None:
        """Carries the session over links until it ends; then closes the local stream."""
        link, self.sid, hub_received = first
        try:
            nxt: Optional[Tuple[_Link, int]] = (link, hub_received)
            while nxt is not None:
                link, peer_received = nxt
                nxt = None
                if not await self.run_link(link, peer_received):
                    return
                link.abort()
                lost_at = time.monotonic()
                backoff = 0.05
                while time.monotonic() - lost_at < self.grace:
                    left = self.grace - (time.monotonic() - lost_at)
                    try:
                        new, _, received = await asyncio.wait_for(
                            self.joiner.open_link(self.sid, self.received),
                            min(self.joiner.timeout, max(left, 0.01)),
                        )
                    except Refused as e:
                        _log(f"the hub at {self.joiner.url} ended the session: {e}")
                        return
                    except (RemoteError, asyncio.TimeoutError, OSError, ssl.SSLError):
                        pass
                    else:
                        _log(f"the link to the hub at {self.joiner.url} is resumed")
                        nxt = (new, received)
                        break
                    left = self.grace - (time.monotonic() - lost_at)
                    await asyncio.sleep(max(0.0, min(backoff, left)))
                    backoff = min(backoff * 2, 2.0)
                if nxt is None:
                    _log(
                        f"no link to the hub at {self.joiner.url} for "
                        f"{int(self.grace * 1000)} ms: the session ended"
                    )
        except Exception as e:  # never end silently
            _log(f"the session with the hub at {self.joiner.url} ended: {e!r}")
        finally:
            if self.lw is not None:
                try:
                    self.lw.close()
                except Exception:
                    pass
            self.ended.set()


class _LinkThread:
    """The daemon thread whose asyncio loop keeps the session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, ctx: None)
        self.thread = threading.Thread(target=self._run, name="yukicomm-remote", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: Optional[float]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class RemoteLink:
    """A joined session: the local end the connection code uses, and the thread that
    keeps the session."""

    def __init__(self, session: Session, thread: _LinkThread, sock: socket.socket) -> None:
        self.session = session
        self.thread = thread
        self.sock = sock

    def close(self, timeout: float = EXIT_FLUSH) -> None:
        """Ends the session for good: what the process wrote is sent, then CLOSE (the
        hub counts the process as gone at once). Waits at most ``timeout``."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.session.ended.wait(timeout)


_links: list = []


def _at_exit() -> None:
    for link in list(_links):
        link.close()


atexit.register(_at_exit)


def open_session(
    url: str,
    token_text: str,
    *,
    state_dir: Optional[os.PathLike] = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
    grace: float = DEFAULT_GRACE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_unacked: int = DEFAULT_MAX_UNACKED,
) -> Tuple[socket.socket, str, RemoteLink]:
    """Joins the hub at ``url`` as the process ``token_text`` names: enrols if this
    process has no certificate yet, opens a session, and returns the local end of the
    session's stream (blocking, for the connection code's ``hello``), the name, and the
    link. Raises :class:`RemoteError` (the token's secret never in its text)."""
    token = JoinToken.parse(token_text)
    if heartbeat <= 0 or grace < 0 or connect_timeout <= 0:
        raise RemoteError("heartbeat and connect_timeout must be positive, grace not negative")
    joiner = _Joiner(url, token, Path(state_dir) if state_dir else default_state_dir(), connect_timeout)
    ours, theirs = socket.socketpair()
    thread = _LinkThread()
    session = Session(joiner, ours, heartbeat, grace, max_unacked)

    async def first() -> Tuple[_Link, int, int]:
        async def steps() -> Tuple[_Link, int, int]:
            await joiner.prepare()
            return await joiner.open_link(0, 0)

        try:
            opened = await asyncio.wait_for(steps(), connect_timeout)
        except asyncio.TimeoutError:
            raise RemoteError(f"joining the hub at {url}: timed out") from None
        ours.setblocking(False)
        session.lr, session.lw = await asyncio.open_unix_connection(sock=ours)
        session.room = asyncio.Event()
        asyncio.ensure_future(session.keep(opened))
        return opened

    try:
        thread.run(first(), connect_timeout + 5.0)
    except BaseException as e:
        thread.stop()
        ours.close()
        theirs.close()
        if isinstance(e, RemoteError):
            raise
        if isinstance(e, Exception):
            raise RemoteError(f"joining the hub at {url}: {e}") from None
        raise
    theirs.setblocking(True)
    link = RemoteLink(session, thread, theirs)
    _links.append(link)
    return theirs, token.name, link


def scrub_env(var: str) -> None:
    """Overwrites the variable's value in place where the kernel shows it
    (``/proc/<pid>/environ``), then removes it from the environment."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        libc.strlen.restype = ctypes.c_size_t
        libc.strlen.argtypes = [ctypes.c_void_p]
        p = libc.getenv(var.encode())
        if p:
            ctypes.memset(p, ord("0"), libc.strlen(p))
    except Exception:
        pass
    os.environ.pop(var, None)
