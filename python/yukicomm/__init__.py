"""yukicomm for Python: a process of a yukicomm program, written in Python.

A Rust main process supervises children; a Python child joins it with this package and
uses the same typed, named, duplex channels, the shared key-value store with
publish/subscribe, and services, with the names upstream's ``liteyuki.comm`` users
know::

    # plugin.py, started by a Rust main process:
    #   app.add_command("nonebot", Command::new("python3").arg("plugin.py"))
    from yukicomm import active_channel, passive_channel, shared_memory, run

    @passive_channel.on_receive(filter_func=lambda data: isinstance(data, str))
    async def on_passive_receive(data):
        print(f"Passive receive: {data}")

    async def main():
        while True:
            data = await active_channel.async_receive()
            print(f"Active receive: {data}")

    shared_memory.set("key", "value")
    assert shared_memory.get("key") == "value"
    run(main())

The process joins on first use (:func:`connect`), from the variables the supervisor
sets; it exits with status 70 when the hub goes away, as a Rust child does. A process
on another machine joins over TLS with a join token (:func:`join`, or
``YUKICOMM_HUB=yk://host:port`` and ``YUKICOMM_JOIN``), and does not exit when the hub
goes: its waiters get :class:`HubGone`, a :class:`Disconnected`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Optional, TypeVar

from ._process import (
    ChannelInfo,
    async_get_channel,
    connect,
    get_channel,
    get_channels,
    join,
    list_channels,
    name,
    request_restart,
    request_stop,
    restart_process,
    set_channel,
    set_channels,
    stop_process,
)
from .channel import Channel, async_select, select
from .errors import (
    CallError,
    ChannelClosed,
    ConnectError,
    ControlError,
    DecodeError,
    Disconnected,
    EncodeError,
    Full,
    HubGone,
    Missed,
    ModeError,
    ProtocolError,
    RegistryError,
    ServiceError,
    StoreError,
    Timeout,
    TooLarge,
    TypeMismatch,
    YukicommError,
)
from .service import (
    CallInfo,
    ServiceClient,
    async_call,
    call,
    current_call,
    serve,
    serve_fn,
    unserve,
)
from .store import ABSENT, Change, Publication, Store, Subscriber, Watch, shared_memory

__version__ = "0.1.0"

T = TypeVar("T")


class _OwnChannel:
    """A child's own channel (``NAME-active`` or ``NAME-passive``), bound on first
    use. Everything a :class:`Channel` does, it does."""

    def __init__(self, which: str) -> None:
        self._which = which
        self._ch: Optional[Channel[Any]] = None

    def _get(self) -> Channel[Any]:
        if self._ch is None:
            node = connect()
            chan = node.active if self._which == "active" else node.passive
            with node.lock:
                st = node.ends[(chan, 0)]
            self._ch = Channel._bind(node, st)
        return self._ch

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._get(), attr)

    def __iter__(self) -> Any:
        return iter(self._get())

    def __aiter__(self) -> Any:
        return self._get().__aiter__()

    def __repr__(self) -> str:
        return f"<{self._which}_channel>"


#: This child's ``NAME-active`` channel (it holds end ``A``; the main process sends to it).
active_channel: Any = _OwnChannel("active")
#: This child's ``NAME-passive`` channel.
passive_channel: Any = _OwnChannel("passive")


def run(main: Awaitable[T]) -> T:
    """Joins (if not yet) and runs the coroutine ``main`` to completion with
    :func:`asyncio.run`, returning its result."""
    connect()
    return asyncio.run(main)  # type: ignore[arg-type]


__all__ = [
    "ABSENT",
    "CallError",
    "CallInfo",
    "Change",
    "Channel",
    "ChannelClosed",
    "ChannelInfo",
    "ConnectError",
    "ControlError",
    "DecodeError",
    "Disconnected",
    "EncodeError",
    "Full",
    "HubGone",
    "Missed",
    "ModeError",
    "ProtocolError",
    "Publication",
    "RegistryError",
    "ServiceClient",
    "ServiceError",
    "Store",
    "StoreError",
    "Subscriber",
    "Timeout",
    "TooLarge",
    "TypeMismatch",
    "Watch",
    "YukicommError",
    "active_channel",
    "async_call",
    "async_get_channel",
    "async_select",
    "call",
    "connect",
    "current_call",
    "get_channel",
    "get_channels",
    "join",
    "list_channels",
    "name",
    "passive_channel",
    "request_restart",
    "request_stop",
    "restart_process",
    "run",
    "select",
    "serve",
    "serve_fn",
    "set_channel",
    "set_channels",
    "shared_memory",
    "stop_process",
    "unserve",
]
