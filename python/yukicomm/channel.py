"""Channels: named, duplex, bounded, between any processes of a yukicomm program.

A :class:`Channel` is a handle on one *end* of a channel held by this process: what it
sends arrives at the other end, exactly once, in order, never back at the sender. It
receives in one of two modes per process: actively (``receive``, ``async_receive``,
iteration) or passively (``on_receive`` handlers). Sending respects the hub's credit
window: ``send`` waits while the window is used up, ``try_send`` fails at once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import time
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Generic,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
)

import msgpack

from . import _wire as w
from .errors import (
    ChannelClosed,
    DecodeError,
    Disconnected,
    EncodeError,
    Full,
    HubGone,
    Timeout,
    TooLarge,
)

if TYPE_CHECKING:
    from ._node import EndState, Node

T = TypeVar("T")

__all__ = ["Channel", "select", "async_select"]


def _default(carried: List[Tuple[int, int]], obj: Any) -> Any:
    """Encodes what MessagePack does not know: channels (extension type 1, section 11
    of the protocol), dataclasses (as maps, like Rust structs), enum members (their
    name, like Rust unit variants)."""
    end_of = getattr(obj, "_yukicomm_end", None) if not isinstance(obj, type) else None
    if end_of is not None:
        st = end_of()
        carried.append((st.chan, st.end))
        return msgpack.ExtType(w.CHANNEL_EXT, w._CARRIED.pack(st.chan, st.end))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot encode a {type(obj).__name__}")


def encode(value: Any) -> Tuple[bytes, List[Tuple[int, int]]]:
    """A value as MessagePack, and the channel ends it carries."""
    try:
        # Plain values (the common case) need no hook.
        return _packb(value, use_bin_type=True), _NO_CARRIED
    except TypeError:
        pass
    carried: List[Tuple[int, int]] = []
    body = msgpack.packb(value, default=functools.partial(_default, carried), use_bin_type=True)
    return body, carried


_packb = msgpack.packb
_NO_CARRIED: List[Tuple[int, int]] = []


class Channel(Generic[T]):
    """One end of a channel, held by this process.

    ``Channel()`` makes a new channel whose end ``A`` this process holds (give it a name
    with ``Channel("name")`` or :func:`yukicomm.set_channel`, and whoever looks it up
    gets end ``B``); :meth:`pair` makes one and returns both ends, to send one inside a
    message. Usually channels come from :func:`yukicomm.get_channel`, or are a child's
    own ``active_channel`` and ``passive_channel``.

    ``type_name`` is the type recorded in the hub (a Rust peer checks it against
    ``std::any::type_name::<T>()``, e.g. ``"alloc::string::String"``). ``type`` is a
    Python type (or tuple of types) that :meth:`send` checks values against.
    """

    _st: "EndState"
    _node: "Node"
    _type: Any

    def __init__(
        self, name: Optional[str] = None, *, type_name: str = "", type: Any = None
    ) -> None:
        from . import _process

        node = _process.node()
        reply = node.request({"op": "create", "type_name": type_name, "pair": False}, 10.0, "create")
        chan = _created(reply)
        with node.lock:
            st = node._hold(chan, 0)
        self._node = node
        self._st = st
        self._type = type
        if name is not None:
            _process.set_channel(name, self)

    @classmethod
    def pair(cls, *, type_name: str = "", type: Any = None) -> Tuple["Channel[Any]", "Channel[Any]"]:
        """Makes a new channel and returns both its ends ``(a, b)``: send ``b`` inside a
        message to give the other end to another process."""
        from . import _process

        node = _process.node()
        reply = node.request({"op": "create", "type_name": type_name, "pair": True}, 10.0, "create")
        chan = _created(reply)
        with node.lock:
            a = node._hold(chan, 0)
            b = node._hold(chan, 1)
        return cls._bind(node, a, type), cls._bind(node, b, type)

    @classmethod
    def _bind(cls, node: "Node", st: "EndState", type: Any = None) -> "Channel[Any]":
        ch: Channel[Any] = cls.__new__(cls)
        ch._node = node
        ch._st = st
        ch._type = type
        return ch

    def _yukicomm_end(self) -> "EndState":
        return self._st

    def __repr__(self) -> str:
        return f"<Channel {self._st.label()} end {w.END_NAMES[self._st.end]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Channel) and other._st is self._st

    def __hash__(self) -> int:
        return hash((self._st.chan, self._st.end))

    @property
    def name(self) -> Optional[str]:
        """The name it was looked up or registered with, if any."""
        return self._st.name

    @property
    def id(self) -> int:
        """The channel's number in the hub."""
        return self._st.chan

    @property
    def end(self) -> str:
        """The end this handle holds: ``"A"`` or ``"B"``."""
        return w.END_NAMES[self._st.end]

    @property
    def is_closed(self) -> bool:
        """Whether the channel was closed (messages sent before may still be received)."""
        return self._st.closed

    # ---- sending ----------------------------------------------------------------

    def _frame(self, data: Any) -> Tuple[bytes, int]:
        if self._type is not None and not isinstance(data, self._type):
            raise EncodeError(
                f"channel {self._st.label()} carries {self._type!r}, not {type(data).__name__}"
            )
        try:
            body, carried = encode(data)
        except Exception as e:
            raise EncodeError(f"cannot send on channel {self._st.label()}: {e}") from None
        if len(carried) > 0xFFFF:
            raise EncodeError(f"a message on {self._st.label()} carries too many channels")
        st = self._st
        if carried:
            f = w.msg_frame(st.chan, 1 - st.end, body, carried)
        else:
            f = _MSG_HEAD(8 + len(body), w.MSG, st.chan, 1 - st.end, 0) + body
        if len(f) - 4 > self._node.max_frame:
            raise TooLarge(
                f"a message of {len(body)} bytes is larger than channel {st.label()} takes "
                f"(frames of at most {self._node.max_frame} bytes)"
            )
        return f, len(body)

    def _try_write(self, f: bytes, nbytes: int) -> Optional[str]:
        """Writes the frame if the window allows; otherwise why not (``"full"``,
        ``"closed"``, ``"disconnected"``)."""
        node = self._node
        st = self._st
        with node._wlock:
            with node._lock:
                if node._lost is not None:
                    raise node._lost
                if st.closed:
                    return "closed"
                if not st.held:
                    return "released"
                if st.credit > 0 and st.inflight < node.window_bytes:
                    st.credit -= 1
                    st.inflight += nbytes
                else:
                    return "disconnected" if st.peer_gone and not st.peer_queued else "full"
            node.write_locked(f)
        return None

    def _send_error(self, why: str) -> Exception:
        label = self._st.label()
        if why == "closed":
            return ChannelClosed(f"channel {label} is closed")
        if why == "released":
            return ChannelClosed(f"channel {label} was released by this process")
        if why == "disconnected":
            return Disconnected(f"channel {label}: nobody holds the other end and its window is used up")
        return Full(f"channel {label}: the window is used up")

    def _can_send(self) -> bool:
        st = self._st
        return (
            (st.credit > 0 and st.inflight < self._node.window_bytes)
            or st.closed
            or not st.held
            or (st.peer_gone and not st.peer_queued)
        )

    def send(self, data: T, timeout: Optional[float] = None) -> None:
        """Sends ``data``; does not wait for the receiver, only (up to ``timeout``
        seconds, None for no limit) for room in the window.

        Raises :class:`ChannelClosed`, :class:`Disconnected` (nobody at the other end
        and the window used up), :class:`Timeout`, :class:`TooLarge`,
        :class:`EncodeError`, :class:`HubGone`."""
        f, n = self._frame(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            why = self._try_write(f, n)
            if why is None:
                return
            if why != "full":
                raise self._send_error(why)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._node.wait(self._can_send, left, f"room on channel {self._st.label()}")

    def try_send(self, data: T) -> None:
        """Sends ``data`` if the window has room now; raises :class:`Full` otherwise."""
        f, n = self._frame(data)
        why = self._try_write(f, n)
        if why is not None:
            raise self._send_error(why)

    async def async_send(self, data: T, timeout: Optional[float] = None) -> None:
        """As :meth:`send`, awaiting room in the window without blocking the event loop."""
        f, n = self._frame(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            why = self._try_write(f, n)
            if why is None:
                return
            if why != "full":
                raise self._send_error(why)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await self._node.wait_async(self._can_send, left, f"room on channel {self._st.label()}")

    # ---- receiving --------------------------------------------------------------

    def _ready(self) -> bool:
        st = self._st
        return bool(st.queue) or st.receive_failure() is not None or not st.held

    def _start_active(self) -> None:
        node = self._node
        with node.lock:
            f = node.attach(self._st, "active")
        if f is not None:
            node.write(f)

    def _take(self) -> Any:
        """Takes one message if there is one: the value, or _EMPTY."""
        node = self._node
        st = self._st
        with node.lock:
            if st.queue:
                body = st.queue.popleft()
                credit = node.consumed(st, len(body))
            else:
                why = st.receive_failure()
                if why == "closed":
                    raise ChannelClosed(f"channel {st.label()} is closed")
                if why == "disconnected":
                    raise Disconnected(f"channel {st.label()}: every process at the other end has gone")
                if not st.held:
                    raise ChannelClosed(f"channel {st.label()} was released by this process")
                if node.lost() is not None:
                    raise node.lost()  # type: ignore[misc]
                return _EMPTY
        node.write_quiet(credit)
        try:
            return node.decode(body)
        except Exception as e:
            raise DecodeError(f"a message on channel {st.label()} did not decode: {e}") from None

    def receive(self, timeout: Optional[float] = None) -> T:
        """Waits for the next message and returns it (up to ``timeout`` seconds; None
        waits as long as it takes).

        Raises :class:`Timeout`, :class:`ChannelClosed` (closed, and nothing sent before
        the close is left), :class:`Disconnected` (the other end's processes have gone,
        nothing they sent is left), :class:`DecodeError`, :class:`ModeError`,
        :class:`HubGone`."""
        self._start_active()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            v = self._take()
            if v is not _EMPTY:
                return v  # type: ignore[no-any-return]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._node.wait(self._ready, left, f"a message on channel {self._st.label()}")

    def try_receive(self) -> T:
        """Returns a message already received; raises :class:`Timeout` if there is none."""
        self._start_active()
        v = self._take()
        if v is _EMPTY:
            raise Timeout(f"no message waiting on channel {self._st.label()}")
        return v  # type: ignore[no-any-return]

    async def async_receive(self, timeout: Optional[float] = None) -> T:
        """As :meth:`receive`, for asyncio: awaits without blocking the event loop."""
        self._start_active()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            v = self._take()
            if v is not _EMPTY:
                return v  # type: ignore[no-any-return]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await self._node.wait_async(self._ready, left, f"a message on channel {self._st.label()}")

    def __iter__(self) -> Iterator[T]:
        """Receives until the channel is closed or the other end has gone."""
        while True:
            try:
                yield self.receive()
            except (ChannelClosed, Disconnected):
                return

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.async_receive()
            except (ChannelClosed, Disconnected):
                return

    def on_receive(
        self, filter_func: Optional[Callable[[Any], Any]] = None
    ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Decorator: runs the decorated function (sync or async) with every message
        ``filter_func`` (sync or async; None accepts all) accepts. Handlers run on the
        client's handler thread, in arrival order; a handler that raises is logged.
        Puts this end in passive mode in this process."""

        def register(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
            node = self._node
            with node.lock:
                f = node.attach(self._st, "passive")
                self._st.handlers.append((filter_func, handler))
            node.runner()
            if f is not None:
                node.write(f)
            return handler

        return register

    # ---- ending -----------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel for everyone: sending then fails; what was sent before
        is still received, then receiving fails with :class:`ChannelClosed`."""
        try:
            self._node.write(w.notice_frame({"op": "close", "chan": self._st.chan}))
        except HubGone:
            pass

    def release(self) -> None:
        """Gives this process's hold on the end back to the hub (all handles on the
        same end in this process stop working). A child's own two channels are never
        released."""
        node = self._node
        st = self._st
        with node.lock:
            if st.own or not st.held or st.grants == 0:
                return
            count = st.grants
            st.grants = 0
            st.held = False
            st.attached = False
            st.mode = None
            st.queue.clear()
            node.notify()
        node.write_quiet(
            w.notice_frame({"op": "release", "chan": st.chan, "end": w.END_NAMES[st.end], "count": count})
        )


_EMPTY = object()
_MSG_HEAD = w._MSG_HEAD.pack


def _created(reply: Dict[str, Any]) -> int:
    from .errors import RegistryError

    if reply.get("reply") != "created":
        raise RegistryError(f"the hub refused to create a channel: {reply.get('message')}", str(reply.get("code", "")))
    return w.uint(reply, "chan", "created")


def _select_ready(channels: Tuple[Channel[Any], ...]) -> Callable[[], bool]:
    def ready() -> bool:
        return any(c._ready() for c in channels)

    return ready


def select(*channels: Channel[Any], timeout: Optional[float] = None) -> Tuple[Channel[Any], Any]:
    """Waits until one of ``channels`` has a message; returns ``(channel, data)``.
    Channels are tried in turn from the first, so an early one does not starve later
    ones only if it is drained; errors of a channel (closed, disconnected) are raised.

    Raises :class:`Timeout` after ``timeout`` seconds."""
    if not channels:
        raise ValueError("select needs at least one channel")
    for c in channels:
        c._start_active()
    node = channels[0]._node
    deadline = None if timeout is None else time.monotonic() + timeout
    ready = _select_ready(channels)
    names = ", ".join(c._st.label() for c in channels)
    while True:
        for c in channels:
            v = c._take()
            if v is not _EMPTY:
                return c, v
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        node.wait(ready, left, f"a message on channels {names}")


async def async_select(
    *channels: Channel[Any], timeout: Optional[float] = None
) -> Tuple[Channel[Any], Any]:
    """As :func:`select`, for asyncio."""
    if not channels:
        raise ValueError("select needs at least one channel")
    for c in channels:
        c._start_active()
    node = channels[0]._node
    deadline = None if timeout is None else time.monotonic() + timeout
    ready = _select_ready(channels)
    names = ", ".join(c._st.label() for c in channels)
    while True:
        for c in channels:
            v = c._take()
            if v is not _EMPTY:
                return c, v
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        await node.wait_async(ready, left, f"a message on channels {names}")

