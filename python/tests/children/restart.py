"""Asks to be restarted once; the second process stays."""

import os

from _common import report
from yukicomm import active_channel, request_restart, shared_memory

active_channel.send(f"pid {os.getpid()}")
if shared_memory.incr("py.starts") == 1:
    request_restart()
    active_channel.receive()  # stopped by the supervisor meanwhile
else:

    def body():
        assert active_channel.receive(timeout=20) == "stay"

    report(body)
