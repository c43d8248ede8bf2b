"""The process-wide connection and the registry: joining as a supervised child,
``get_channel``, ``set_channel`` and friends, and control requests."""

from __future__ import annotations

import os
import socket
import stat
import threading
from typing import Any, Dict, List, NamedTuple, Optional, Union

from . import _remote
from . import _wire as w
from ._node import Node
from .channel import Channel
from .errors import ConnectError, ControlError, RegistryError, TypeMismatch

ENV_NAME = "YUKICOMM_NAME"
ENV_FD = "YUKICOMM_FD"
ENV_HUB = "YUKICOMM_HUB"
ENV_TOKEN = "YUKICOMM_TOKEN"
ENV_JOIN = "YUKICOMM_JOIN"
ENV_STATE_DIR = "YUKICOMM_STATE_DIR"

#: How long registry and control requests wait for the hub by default, in seconds.
DEFAULT_TIMEOUT = 10.0

_node: Optional[Node] = None
_node_lock = threading.Lock()


def connect() -> Node:
    """Joins the yukicomm program that started this process (once; later calls return
    the same connection). Reads ``YUKICOMM_NAME`` and ``YUKICOMM_FD`` (the inherited
    connection the supervisor made for this child), makes the descriptor
    close-on-exec and removes both variables from the environment, so the processes
    this one starts inherit neither. When the hub goes away, the process exits with
    status 70, as a Rust child does.

    A process on another machine joins with ``YUKICOMM_HUB=yk://host:port`` and
    ``YUKICOMM_JOIN=<token>`` (and ``YUKICOMM_STATE_DIR``, if set): see :func:`join`.
    The token is overwritten and removed from the environment once read.

    Raises :class:`ConnectError` if the variables are missing or the hub refuses."""
    global _node
    with _node_lock:
        if _node is not None:
            return _node
        hub = os.environ.get(ENV_HUB, "")
        if hub.startswith(_remote.SCHEME) or ENV_JOIN in os.environ:
            token = os.environ.get(ENV_JOIN)
            state_dir = os.environ.get(ENV_STATE_DIR) or None
            _forget_variables()
            if token is None:
                raise ConnectError(f"{ENV_HUB} is a remote hub's address but {ENV_JOIN} is not set")
            _node = _join(hub, token, state_dir=state_dir)
            return _node
        name = os.environ.get(ENV_NAME)
        fd_text = os.environ.get(ENV_FD)
        if name is None or fd_text is None:
            if name is not None and os.environ.get(ENV_HUB):
                raise ConnectError(
                    "joining through the hub's socket with a token is not supported by the "
                    "Python client yet; run this program as a child of a yukicomm main process"
                )
            raise ConnectError(
                f"not a child of a yukicomm program: {ENV_NAME} and {ENV_FD} are not set "
                "(start it with App::add_command in a Rust main process)"
            )
        try:
            fd = int(fd_text.strip())
            if fd < 0 or not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise OSError("not a socket")
            sock = socket.socket(fileno=fd)
            if sock.type != socket.SOCK_STREAM:
                raise OSError("not a stream socket")
            os.set_inheritable(fd, False)
        except (ValueError, OSError) as e:
            raise ConnectError(f"the descriptor {ENV_FD}={fd_text} is not usable: {e}") from None
        for var in (ENV_FD, ENV_NAME, ENV_HUB, ENV_TOKEN):
            os.environ.pop(var, None)
        sock.setblocking(True)
        try:
            _node = Node(sock, name, exit_on_loss=True)
        except OSError as e:
            raise ConnectError(f"could not join as '{name}': {e}") from None
        return _node


def _forget_variables() -> None:
    _remote.scrub_env(ENV_JOIN)
    _remote.scrub_env(ENV_TOKEN)
    for var in (ENV_FD, ENV_NAME, ENV_HUB, ENV_STATE_DIR):
        os.environ.pop(var, None)


def _join(url: str, token: str, **options: Any) -> Node:
    try:
        sock, name, link = _remote.open_session(url, token, **options)
    except _remote.RemoteError as e:
        raise ConnectError(f"cannot join the hub at {url}: {e}") from None
    try:
        return Node(sock, name, exit_on_loss=False)
    except (OSError, ConnectError) as e:
        link.close(0.5)
        raise ConnectError(f"cannot join the hub at {url} as '{name}': {e}") from None


def join(
    url: str,
    token: str,
    *,
    state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    heartbeat: float = _remote.DEFAULT_HEARTBEAT,
    grace: float = _remote.DEFAULT_GRACE,
    connect_timeout: float = _remote.DEFAULT_CONNECT_TIMEOUT,
) -> Node:
    """Joins, as a remote process, the program whose main process listens at ``url``
    (``yk://host:port``, ``App::listen_remote``) with a join token from
    ``MainContext::join_token``. Every connection is TLS 1.3, the hub checked against
    the authority the token pins. The first time, the token is spent to obtain this
    process's own certificate, kept in ``state_dir`` (by default
    ``$XDG_STATE_HOME/yukicomm/remote``, or ``~/.local/state/yukicomm/remote``; the
    Rust client's place, so both share it); later runs connect with it, and the token,
    already used, is only read for the name and the authority it pins.

    The process is then a participant like a supervised child: ``active_channel``,
    ``passive_channel``, the registry, the store and services. A broken link is resumed
    within ``grace`` seconds with nothing lost or repeated (a link silent for
    ``heartbeat`` seconds counts as broken; use the hub's values). When the hub goes
    or the session ends, waiters get :class:`HubGone` (a :class:`Disconnected`); the
    process does not exit. At exit, what it sent is flushed and the session is ended.

    Raises :class:`ConnectError`: a malformed address or token, enrolment refused (the
    token used, expired, or for another process), the hub unreachable or not the one
    the token pins, the session refused. The token's secret is never in its text."""
    global _node
    with _node_lock:
        if _node is not None:
            raise ConnectError(f"this process has already joined, as '{_node.name}'")
        _node = _join(
            url,
            token,
            state_dir=state_dir,
            heartbeat=heartbeat,
            grace=grace,
            connect_timeout=connect_timeout,
        )
        return _node


def node() -> Node:
    """The process's connection, joining on first use."""
    return _node if _node is not None else connect()


# ---- registry ------------------------------------------------------------------------


class ChannelInfo(NamedTuple):
    """A named channel, as :func:`list_channels` reports it."""

    name: str
    chan: int
    type_name: str


def _registry_error(reply: Dict[str, Any], what: str) -> RegistryError:
    return RegistryError(f"{what}: {reply.get('code')}: {reply.get('message')}", str(reply.get("code", "")))


def _found(n: Node, name: str, reply: Dict[str, Any], type_name: str, type: Any) -> Channel[Any]:
    if reply.get("reply") != "found":
        raise _registry_error(reply, f"cannot get channel '{name}'")
    chan = w.uint(reply, "chan", "found")
    end = w.end_of(reply.get("end"), "found")
    with n.lock:
        st = n._hold(chan, end)
        if st.name is None:
            st.name = name
        if w.opt_bool(reply, "peer_gone"):
            st.peer_gone = True
            st.peer_queued = w.opt_bool(reply, "peer_queued")
    ch = Channel._bind(n, st, type)
    found_type = str(reply.get("type_name", ""))
    if type_name and found_type and found_type != type_name:
        ch.release()
        raise TypeMismatch(
            f"channel '{name}' carries {found_type}, not {type_name}", "type_mismatch"
        )
    return ch


def get_channel(
    name: str, *, type_name: str = "", type: Any = None, timeout: Optional[float] = DEFAULT_TIMEOUT
) -> Channel[Any]:
    """Looks a channel up by name. A child's ``NAME-active`` / ``NAME-passive`` from
    another process gives their end ``B`` (the child holds ``A``). With ``type_name``
    (the Rust type name a Rust peer uses), a channel recorded with another type raises
    :class:`TypeMismatch`; an untyped channel takes that type.

    Raises :class:`RegistryError` (code ``unknown_channel``, ``closed``...),
    :class:`Timeout`, :class:`HubGone`."""
    n = node()
    reply = n.request({"op": "lookup", "name": name, "type_name": type_name}, timeout, f"channel '{name}'")
    return _found(n, name, reply, type_name, type)


async def async_get_channel(
    name: str, *, type_name: str = "", type: Any = None, timeout: Optional[float] = DEFAULT_TIMEOUT
) -> Channel[Any]:
    """As :func:`get_channel`, for asyncio."""
    n = node()
    reply = await n.request_async(
        {"op": "lookup", "name": name, "type_name": type_name}, timeout, f"channel '{name}'"
    )
    return _found(n, name, reply, type_name, type)


def set_channel(name: str, channel: Channel[Any], *, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
    """Registers ``channel`` under ``name`` (1-128 letters, digits, ``-_.:``).

    Raises :class:`RegistryError` (``invalid_name``, ``name_taken``, ``closed``...)."""
    n = node()
    reply = n.request({"op": "register", "name": name, "chan": channel.id}, timeout, f"registering '{name}'")
    if reply.get("reply") != "done":
        raise _registry_error(reply, f"cannot register channel '{name}'")
    with n.lock:
        if channel._st.name is None:
            channel._st.name = name


def set_channels(channels: Dict[str, Channel[Any]]) -> None:
    """Registers each channel under its name (:func:`set_channel` for each)."""
    for name, ch in channels.items():
        set_channel(name, ch)


def list_channels(*, timeout: Optional[float] = DEFAULT_TIMEOUT) -> List[ChannelInfo]:
    """The named channels, sorted by name, without taking any of them."""
    reply = node().request({"op": "list"}, timeout, "the list of channels")
    if reply.get("reply") != "channels":
        raise _registry_error(reply, "cannot list channels")
    out = []
    for c in reply.get("channels") or []:
        if isinstance(c, dict):
            out.append(ChannelInfo(str(c.get("name")), int(c.get("chan", 0)), str(c.get("type_name", ""))))
    return out


def get_channels() -> Dict[str, Channel[Any]]:
    """Every named channel, looked up (as upstream's ``get_channels``): a dict from
    name to :class:`Channel`. Channels closed meanwhile are left out."""
    out: Dict[str, Channel[Any]] = {}
    for info in list_channels():
        try:
            out[info.name] = get_channel(info.name)
        except RegistryError:
            pass
    return out


# ---- control -------------------------------------------------------------------------


def _control(action: str, target: Optional[str]) -> None:
    reply = node().request(
        {"op": "control", "action": action, "target": target}, DEFAULT_TIMEOUT, f"{action} request"
    )
    if reply.get("reply") != "done":
        who = f"'{target}'" if target else "this process"
        raise ControlError(f"cannot {action} {who}: {reply.get('code')}: {reply.get('message')}", str(reply.get("code", "")))


def request_restart() -> None:
    """Asks the supervisor to restart this child (accepted, not yet carried out)."""
    _control("restart", None)


def request_stop() -> None:
    """Asks the supervisor to stop this child."""
    _control("stop", None)


def restart_process(name: str) -> None:
    """Asks the supervisor to restart the child ``name``."""
    _control("restart", name)


def stop_process(name: str) -> None:
    """Asks the supervisor to stop the child ``name``."""
    _control("stop", name)


def name() -> str:
    """This child's name."""
    return node().name
