"""Errors raised by the yukicomm client. Every one says which channel, key or service
it is about, in plain words; :class:`YukicommError` is the base of them all."""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "YukicommError",
    "ConnectError",
    "HubGone",
    "ProtocolError",
    "Timeout",
    "Disconnected",
    "ChannelClosed",
    "Full",
    "TooLarge",
    "EncodeError",
    "DecodeError",
    "ModeError",
    "RegistryError",
    "TypeMismatch",
    "ControlError",
    "StoreError",
    "Missed",
    "CallError",
    "ServiceError",
]


class YukicommError(Exception):
    """The base of every error this package raises."""


class ConnectError(YukicommError):
    """This process could not join: it is not a child of a yukicomm program (the
    variables are missing), or the hub refused its ``hello``."""


class Timeout(YukicommError, TimeoutError):
    """A wait ran out of time. Also a built-in :class:`TimeoutError`."""


class Disconnected(YukicommError):
    """Every process at the other end of a channel has gone and nothing it sent is
    left to receive (receiving), or the window is used up and nobody will take more
    (sending)."""


class HubGone(Disconnected):
    """The connection to the hub is lost (the main process ended, a remote process's
    session ended, or the connection was closed after a malformed frame). Every waiter
    wakes with it. A :class:`Disconnected`: everything at the other end is gone, as a
    Rust client's receivers see it."""


class ProtocolError(HubGone):
    """The hub sent a frame this client cannot read; the connection is closed."""


class ChannelClosed(YukicommError):
    """The channel was closed, and nothing sent before the close is left to receive."""


class Full(YukicommError):
    """The channel's window is used up (``try_send``); nothing was sent."""


class TooLarge(YukicommError):
    """A message, value or call is larger than the hub accepts; nothing was sent."""


class EncodeError(YukicommError, TypeError):
    """A value cannot be encoded as MessagePack (or fails the channel's type check)."""


class DecodeError(YukicommError):
    """A received body is not a MessagePack value this client can read. The message
    is consumed (its credit is returned)."""


class ModeError(YukicommError):
    """A channel end receives in one mode per process: ``receive`` and
    ``on_receive`` cannot both be used on it."""


class RegistryError(YukicommError):
    """The hub refused a registry request (``code`` says why)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class TypeMismatch(RegistryError):
    """The channel carries another type than the one asked for."""


class ControlError(YukicommError):
    """The hub refused a restart or stop request."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class StoreError(YukicommError):
    """The hub refused a store operation (``code`` is the protocol's error code, such
    as ``invalid_key``, ``too_large``, ``not_an_integer``)."""

    def __init__(self, message: str, code: str = "", key: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.key = key


class Missed(YukicommError):
    """A subscriber or watch was too slow: ``count`` deliveries were dropped for it.
    Receiving goes on after this error."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


class CallError(YukicommError):
    """A call failed. ``kind`` is one of ``service_error`` (``value`` is the
    service's own error), ``no_server``, ``server_gone``, ``overloaded``,
    ``unknown_method``, ``bad_request``, ``panicked``, ``too_large``, ``timeout``,
    ``failed``, ``decode``, ``disconnected``."""

    def __init__(
        self, message: str, kind: str, service: str, method: str, value: Any = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.service = service
        self.method = method
        self.value = value


class ServiceError(Exception):
    """Raised by a service handler to answer the call with the service's own error:
    the caller gets :class:`CallError` of kind ``service_error`` with ``value``
    (a Rust caller gets ``Err(value)``)."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value
