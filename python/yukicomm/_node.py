"""The connection to the hub: one per process. It owns the socket, the state of every
channel end this process holds, the calls awaiting replies, the store's subscriptions and
the services served here.

Reading is shared, as in the Rust client (``crates/link/src/role.rs``): a background
reader thread normally holds the *read role* and waits in ``poll``; a thread about to
block waiting for its own message takes the role instead and reads the socket itself,
so the message reaches it with no thread hand-off. Whoever reads dispatches every frame
to whoever it is for: blocking waiters wake on one condition variable, asyncio waiters
through ``call_soon_threadsafe`` (the event loop is never blocked), and passive handlers,
subscriber callbacks and service handlers run on one handler thread with its own event
loop, never under a lock that routing needs.

Lock order: ``_wlock`` (writing the socket) before ``_lock`` (the state). Nothing
writes the socket while holding ``_lock``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
import socket
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import msgpack

from . import _wire as w
from .errors import (
    ConnectError,
    HubGone,
    ProtocolError,
    Timeout,
)

#: How long the background reader leaves the role to receivers after one gave it back.
LINGER = 0.0002
#: The longest the background reader naps while receivers hold the role.
MAX_NAP = 0.02
#: The longest a reading waiter stays in ``poll`` before looking at its condition again.
POLL_SLICE = 0.05

_NOTHING = object()


def log(text: str) -> None:
    """Prints a warning of the client on standard error (the supervisor prefixes it
    with the child's name)."""
    try:
        sys.stderr.write(f"yukicomm: {text}\n")
        sys.stderr.flush()
    except Exception:
        pass


class EndState:
    """One channel end this process holds: sending credit, received messages,
    receive mode, and what the hub said about the peer and the channel."""

    __slots__ = (
        "chan",
        "end",
        "name",
        "grants",
        "held",
        "credit",
        "inflight",
        "queue",
        "mode",
        "attached",
        "consumed",
        "consumed_bytes",
        "peer_gone",
        "peer_queued",
        "closed",
        "closed_queued",
        "handlers",
        "own",
    )

    def __init__(self, chan: int, end: int, window: int) -> None:
        self.chan = chan
        self.end = end
        self.name: Optional[str] = None
        self.grants = 0
        self.held = False
        self.credit = window
        self.inflight = 0
        self.queue: Deque[bytes] = collections.deque()
        self.mode: Optional[str] = None  # None, "active" or "passive"
        self.attached = False
        self.consumed = 0
        self.consumed_bytes = 0
        self.peer_gone = False
        self.peer_queued = False
        self.closed = False
        self.closed_queued = False
        self.handlers: List[Tuple[Any, Any]] = []
        self.own = False  # the child's own NAME-active / NAME-passive end: never released

    def label(self) -> str:
        if self.name:
            return f"'{self.name}'"
        return f"#{self.chan}"

    def receive_failure(self) -> Optional[str]:
        """Why receiving fails now that the queue is empty, or None to wait on."""
        if self.closed and not self.closed_queued:
            return "closed"
        if self.peer_gone and not self.peer_queued:
            return "disconnected"
        return None


class Slot:
    """A call awaiting one reply: a Request, an Op or a Call."""

    __slots__ = ("done", "value", "status")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.status = 0


class SubState:
    """A subscription or watch: its deliveries, or its callback."""

    __slots__ = ("sub", "pattern", "queue", "callback", "pending_credit", "ended", "granted")

    def __init__(self, sub: int, pattern: str, callback: Any = None) -> None:
        self.sub = sub
        self.pattern = pattern
        self.queue: Deque[Tuple[int, Any, Any, Any]] = collections.deque()
        self.callback = callback
        self.pending_credit = 0
        self.ended = False
        self.granted = 1


class Runner:
    """The handler thread: an asyncio event loop of its own, where passive handlers,
    subscriber callbacks and service handlers run, in arrival order."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="yukicomm-handlers", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro_fn: Callable[..., Any], *args: Any) -> None:
        """Runs ``coro_fn(*args)`` (a coroutine function) as a task on the loop."""

        def start() -> None:
            self.loop.create_task(coro_fn(*args))

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:
            pass


class Node:
    """This process's connection to the hub. Made by :func:`yukicomm.connect`."""

    def __init__(self, sock: socket.socket, name: str, exit_on_loss: bool) -> None:
        self.sock = sock
        self.exit_on_loss = exit_on_loss
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wlock = threading.Lock()
        self._role = threading.Lock()
        self._wanted = 0
        self._polling = False
        self._released_at = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._rbuf = bytearray()
        self._lost: Optional[HubGone] = None
        self._next_id = 1
        self.pending: Dict[int, Slot] = {}
        self.ends: Dict[Tuple[int, int], EndState] = {}
        self.subs: Dict[int, SubState] = {}
        self._next_sub = 1
        self.served: Dict[str, Any] = {}  # service name -> handler table
        self.serving: Dict[int, Any] = {}  # hub call id -> task
        self._async_waiters: List[Tuple[Callable[[], bool], asyncio.AbstractEventLoop, Any]] = []
        self._runner: Optional[Runner] = None
        self._runner_lock = threading.Lock()
        self.max_frame = w.DEFAULT_MAX_FRAME
        self.window = 4096
        self.window_bytes = 32 * 1024 * 1024
        self.name = name
        self.active = 0
        self.passive = 0
        self._hello(name)
        if self._rbuf:  # frames that came with the welcome
            self._drain_buffer()
        self._reader = threading.Thread(target=self._background, name="yukicomm-reader", daemon=True)
        self._reader.start()

    # ---- joining ----------------------------------------------------------------

    def _hello(self, name: str) -> None:
        self.sock.sendall(
            w.request_frame(0, {"op": "hello", "version": w.VERSION, "name": name, "token": ""})
        )
        deadline = time.monotonic() + 10.0
        while True:
            frame = self._next_frame_blocking(deadline)
            kind, payload = frame
            if kind != w.REPLY or len(payload) < 4:
                raise ConnectError(f"the hub answered hello with a frame of kind {kind}")
            m = w.control_map(payload[4:], "reply", "hello reply")
            if m["reply"] == "error":
                raise ConnectError(
                    f"the hub refused child '{name}': {m.get('code')}: {m.get('message')}"
                )
            if m["reply"] != "welcome":
                raise ConnectError(f"the hub answered hello with '{m['reply']}'")
            self.name = str(m.get("name", name))
            self.window = max(1, w.uint(m, "window", "welcome"))
            self.window_bytes = max(1, w.uint(m, "window_bytes", "welcome"))
            self.max_frame = w.uint(m, "max_frame", "welcome")
            self.active = w.uint(m, "active", "welcome")
            self.passive = w.uint(m, "passive", "welcome")
            for chan, suffix in ((self.active, "active"), (self.passive, "passive")):
                st = self._hold(chan, 0)
                st.name = f"{self.name}-{suffix}"
                st.own = True
            return

    def _next_frame_blocking(self, deadline: float) -> Tuple[int, memoryview]:
        while True:
            f = self._split_one()
            if f is not None:
                return f
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectError("the hub did not answer hello within 10 s")
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                data = self.sock.recv(1 << 16)
                if not data:
                    raise ConnectError("the hub closed the connection during hello")
                self._rbuf += data

    def _split_one(self) -> Optional[Tuple[int, memoryview]]:
        buf = self._rbuf
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[0:4], "little")
        if n == 0 or n > self.max_frame:
            raise ProtocolError(f"the hub sent a frame length of {n} (limit {self.max_frame})")
        if len(buf) < 4 + n:
            return None
        kind = buf[4]
        payload = memoryview(bytes(buf[5 : 4 + n]))
        del buf[: 4 + n]
        return kind, payload

    # ---- state helpers (called with _lock held) ------------------------------------

    def _hold(self, chan: int, end: int) -> EndState:
        """Counts one grant of an end; a newly held end starts with a fresh window."""
        st = self.ends.get((chan, end))
        if st is None:
            st = EndState(chan, end, self.window)
            self.ends[(chan, end)] = st
        if not st.held:
            st.held = True
            st.credit = self.window
            st.inflight = 0
        st.grants += 1
        return st

    def next_id(self) -> int:
        """A new id for a Request, Op or Call (one counter, as the Rust client)."""
        while True:
            rid = self._next_id
            self._next_id = rid + 1 if rid < 0xFFFFFFFF else 1
            if rid not in self.pending:
                return rid

    def new_sub(self) -> int:
        sub = self._next_sub
        self._next_sub += 1
        return sub

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def lost(self) -> Optional[HubGone]:
        return self._lost

    # ---- writing ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Writes frames, whole, in order with other writers."""
        with self._wlock:
            self.write_locked(data)

    def write_locked(self, data: bytes) -> None:
        """Writes with ``_wlock`` already held by the caller."""
        if self._lost is not None:
            raise self._lost
        try:
            self.sock.sendall(data)
        except OSError as e:
            self._connection_lost(HubGone(f"lost the hub connection: {e}"))
            raise self._lost or HubGone("lost the hub connection") from None

    @property
    def wlock(self) -> threading.Lock:
        return self._wlock

    def request(self, body: Dict[str, Any], timeout: Optional[float], what: str) -> Dict[str, Any]:
        """Sends a Request and waits for its Reply map."""
        slot = Slot()
        with self._lock:
            rid = self.next_id()
            self.pending[rid] = slot
        try:
            self.write(w.request_frame(rid, body))
            self.wait(lambda: slot.done, timeout, what)
        finally:
            with self._lock:
                self.pending.pop(rid, None)
        return slot.value  # type: ignore[no-any-return]

    async def request_async(
        self, body: Dict[str, Any], timeout: Optional[float], what: str
    ) -> Dict[str, Any]:
        slot = Slot()
        with self._lock:
            rid = self.next_id()
            self.pending[rid] = slot
        try:
            self.write(w.request_frame(rid, body))
            await self.wait_async(lambda: slot.done, timeout, what)
        finally:
            with self._lock:
                self.pending.pop(rid, None)
        return slot.value  # type: ignore[no-any-return]

    def start_call(self, build: Callable[[int], bytes]) -> Tuple[int, Slot]:
        """Registers a slot, then writes the frame ``build(id)``."""
        slot = Slot()
        with self._lock:
            rid = self.next_id()
            self.pending[rid] = slot
        try:
            self.write(build(rid))
        except BaseException:
            with self._lock:
                self.pending.pop(rid, None)
            raise
        return rid, slot

    def forget(self, rid: int) -> None:
        with self._lock:
            self.pending.pop(rid, None)

    # ---- waiting --------------------------------------------------------------------

    def wait(self, ready: Callable[[], bool], timeout: Optional[float], what: str) -> None:
        """Blocks until ``ready()`` (called with the state lock held) is true; reads the
        socket itself when nobody else does. Raises :class:`Timeout` naming ``what``
        after ``timeout`` seconds (None: no limit), :class:`HubGone` if the connection
        is lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while True:
                    if ready():
                        return
                    if self._lost is not None:
                        raise self._lost
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
                    if self._role.acquire(False):
                        break
                    self._wanted += 1
                    if self._polling:
                        self._poke()
                    self._cond.wait(left)
                    self._wanted -= 1
            try:
                slice_ = POLL_SLICE if left is None else min(left, POLL_SLICE)
                self._read_once(slice_)
            finally:
                with self._cond:
                    self._role.release()
                    self._released_at = time.monotonic()
                    self._cond.notify_all()

    async def wait_async(
        self, ready: Callable[[], bool], timeout: Optional[float], what: str
    ) -> None:
        """As :meth:`wait`, for asyncio: never blocks the event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if ready():
                return
            if self._lost is not None:
                raise self._lost
            fut = loop.create_future()
            entry = (ready, loop, fut)
            self._async_waiters.append(entry)
        try:
            while True:
                try:
                    if timeout is None:
                        await asyncio.shield(fut)
                    else:
                        await asyncio.wait_for(asyncio.shield(fut), timeout)
                except asyncio.TimeoutError:
                    raise Timeout(f"timed out after {timeout:g} s waiting for {what}") from None
                with self._lock:
                    if ready():
                        return
                    if self._lost is not None:
                        raise self._lost
                    # Woken, then someone else took it: wait again.
                    fut = loop.create_future()
                    entry = (ready, loop, fut)
                    self._async_waiters.append(entry)
        finally:
            with self._lock:
                try:
                    self._async_waiters.remove(entry)
                except ValueError:
                    pass

    def _wake_async(self) -> None:
        """With the lock held: wakes the asyncio waiters whose condition holds."""
        if not self._async_waiters:
            return
        keep = []
        for entry in self._async_waiters:
            ready, loop, fut = entry
            try:
                ok = self._lost is not None or ready()
            except Exception:
                ok = True
            if ok:
                try:
                    loop.call_soon_threadsafe(_set_done, fut)
                except RuntimeError:
                    pass  # that loop is closed
            else:
                keep.append(entry)
        self._async_waiters[:] = keep

    def notify(self) -> None:
        """With the lock held: wakes every waiter to look at its condition again."""
        self._cond.notify_all()
        self._wake_async()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ---- reading ----------------------------------------------------------------

    def _background(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        nap = LINGER
        fd = self.sock.fileno()
        while self._lost is None:
            with self._cond:
                busy = (
                    self._wanted > 0
                    or time.monotonic() - self._released_at < LINGER
                    or not self._role.acquire(False)
                )
                if not busy:
                    self._polling = True
            if busy:
                time.sleep(nap)
                nap = min(nap * 2, MAX_NAP)
                continue
            nap = LINGER
            try:
                events = poller.poll(1000)
                with self._cond:
                    self._polling = False
                readable = False
                for f, _ in events:
                    if f == fd:
                        readable = True
                    else:
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                if readable:
                    self._read_available()
            except Exception as e:  # never let the reader die silently
                self._connection_lost(HubGone(f"lost the hub connection: {e}"))
            finally:
                with self._cond:
                    self._polling = False
                    self._role.release()
                    self._cond.notify_all()

    def _read_once(self, timeout: float) -> None:
        """With the role held: waits up to ``timeout`` for data, then reads it."""
        try:
            r, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError) as e:
            self._connection_lost(HubGone(f"lost the hub connection: {e}"))
            return
        if r:
            self._read_available()

    def _read_available(self) -> None:
        """With the role held: one ``recv``, then every whole frame is dispatched."""
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError as e:
            self._connection_lost(HubGone(f"lost the hub connection: {e}"))
            return
        if not data:
            if self._rbuf:
                self._connection_lost(
                    ProtocolError("the hub closed the connection in the middle of a frame")
                )
            else:
                self._connection_lost(HubGone("lost the hub connection (end of stream)"))
            return
        self._rbuf += data
        self._drain_buffer()

    def _drain_buffer(self) -> None:
        """With the role held (or before the reader starts): dispatches every whole
        frame in the read buffer."""
        buf = self._rbuf
        frames = []
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 4:
                ln = int.from_bytes(buf[pos : pos + 4], "little")
                if ln == 0 or ln > self.max_frame:
                    raise ProtocolError(
                        f"the hub sent a frame length of {ln} (limit {self.max_frame})"
                    )
                if n - pos < 4 + ln:
                    break
                frames.append((buf[pos + 4], memoryview(bytes(buf[pos + 5 : pos + 4 + ln]))))
                pos += 4 + ln
            del buf[:pos]
            self._dispatch(frames)
        except ProtocolError as e:
            self._connection_lost(e)

    def _connection_lost(self, err: HubGone) -> None:
        with self._cond:
            if self._lost is not None:
                return
            self._lost = err
            self.notify()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.exit_on_loss:
            log(f"{err}; exiting")
            try:
                sys.stdout.flush()
            except Exception:
                pass
            os._exit(70)
        else:
            log(str(err))

    # ---- dispatch -------------------------------------------------------------------

    def _dispatch(self, frames: List[Tuple[int, memoryview]]) -> None:
        jobs: List[Tuple[Any, ...]] = []
        with self._lock:
            for kind, p in frames:
                if kind == w.MSG:
                    self._on_msg(p, jobs)
                elif kind == w.CREDIT:
                    chan, end, n, nbytes = w.parse_credit(p)
                    st = self.ends.get((chan, end))
                    if st is not None and st.held:
                        st.credit += n
                        st.inflight = max(0, st.inflight - nbytes)
                elif kind == w.REPLY:
                    if len(p) < 4:
                        raise ProtocolError("malformed Reply frame from the hub: no id")
                    rid = int.from_bytes(p[:4], "little")
                    m = w.control_map(p[4:], "reply", "Reply")
                    slot = self.pending.get(rid)
                    if slot is not None:
                        slot.value = m
                        slot.done = True
                elif kind == w.EVENT:
                    self._on_event(w.control_map(p, "event", "Event"))
                elif kind == w.OP_REPLY:
                    r = w.Reader(p, "OpReply")
                    rid = r.u32()
                    status, value = w.op_reply(r)
                    slot = self.pending.get(rid)
                    if slot is not None:
                        slot.status = status
                        slot.value = value
                        slot.done = True
                elif kind == w.DELIVERY:
                    self._on_delivery(w.Reader(p, "Delivery"), jobs)
                elif kind == w.CALL:
                    r = w.Reader(p, "Call")
                    rid, timeout_ms, _flags = r.u32(), r.u32(), r.u8()
                    service = r.short_string()
                    method = r.short_string()
                    if not service or not method:
                        raise r.bad("an empty name")
                    jobs.append(("call", rid, timeout_ms, service, method, r.rest()))
                elif kind == w.CALL_REPLY:
                    r = w.Reader(p, "CallReply")
                    rid, status = r.u32(), r.u8()
                    if status > 10:
                        raise r.bad(f"unknown status {status}")
                    slot = self.pending.get(rid)
                    if slot is not None:
                        slot.status = status
                        slot.value = r.rest()
                        slot.done = True
                elif kind == w.CANCEL:
                    if len(p) != 4:
                        raise ProtocolError("malformed Cancel frame from the hub")
                    jobs.append(("cancel", int.from_bytes(p, "little")))
                else:
                    raise ProtocolError(f"the hub sent a frame of kind {kind}")
            self.notify()
        if jobs:
            self._run_jobs(jobs)

    def _on_msg(self, p: memoryview, jobs: List[Tuple[Any, ...]]) -> None:
        chan, to, body, carried = w.parse_msg(p)
        for c, e in carried:
            self._hold(c, e)
        st = self.ends.get((chan, to))
        if st is None or not st.held:
            return  # released meanwhile: dropped, its carried ends counted above
        if st.mode == "passive":
            jobs.append(("passive", st, bytes(body)))
        else:
            st.queue.append(bytes(body))

    def _on_event(self, m: Dict[str, Any]) -> None:
        ev = m["event"]
        if ev == "peer_gone" or ev == "peer_back":
            chan = w.uint(m, "chan", ev)
            end = w.end_of(m.get("end"), ev)
            st = self.ends.get((chan, 1 - end))
            if st is not None:
                if ev == "peer_gone":
                    st.peer_gone = True
                    st.peer_queued = w.opt_bool(m, "queued")
                else:
                    st.peer_gone = False
                    st.peer_queued = False
        elif ev == "closed":
            chan = w.uint(m, "chan", ev)
            for end in (0, 1):
                st = self.ends.get((chan, end))
                if st is not None:
                    st.closed = True
                    st.closed_queued = w.opt_bool(m, "queued")
        elif ev == "refused":
            chan = w.opt_uint(m, "chan")
            where = ""
            if chan is not None:
                st = self.ends.get((chan, 0)) or self.ends.get((chan, 1))
                where = f" on channel {st.label() if st else '#' + str(chan)}"
            log(f"the hub refused a frame{where}: {m.get('code')}: {m.get('message')}")
        # unknown events: ignored (forward compatible)

    def _on_delivery(self, r: w.Reader, jobs: List[Tuple[Any, ...]]) -> None:
        sub = r.u32()
        what = r.u8()
        if what == 1:
            item: Tuple[int, Any, Any, Any] = (1, r.string(), r.rest(), None)
        elif what == 2:
            item = (2, r.u64(), None, None)
        elif what == 3:
            kind = r.u8()
            key = r.string()
            item = (3, kind, key, r.rest())
        else:
            raise r.bad(f"unknown delivery {what}")
        s = self.subs.get(sub)
        if s is None or s.ended:
            return  # just unsubscribed
        if s.callback is not None:
            jobs.append(("sub", s, item))
        else:
            s.queue.append(item)

    # ---- handlers -------------------------------------------------------------------

    def runner(self) -> Runner:
        """The handler thread, started on first use."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = Runner()
            return self._runner

    def _run_jobs(self, jobs: List[Tuple[Any, ...]]) -> None:
        from . import _handlers

        runner = self.runner()
        for job in jobs:
            tag = job[0]
            if tag == "passive":
                runner.submit(_handlers.passive, self, job[1], job[2])
            elif tag == "sub":
                runner.submit(_handlers.subscription, self, job[1], job[2])
            elif tag == "call":
                runner.loop.call_soon_threadsafe(_handlers.start_call, self, *job[1:])
            elif tag == "cancel":
                runner.loop.call_soon_threadsafe(_handlers.cancel_call, self, job[1])

    # ---- consuming ------------------------------------------------------------------

    def consumed(self, st: EndState, nbytes: int) -> Optional[bytes]:
        """With the lock held: counts one consumed message of ``nbytes`` body bytes;
        returns a Credit frame to write (after unlocking) once a batch is due."""
        st.consumed += 1
        st.consumed_bytes += nbytes
        if st.consumed >= max(1, self.window // 2) or st.consumed_bytes >= max(
            1, self.window_bytes // 2
        ):
            f = w.credit_frame(st.chan, st.end, st.consumed, st.consumed_bytes)
            st.consumed = 0
            st.consumed_bytes = 0
            return f
        return None

    def write_quiet(self, data: Optional[bytes]) -> None:
        """Writes a frame if there is one; a lost connection is reported elsewhere."""
        if data is None:
            return
        try:
            self.write(data)
        except HubGone:
            pass

    def attach(self, st: EndState, mode: str) -> Optional[bytes]:
        """With the lock held: puts the end in a receive mode (first use), returning the
        ``attach`` notice to write."""
        from .errors import ModeError

        if st.mode is None:
            st.mode = mode
        elif st.mode != mode:
            raise ModeError(
                f"channel {st.label()} receives with "
                f"{'on_receive' if st.mode == 'passive' else 'receive'} in this process; "
                "one mode per channel end"
            )
        if st.attached:
            return None
        st.attached = True
        return w.notice_frame(
            {
                "op": "attach",
                "chan": st.chan,
                "end": w.END_NAMES[st.end],
                "credit": self.window,
                "bytes": self.window_bytes,
            }
        )

    def decode(self, body: bytes) -> Any:
        """Decodes a message body; channel handles join this node."""
        return msgpack.unpackb(
            body, raw=False, strict_map_key=False, ext_hook=self._ext_hook, use_list=True
        )

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == w.CHANNEL_EXT and len(data) == 5:
            from .channel import Channel

            chan = int.from_bytes(data[:4], "little")
            end = data[4]
            if end > 1:
                return msgpack.ExtType(code, data)
            with self._lock:
                st = self.ends.get((chan, end))
                if st is None:
                    # Not carried: no hold (the hub will refuse its use); kept as a handle.
                    st = EndState(chan, end, self.window)
                    self.ends[(chan, end)] = st
            return Channel._bind(self, st)
        return msgpack.ExtType(code, data)


def _set_done(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)
