"""The shared store: one key-value store for the whole program, held by the hub in the
main process, with expiry (TTL), atomic operations, publish/subscribe and watches.

``shared_memory`` is the process-wide :class:`Store`; every call is acknowledged by the
hub (a write is applied once the call returns), and every call has a timeout
(:attr:`Store.timeout`, 30 s unless :meth:`Store.with_timeout` says otherwise). Each
operation has a blocking form and an asyncio form named ``async_<op>``.

Values are MessagePack, exactly as channels carry them, so a Rust process reading the
key with ``store.get::<T>(key)`` gets the natural ``T`` (see the package README)."""

from __future__ import annotations

import math
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Tuple,
)

from . import _wire as w
from .errors import DecodeError, HubGone, Missed, StoreError

if TYPE_CHECKING:
    from ._node import Node, SubState

__all__ = ["Store", "Subscriber", "Watch", "Publication", "Change", "ABSENT", "shared_memory"]

GET, SET, DELETE, CONTAINS, INCR, CAS, EXPIRE, TTL, KEYS, GET_ALL, LEN = range(1, 12)
PUBLISH, SUBSCRIBE, UNSUBSCRIBE, WATCH, CREDIT, SYNC, PUBLISH_MANY = range(12, 19)
QUIET = 0x80

#: The credit a subscription or watch asks for: the deliveries it may buffer.
DEFAULT_BUFFER = 1024

CHANGE_KINDS = {1: "set", 2: "deleted", 3: "expired"}


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: For :meth:`Store.compare_and_swap`: "the key has no value" (as expected), or
#: "delete it" (as new value).
ABSENT: Any = _Absent()


class Publication(NamedTuple):
    """A message published on ``topic``."""

    topic: str
    data: Any


class Change(NamedTuple):
    """A change of a watched key: ``kind`` is ``"set"``, ``"deleted"`` or
    ``"expired"``; ``value`` is the new value (None unless set)."""

    kind: str
    key: str
    value: Any


def _pack(value: Any, key: str) -> bytes:
    from .channel import encode

    try:
        body, carried = encode(value)
    except Exception as e:
        raise StoreError(f"cannot store a value at '{key}': {e}", "encode", key) from None
    if carried:
        raise StoreError(f"cannot store a channel at '{key}': the store holds plain values", "encode", key)
    return body


def _ttl_ms(ttl: Optional[float]) -> int:
    if ttl is None:
        return 0xFFFFFFFFFFFFFFFF
    return max(0, min(int(ttl * 1000), 0xFFFFFFFFFFFFFFFE))


class Store:
    """A handle on the shared store; cheap, safe from several threads.

    Raises :class:`StoreError` naming the key (code ``invalid_key``, ``too_large``,
    ``not_an_integer``, ``overflow``, ``storage``...), :class:`~yukicomm.Timeout`,
    :class:`~yukicomm.HubGone`."""

    def __init__(self, timeout: float = 30.0, node: "Optional[Node]" = None) -> None:
        self.timeout = timeout
        self._node_ = node

    def with_timeout(self, timeout: float) -> "Store":
        """The same store, whose calls wait at most ``timeout`` seconds."""
        return Store(timeout, self._node_)

    @property
    def _node(self) -> "Node":
        if self._node_ is None:
            from . import _process

            return _process.node()
        return self._node_

    # ---- one op, blocking or async ------------------------------------------------

    def _op(self, code: int, fields: bytes, what: str, key: Optional[str]) -> Tuple[int, Any]:
        node = self._node
        rid, slot = node.start_call(lambda rid: w.op_frame(rid, code, fields))
        try:
            node.wait(lambda: slot.done, self.timeout, f"the store's reply to {what}")
        finally:
            node.forget(rid)
        return self._check(slot.status, slot.value, what, key)

    async def _aop(self, code: int, fields: bytes, what: str, key: Optional[str]) -> Tuple[int, Any]:
        node = self._node
        rid, slot = node.start_call(lambda rid: w.op_frame(rid, code, fields))
        try:
            await node.wait_async(lambda: slot.done, self.timeout, f"the store's reply to {what}")
        finally:
            node.forget(rid)
        return self._check(slot.status, slot.value, what, key)

    @staticmethod
    def _check(status: int, value: Any, what: str, key: Optional[str]) -> Tuple[int, Any]:
        if status == 255:
            code, message = value
            raise StoreError(f"{what}: {code}: {message}", code, key)
        return status, value

    def _decode(self, value: bytes, key: str) -> Any:
        try:
            return self._node.decode(value)
        except Exception as e:
            raise DecodeError(f"the value at '{key}' did not decode: {e}") from None

    # ---- building ops (fields, description, key, how the reply reads) ----------------

    @staticmethod
    def _k(key: str) -> bytes:
        try:
            return w.string(key)
        except ValueError:
            raise StoreError(f"the key '{key[:64]}...' is too long", "invalid_key", key) from None

    def _set_op(self, key: str, value: Any, ttl: Optional[float], if_absent: bool) -> Tuple[int, bytes]:
        flags = (1 if if_absent else 0) | (2 if ttl is not None else 0)
        fields = self._k(key) + w.u8(flags)
        if ttl is not None:
            fields += w.u64(_ttl_ms(ttl))
        return SET, fields + _pack(value, key)

    def _cas_op(self, key: str, expected: Any, new: Any) -> Tuple[int, bytes]:
        flags = (0 if expected is ABSENT else 1) | (0 if new is ABSENT else 2)
        fields = self._k(key) + w.u8(flags)
        if expected is not ABSENT:
            fields += w.blob(_pack(expected, key))
        if new is not ABSENT:
            fields += _pack(new, key)
        return CAS, fields

    # ---- the API: blocking -----------------------------------------------------------

    def set(self, key: str, value: Any, *, ttl: Optional[float] = None) -> None:
        """Stores ``value`` at ``key`` (expiring after ``ttl`` seconds if given)."""
        code, fields = self._set_op(key, value, ttl, False)
        self._op(code, fields, f"set '{key}'", key)

    def set_if_absent(self, key: str, value: Any, *, ttl: Optional[float] = None) -> bool:
        """Stores ``value`` only if ``key`` has none; returns whether it did."""
        code, fields = self._set_op(key, value, ttl, True)
        return bool(self._op(code, fields, f"set_if_absent '{key}'", key)[1])

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default``."""
        status, value = self._op(GET, self._k(key), f"get '{key}'", key)
        return self._decode(value, key) if status == 1 else default

    def delete(self, key: str, ignore_key_error: bool = True) -> bool:
        """Deletes ``key``; returns whether it existed. With
        ``ignore_key_error=False``, a missing key raises :class:`KeyError`."""
        existed = bool(self._op(DELETE, self._k(key), f"delete '{key}'", key)[1])
        if not existed and not ignore_key_error:
            raise KeyError(key)
        return existed

    def contains(self, key: str) -> bool:
        """Whether ``key`` has a value."""
        return bool(self._op(CONTAINS, self._k(key), f"contains '{key}'", key)[1])

    def get_all(self, pattern: str = "*") -> Dict[str, Any]:
        """Every key matching the glob ``pattern`` (``*``, ``?``) with its value."""
        _, entries = self._op(GET_ALL, w.string(pattern), f"get_all '{pattern}'", pattern)
        return {k: self._decode(v, k) for k, v in entries}

    def keys(self, pattern: str = "*") -> List[str]:
        """The keys matching ``pattern``, sorted."""
        return list(self._op(KEYS, w.string(pattern), f"keys '{pattern}'", pattern)[1])

    def len(self) -> int:
        """The number of keys."""
        return int(self._op(LEN, b"", "len", None)[1])

    def incr(self, key: str, by: int = 1) -> int:
        """Adds ``by`` to the integer at ``key`` (a missing key counts as 0), atomically;
        returns the new value."""
        return int(self._op(INCR, self._k(key) + w.i64(by), f"incr '{key}'", key)[1])

    def decr(self, key: str, by: int = 1) -> int:
        """Subtracts ``by``; as :meth:`incr`."""
        return self.incr(key, -by)

    def compare_and_swap(self, key: str, expected: Any, new: Any) -> bool:
        """Sets ``key`` to ``new`` only if its value is ``expected`` (compared as
        encoded bytes); :data:`ABSENT` as ``expected`` means "no value", as ``new``
        means delete. Returns whether it swapped."""
        code, fields = self._cas_op(key, expected, new)
        return bool(self._op(code, fields, f"compare_and_swap '{key}'", key)[1])

    def expire(self, key: str, ttl: Optional[float]) -> bool:
        """Makes ``key`` expire after ``ttl`` seconds (None: never); returns whether
        the key exists."""
        return bool(self._op(EXPIRE, self._k(key) + w.u64(_ttl_ms(ttl)), f"expire '{key}'", key)[1])

    def ttl(self, key: str) -> Optional[float]:
        """Seconds left before ``key`` expires: ``math.inf`` if it does not, None if
        there is no such key."""
        ms = int(self._op(TTL, self._k(key), f"ttl '{key}'", key)[1])
        return None if ms == -2 else math.inf if ms == -1 else ms / 1000.0

    def publish(self, topic: str, data: Any) -> int:
        """Publishes ``data`` on ``topic``; returns how many subscriptions got it."""
        return int(self._op(PUBLISH, self._k(topic) + _pack(data, topic), f"publish '{topic}'", topic)[1])

    def sync(self) -> None:
        """Returns once every earlier operation of this process is applied."""
        self._op(SYNC, b"", "sync", None)

    # ---- the API: asyncio --------------------------------------------------------------

    async def async_set(self, key: str, value: Any, *, ttl: Optional[float] = None) -> None:
        """As :meth:`set`, for asyncio."""
        code, fields = self._set_op(key, value, ttl, False)
        await self._aop(code, fields, f"set '{key}'", key)

    async def async_set_if_absent(self, key: str, value: Any, *, ttl: Optional[float] = None) -> bool:
        """As :meth:`set_if_absent`, for asyncio."""
        code, fields = self._set_op(key, value, ttl, True)
        return bool((await self._aop(code, fields, f"set_if_absent '{key}'", key))[1])

    async def async_get(self, key: str, default: Any = None) -> Any:
        """As :meth:`get`, for asyncio."""
        status, value = await self._aop(GET, self._k(key), f"get '{key}'", key)
        return self._decode(value, key) if status == 1 else default

    async def async_delete(self, key: str, ignore_key_error: bool = True) -> bool:
        """As :meth:`delete`, for asyncio."""
        existed = bool((await self._aop(DELETE, self._k(key), f"delete '{key}'", key))[1])
        if not existed and not ignore_key_error:
            raise KeyError(key)
        return existed

    async def async_contains(self, key: str) -> bool:
        """As :meth:`contains`, for asyncio."""
        return bool((await self._aop(CONTAINS, self._k(key), f"contains '{key}'", key))[1])

    async def async_get_all(self, pattern: str = "*") -> Dict[str, Any]:
        """As :meth:`get_all`, for asyncio."""
        _, entries = await self._aop(GET_ALL, w.string(pattern), f"get_all '{pattern}'", pattern)
        return {k: self._decode(v, k) for k, v in entries}

    async def async_incr(self, key: str, by: int = 1) -> int:
        """As :meth:`incr`, for asyncio."""
        return int((await self._aop(INCR, self._k(key) + w.i64(by), f"incr '{key}'", key))[1])

    async def async_compare_and_swap(self, key: str, expected: Any, new: Any) -> bool:
        """As :meth:`compare_and_swap`, for asyncio."""
        code, fields = self._cas_op(key, expected, new)
        return bool((await self._aop(code, fields, f"compare_and_swap '{key}'", key))[1])

    async def async_expire(self, key: str, ttl: Optional[float]) -> bool:
        """As :meth:`expire`, for asyncio."""
        return bool((await self._aop(EXPIRE, self._k(key) + w.u64(_ttl_ms(ttl)), f"expire '{key}'", key))[1])

    async def async_publish(self, topic: str, data: Any) -> int:
        """As :meth:`publish`, for asyncio."""
        return int((await self._aop(PUBLISH, self._k(topic) + _pack(data, topic), f"publish '{topic}'", topic))[1])

    # ---- subscriptions and watches ----------------------------------------------------

    def _start_sub(self, code: int, fields_after_sub: Callable[[int, int], bytes], what: str,
                   callback: Any = None, buffer: int = DEFAULT_BUFFER) -> "SubState":
        from ._node import SubState

        node = self._node
        with node.lock:
            sub = node.new_sub()
            s = SubState(sub, what, callback)
            node.subs[sub] = s
        try:
            _, granted = self._op(code, fields_after_sub(sub, buffer), what, what)
        except BaseException:
            with node.lock:
                node.subs.pop(sub, None)
            raise
        s.granted = max(1, int(granted))  # the credit granted: credit goes back in halves
        return s

    def subscribe(self, pattern: str, *, buffer: int = DEFAULT_BUFFER) -> "Subscriber":
        """Subscribes to the topics matching the glob ``pattern``; the
        :class:`Subscriber` receives :class:`Publication` s. Up to ``buffer``
        deliveries wait for it; beyond, the hub drops and counts them (:class:`Missed`)."""
        s = self._start_sub(
            SUBSCRIBE,
            lambda sub, credit: w.u32(sub) + w.u32(credit) + self._k(pattern),
            f"subscribe '{pattern}'",
            buffer=buffer,
        )
        return Subscriber(self._node, s)

    def watch(self, key: str, *, buffer: int = DEFAULT_BUFFER) -> "Watch":
        """Watches ``key``: the :class:`Watch` receives a :class:`Change` for every
        set, delete and expiry of it."""
        s = self._start_sub(
            WATCH, lambda sub, credit: w.u32(sub) + w.u32(credit) + w.u8(0) + self._k(key),
            f"watch '{key}'", buffer=buffer,
        )
        return Watch(self._node, s)

    def watch_prefix(self, prefix: str, *, buffer: int = DEFAULT_BUFFER) -> "Watch":
        """Watches every key starting with ``prefix`` (may be empty: every key)."""
        s = self._start_sub(
            WATCH, lambda sub, credit: w.u32(sub) + w.u32(credit) + w.u8(1) + w.string(prefix),
            f"watch_prefix '{prefix}'", buffer=buffer,
        )
        return Watch(self._node, s)

    def on_subscriber_receive(self, topic: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Decorator (upstream's name): runs the decorated function (sync or async)
        with the data of every message published on topics matching ``topic``, on the
        client's handler thread."""

        def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            self._node.runner()
            self._start_sub(
                SUBSCRIBE,
                lambda sub, credit: w.u32(sub) + w.u32(credit) + self._k(topic),
                f"subscribe '{topic}'",
                callback=lambda p: fn(p.data),
            )
            return fn

        return register


def delivery_value(s: "SubState", item: Tuple[int, Any, Any, Any]) -> Any:
    """A delivery as the application sees it; ``Missed`` raised for a missed count."""
    from . import _process

    tag = item[0]
    if tag == 2:
        raise Missed(f"{s.pattern}: {item[1]} deliveries were dropped (too slow)", int(item[1]))
    node = _process.node()
    if tag == 1:
        try:
            return Publication(item[1], node.decode(item[2]))
        except Exception as e:
            raise DecodeError(f"a message on topic '{item[1]}' did not decode: {e}") from None
    kind = CHANGE_KINDS.get(item[1], "set")
    value = None
    if kind == "set":
        try:
            value = node.decode(item[3])
        except Exception as e:
            raise DecodeError(f"the new value of '{item[2]}' did not decode: {e}") from None
    return Change(kind, item[2], value)


def return_credit(node: "Node", s: "SubState", n: int) -> None:
    """Counts ``n`` consumed deliveries; returns credit to the hub in batches."""
    with node.lock:
        s.pending_credit += n
        if s.pending_credit < max(1, min(32, s.granted // 2)) or s.ended:
            return
        count = s.pending_credit
        s.pending_credit = 0
    node.write_quiet(w.op_frame(0, CREDIT | QUIET, w.u32(s.sub) + w.u32(count)))


class _Stream:
    """What a :class:`Subscriber` and a :class:`Watch` share."""

    def __init__(self, node: "Node", s: "SubState") -> None:
        self._node = node
        self._s = s

    def _ready(self) -> bool:
        return bool(self._s.queue) or self._s.ended

    def _take(self) -> Any:
        node = self._node
        with node.lock:
            if self._s.queue:
                item = self._s.queue.popleft()
            elif self._s.ended:
                raise HubGone(f"{self._s.pattern}: ended")
            else:
                return _EMPTY
        if item[0] != 2:
            return_credit(node, self._s, 1)
        return delivery_value(self._s, item)

    def receive(self, timeout: Optional[float] = None) -> Any:
        """The next delivery (up to ``timeout`` seconds). Raises :class:`Missed`
        (then receive again), :class:`~yukicomm.Timeout`, :class:`DecodeError`."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            v = self._take()
            if v is not _EMPTY:
                return v
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._node.wait(self._ready, left, f"a delivery for {self._s.pattern}")

    async def async_receive(self, timeout: Optional[float] = None) -> Any:
        """As :meth:`receive`, for asyncio."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            v = self._take()
            if v is not _EMPTY:
                return v
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await self._node.wait_async(self._ready, left, f"a delivery for {self._s.pattern}")

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.receive()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            yield await self.async_receive()

    def close(self) -> None:
        """Ends the subscription or watch."""
        node = self._node
        with node.lock:
            if self._s.ended:
                return
            self._s.ended = True
            node.subs.pop(self._s.sub, None)
            node.notify()
        node.write_quiet(w.op_frame(0, UNSUBSCRIBE | QUIET, w.u32(self._s.sub)))


class Subscriber(_Stream):
    """A subscription: :meth:`receive` gives :class:`Publication` s."""


class Watch(_Stream):
    """A watch: :meth:`receive` gives :class:`Change` s."""


_EMPTY = object()

#: The process-wide store (upstream's ``shared_memory``).
shared_memory = Store()
