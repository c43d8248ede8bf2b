"""A Python child of `examples/redis_host` (started when `YUKICOMM_REDIS_HOST_PY` names
this script): publish/subscribe between Python and RESP clients, both ways.

- every message published on `to-py` (from a RESP `PUBLISH`) reaches the callback
  registered with `shared_memory.on_subscriber_receive`, which publishes
  `py callback got: <message>` on `from-py`;
- every message on `to-py-stream` reaches a subscriber stream (`shared_memory.subscribe`),
  read on a thread, which publishes `py stream got: <message>` on `from-py`."""

import threading

from yukicomm import Missed, shared_memory


@shared_memory.on_subscriber_receive("to-py")
def on_message(data):
    shared_memory.publish("from-py", f"py callback got: {data}")


def stream():
    sub = shared_memory.subscribe("to-py-stream")
    while True:
        try:
            p = sub.receive()
        except Missed:
            continue
        shared_memory.publish("from-py", f"py stream got: {p.data}")


threading.Thread(target=stream, daemon=True).start()
threading.Event().wait()
