"""Values both ways between Rust and Python: each `values.*` channel carries one kind;
the Rust main process sends its values first, this child checks them and answers."""

import dataclasses

from _common import STRING, report
from yukicomm import Channel, get_channel


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str


def exchange(name, want, send, type_name=""):
    ch = get_channel(name, type_name=type_name)
    for w in want:
        got = ch.receive(timeout=20)
        assert got == w and type(got) is type(w), f"{name}: got {got!r}, want {w!r}"
    for v in send:
        ch.send(v)


def body():
    exchange("values.str", ["héllo from rust ✓"], ["héllo from python ✓"], STRING)
    exchange("values.i64", [-42, -(2**63)], [-7, 2**63 - 1], "i64")
    exchange("values.u64", [2**64 - 1], [2**64 - 2], "u64")
    exchange("values.bytes", [bytes(range(256))], [bytes(reversed(range(256)))])
    exchange("values.list", [[1, 2, 3]], [[4, 5]])
    exchange("values.map", [{"a": 1, "b": -2}], [{"x": 10}])
    exchange(
        "values.struct",
        [{"x": 1, "y": -2, "label": "rust"}],
        [{"x": 3, "y": 4, "label": "python dict"}, Point(5, 6, "python dataclass")],
    )
    shapes = ["Empty", {"Circle": 1.5}, {"Rect": {"w": 3, "h": 4}}, {"Pair": [-1, 2]}]
    exchange("values.enum", shapes, shapes)
    exchange("values.option", [None, "x"], ["y", None])
    exchange("values.tuple", [[7, "seven", True]], [(8, "eight", False)])
    exchange("values.f64", [0.25], [-0.5])

    # Channels inside messages: a Rust channel arrives, we answer on it; then ours goes.
    carrier = get_channel("values.carrier")
    got = carrier.receive(timeout=20)
    assert got["note"] == "from rust", got
    reply = got["reply"]
    assert isinstance(reply, Channel), reply
    reply.send("pong from python")
    mine, theirs = Channel.pair(type_name=STRING)
    carrier.send({"note": "from python", "reply": theirs})
    answer = mine.receive(timeout=20)
    assert answer == "pong from rust", answer


report(body)
