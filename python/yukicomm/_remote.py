"""Joining a yukicomm program from another machine, over TLS with a join token.

Not implemented yet: it depends on the remote-link protocol (TLS 1.3 enrolment, join
tokens, resumable sessions) that the Rust side is still settling. When it lands, this
module implements :func:`join` with the standard library's ``ssl``, and a joined
process uses channels, the store and services exactly as a supervised child does
(the rest of the client only needs a connected stream and a ``welcome``)."""

from __future__ import annotations

from typing import NoReturn


def join(url: str, token: str) -> NoReturn:
    """Joins the program at ``url`` (``yukicomm://host:port``) with a join token.

    Raises :class:`NotImplementedError`: remote joining is not available in this
    version of the Python client; run the process as a supervised child instead."""
    raise NotImplementedError(
        "yukicomm.join: joining over TLS is not implemented in the Python client yet; "
        "start this process from a yukicomm main process (App::add_command) instead"
    )
