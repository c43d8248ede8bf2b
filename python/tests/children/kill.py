"""Killed with SIGKILL by the Rust main process, which must see its channel
disconnected."""

import os
import threading

from _common import STRING
from yukicomm import Channel, active_channel

link = Channel("py.link", type_name=STRING)
link.send("alive")
active_channel.send(str(os.getpid()))
threading.Event().wait()
