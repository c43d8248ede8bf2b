"""Services: a process serves a service under a name; any process calls it and gets
its reply (``docs/PROTOCOL.md``, section 15), interoperating with Rust's
``#[yukicomm::service]`` traits and ``serve_fn``.

Calling::

    tr = ServiceClient("translator")
    tr.translate("hello", "Fr")                  # a method of a Rust #[service] trait
    await tr.async_call("translate", "hello", "Fr")
    call("double", 21)                           # a Rust ctx.serve_fn(...) service

Serving::

    class Translator:
        def translate(self, text, to):           # sync or async
            if text == "hello" and to == "Fr":
                return "bonjour"
            raise ServiceError(f"cannot translate '{text}'")   # the caller's Err(...)
    serve("translator", Translator())
    serve_fn("double", lambda n: n * 2)
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

from . import _wire as w
from .errors import CallError, EncodeError, HubGone, RegistryError, Timeout

__all__ = [
    "ServiceClient",
    "call",
    "async_call",
    "serve",
    "serve_fn",
    "unserve",
    "current_call",
    "CallInfo",
    "DEFAULT_CALL_TIMEOUT",
]

#: Every call has a deadline: 30 s unless given (as the Rust client).
DEFAULT_CALL_TIMEOUT = 30.0

STATUS_KINDS = {
    1: "service_error",
    2: "no_server",
    3: "server_gone",
    4: "overloaded",
    5: "unknown_method",
    6: "bad_request",
    7: "panicked",
    8: "too_large",
    9: "timeout",
    10: "failed",
}


class CallInfo(NamedTuple):
    """The call a service handler is running: the service, the method and the
    seconds the caller still waited when the call arrived."""

    service: str
    method: str
    timeout: float


_current: "contextvars.ContextVar[Optional[CallInfo]]" = contextvars.ContextVar(
    "yukicomm_call", default=None
)


def current_call() -> Optional[CallInfo]:
    """Inside a service handler: the call it runs; elsewhere None."""
    return _current.get()


def encode_value(value: Any) -> bytes:
    """A call's arguments, result or error as MessagePack (no channels)."""
    from .channel import encode

    body, carried = encode(value)
    if carried:
        raise EncodeError("calls carry plain values, not channels")
    return body


def _node() -> Any:
    from . import _process

    return _process.node()


class ServiceClient:
    """Calls the service served under ``name``. Any attribute is a method of the
    service: ``client.translate(text, to)`` is ``client.call("translate", text, to)``.

    ``timeout``: seconds each call waits (default 30). ``wait_for_server``: a call
    made while nobody serves the name waits, within its deadline, instead of failing
    at once with ``no_server``."""

    def __init__(self, name: str, timeout: float = DEFAULT_CALL_TIMEOUT, wait_for_server: bool = False) -> None:
        self.name = name
        self.timeout = timeout
        self.wait_for_server = wait_for_server

    def with_timeout(self, timeout: float) -> "ServiceClient":
        """The same client with another deadline per call."""
        return ServiceClient(self.name, timeout, self.wait_for_server)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args: self.call(method, *args)

    def _frame_parts(self, method: str, args: Any, timeout: float) -> Callable[[int], bytes]:
        sname = self.name.encode("utf-8")
        mname = method.encode("utf-8")
        if not 1 <= len(sname) <= 255 or not 1 <= len(mname) <= 255:
            raise CallError(
                f"call {self.name}.{method}: names are 1 to 255 bytes", "bad_request", self.name, method
            )
        try:
            body = encode_value(args)
        except Exception as e:
            raise CallError(f"call {self.name}.{method}: the arguments do not encode: {e}",
                            "bad_request", self.name, method) from None
        node = _node()
        if len(body) + 16 + len(sname) + len(mname) > node.max_frame:
            raise CallError(f"call {self.name}.{method}: the arguments are larger than the hub accepts",
                            "too_large", self.name, method)
        ms = max(1, min(int(timeout * 1000), 0xFFFFFFFF))
        flags = 1 if self.wait_for_server else 0
        return lambda rid: w.call_frame(rid, ms, flags, sname, mname, body)

    def _result(self, method: str, status: int, body: bytes) -> Any:
        node = _node()
        if status == 0:
            try:
                return node.decode(body)
            except Exception as e:
                raise CallError(f"call {self.name}.{method}: the result did not decode: {e}",
                                "decode", self.name, method) from None
        kind = STATUS_KINDS.get(status, "failed")
        try:
            value = node.decode(body)
        except Exception:
            value = None
        if kind == "service_error":
            raise CallError(f"call {self.name}.{method}: the service answered an error: {value!r}",
                            kind, self.name, method, value)
        raise CallError(f"call {self.name}.{method}: {kind.replace('_', ' ')}: {value}", kind, self.name, method)

    def _timed_out(self, node: Any, rid: int, method: str, timeout: float) -> CallError:
        node.write_quiet(w.cancel_frame(rid))
        return CallError(f"call {self.name}.{method}: no reply within {timeout:g} s", "timeout", self.name, method)

    def call(self, method: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """Calls ``method`` with ``args`` and waits for its result.

        Raises :class:`CallError` (``kind`` says what: ``service_error`` with the
        service's ``value``, ``timeout``, ``no_server``, ``server_gone``...)."""
        return self._call(method, list(args), timeout)

    def _call(self, method: str, args: Any, timeout: Optional[float]) -> Any:
        t = self.timeout if timeout is None else timeout
        node = _node()
        rid, slot = node.start_call(self._frame_parts(method, args, t))
        try:
            node.wait(lambda: slot.done, t, f"{self.name}.{method}")
        except Timeout:
            raise self._timed_out(node, rid, method, t) from None
        except HubGone:
            raise CallError(f"call {self.name}.{method}: lost the hub connection", "disconnected",
                            self.name, method) from None
        finally:
            node.forget(rid)
        return self._result(method, slot.status, slot.value)

    async def async_call(self, method: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """As :meth:`call`, for asyncio. Cancelling the awaiting task cancels the call."""
        return await self._async_call(method, list(args), timeout)

    async def _async_call(self, method: str, args: Any, timeout: Optional[float]) -> Any:
        t = self.timeout if timeout is None else timeout
        node = _node()
        rid, slot = node.start_call(self._frame_parts(method, args, t))
        done = False
        try:
            await node.wait_async(lambda: slot.done, t, f"{self.name}.{method}")
            done = True
        except Timeout:
            done = True
            raise self._timed_out(node, rid, method, t) from None
        except HubGone:
            done = True
            raise CallError(f"call {self.name}.{method}: lost the hub connection", "disconnected",
                            self.name, method) from None
        finally:
            node.forget(rid)
            if not done and not slot.done:
                node.write_quiet(w.cancel_frame(rid))
        return self._result(method, slot.status, slot.value)


def call(service: str, request: Any, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any:
    """Calls a one-method service (Rust ``serve_fn``, Python :func:`serve_fn`) with
    ``request`` and returns its reply."""
    return ServiceClient(service, timeout)._call("call", request, None)


async def async_call(service: str, request: Any, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any:
    """As :func:`call`, for asyncio."""
    return await ServiceClient(service, timeout)._async_call("call", request, None)


class _Table:
    """What a served name answers: methods by name."""

    def __init__(self, methods: Dict[str, Callable[..., Any]], is_fn: bool) -> None:
        self.methods = methods
        self.is_fn = is_fn

    def method(self, name: str) -> Optional[Callable[..., Any]]:
        return self.methods.get(name)


def _register(name: str, table: _Table, max_in_flight: int, when_full: str) -> None:
    if when_full not in ("wait", "refuse"):
        raise ValueError("when_full is 'wait' or 'refuse'")
    node = _node()
    node.runner()
    with node.lock:
        node.served[name] = table
    reply = node.request(
        {"op": "serve", "name": name, "max_in_flight": max_in_flight, "when_full": when_full},
        10.0,
        f"serving '{name}'",
    )
    if reply.get("reply") != "done":
        with node.lock:
            node.served.pop(name, None)
        raise RegistryError(f"cannot serve '{name}': {reply.get('code')}: {reply.get('message')}",
                            str(reply.get("code", "")))


def serve(name: str, service: Any, *, max_in_flight: int = 64, when_full: str = "wait") -> None:
    """Serves ``service`` under ``name``: its public methods (or, for a dict, its
    functions) are the service's methods, called with the arguments in order. A method
    may be sync or async; it answers by returning a value, or with the service's own
    error by raising :class:`~yukicomm.ServiceError`. Other exceptions answer
    ``panicked``; the process goes on serving. Handlers run on the client's handler
    thread and must not block it for long.

    At most ``max_in_flight`` calls run at once; beyond, the hub queues them
    (``when_full="wait"``) or answers ``overloaded`` (``"refuse"``)."""
    if isinstance(service, dict):
        methods = dict(service)
    else:
        methods = {
            m: getattr(service, m)
            for m in dir(service)
            if not m.startswith("_") and callable(getattr(service, m, None))
        }
    _register(name, _Table(methods, False), max_in_flight, when_full)


def serve_fn(name: str, handler: Callable[[Any], Any], *, max_in_flight: int = 64, when_full: str = "wait") -> None:
    """Serves one function under ``name`` (method ``call``, the request itself as its
    argument), as Rust's ``serve_fn``."""
    _register(name, _Table({"call": handler}, True), max_in_flight, when_full)


def unserve(name: str) -> None:
    """Stops serving ``name``: no more calls come; calls in progress finish."""
    node = _node()
    node.request({"op": "unserve", "name": name}, 10.0, f"unserving '{name}'")
    with node.lock:
        node.served.pop(name, None)

