"""What runs on the handler thread (``_node.Runner``): passive channel handlers,
subscriber callbacks, and the calls of services served by this process.

A failing handler is logged and changes nothing else, as in the Rust client."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from typing import TYPE_CHECKING, Any, Optional, Tuple

import msgpack

from . import _wire as w
from .errors import ServiceError

if TYPE_CHECKING:
    from ._node import EndState, Node, SubState


async def maybe_await(value: Any) -> Any:
    """The value, awaited if it is awaitable: filters and handlers may be sync or async."""
    if inspect.isawaitable(value):
        return await value
    return value


async def passive(node: "Node", st: "EndState", body: bytes) -> None:
    """One message for a channel end in passive mode: every handler whose filter
    accepts it runs; the message's credit is returned once they have finished."""
    try:
        try:
            data = node.decode(body)
        except Exception as e:
            from ._node import log

            log(f"channel {st.label()}: a message did not decode: {e}")
            return
        for filt, handler in list(st.handlers):
            try:
                if filt is not None and not await maybe_await(filt(data)):
                    continue
                await maybe_await(handler(data))
            except Exception:
                from ._node import log

                log(f"channel {st.label()}: a handler failed:\n{traceback.format_exc()}")
    finally:
        with node.lock:
            f = node.consumed(st, len(body))
        node.write_quiet(f)


async def subscription(node: "Node", s: "SubState", item: Tuple[int, Any, Any, Any]) -> None:
    """One delivery for a subscription with a callback."""
    from . import store

    try:
        try:
            value = store.delivery_value(s, item)
        except Exception as e:
            from ._node import log

            log(f"subscription '{s.pattern}': {e}")
            return
        try:
            await maybe_await(s.callback(value))
        except Exception:
            from ._node import log

            log(f"subscription '{s.pattern}': a callback failed:\n{traceback.format_exc()}")
    finally:
        if item[0] != 2:
            store.return_credit(node, s, 1)


def start_call(
    node: "Node", rid: int, timeout_ms: int, service: str, method: str, args: bytes
) -> None:
    """A Call from the hub for a service served here: runs it as a task."""
    task = asyncio.get_event_loop().create_task(
        _serve_call(node, rid, timeout_ms, service, method, args)
    )
    node.serving[rid] = task


def cancel_call(node: "Node", rid: int) -> None:
    """A Cancel from the hub: the call's task is cancelled and nothing is answered."""
    task = node.serving.pop(rid, None)
    if task is not None:
        task.cancel()


def _reply(node: "Node", rid: int, status: int, body: bytes) -> None:
    if len(body) + 6 > node.max_frame:
        status = 8
        body = msgpack.packb("the reply is larger than the hub accepts")
    node.write_quiet(w.call_reply_frame(rid, status, body))


async def _serve_call(
    node: "Node", rid: int, timeout_ms: int, service: str, method: str, args: bytes
) -> None:
    from . import service as svc

    status: Optional[int] = None
    body = b""
    try:
        table = node.served.get(service)
        if table is None:
            status, body = 2, msgpack.packb(f"this process does not serve '{service}'")
            return
        fn = table.method(method)
        if fn is None:
            status, body = 5, msgpack.packb(f"'{service}' has no method '{method}'")
            return
        try:
            decoded = node.decode(args)
        except Exception as e:
            status, body = 6, msgpack.packb(f"the arguments of {service}.{method} did not decode: {e}")
            return
        if table.is_fn:
            call_args: Tuple[Any, ...] = (decoded,)
        elif isinstance(decoded, list):
            call_args = tuple(decoded)
        elif decoded is None:
            call_args = ()  # a Rust `()` argument
        else:
            status, body = 6, msgpack.packb(
                f"the arguments of {service}.{method} are not an array"
            )
            return
        token = svc._current.set(svc.CallInfo(service, method, timeout_ms / 1000.0))
        try:
            result = await asyncio.wait_for(
                maybe_await(fn(*call_args)), timeout=max(timeout_ms, 1) / 1000.0
            )
        except ServiceError as e:
            status, body = 1, svc.encode_value(e.value)
            return
        except asyncio.TimeoutError:
            return  # the caller has given up; the hub answers it
        except TypeError as e:
            status, body = 6, msgpack.packb(f"{service}.{method}: {e}")
            return
        except Exception as e:
            status, body = 7, msgpack.packb(f"{service}.{method} raised {type(e).__name__}: {e}")
            return
        finally:
            svc._current.reset(token)
        try:
            status, body = 0, svc.encode_value(result)
        except Exception as e:
            status, body = 10, msgpack.packb(f"the result of {service}.{method} did not encode: {e}")
    except asyncio.CancelledError:
        status = None
        raise
    finally:
        node.serving.pop(rid, None)
        if status is not None:
            _reply(node, rid, status, body)
