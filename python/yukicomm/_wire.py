"""Frame layout (``docs/PROTOCOL.md``, section 3): building the frames this client
sends, and parsing the payloads of the frames the hub sends. Pure functions, no I/O.

A parse error raises :class:`~yukicomm.errors.ProtocolError`: the caller closes the
connection, as the protocol asks for any malformed frame."""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Optional, Tuple

import msgpack

from .errors import ProtocolError

VERSION = 2
DEFAULT_MAX_FRAME = 16 * 1024 * 1024

MSG = 1
CREDIT = 2
REQUEST = 3
REPLY = 4
NOTICE = 5
EVENT = 6
OP = 7
OP_REPLY = 8
DELIVERY = 9
CALL = 10
CALL_REPLY = 11
CANCEL = 12

#: MessagePack extension type of a channel handle (section 11).
CHANNEL_EXT = 1

END_NAMES = ("A", "B")

_HEAD = struct.Struct("<IB")
_MSG_HEAD = struct.Struct("<IBIBH")  # len, kind, chan, to, count
_CREDIT = struct.Struct("<IBIBIQ")
_ID = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_CARRIED = struct.Struct("<IB")


def frame(kind: int, payload: bytes) -> bytes:
    """A whole frame: length prefix, kind, payload."""
    return _HEAD.pack(len(payload) + 1, kind) + payload


def msg_frame(chan: int, to: int, body: bytes, carried: List[Tuple[int, int]]) -> bytes:
    """A Msg frame (section 3.1)."""
    tail = b"".join(_CARRIED.pack(c, e) for c, e in carried) if carried else b""
    head = _MSG_HEAD.pack(8 + len(body) + len(tail), MSG, chan, to, len(carried))
    return b"".join((head, body, tail))


def credit_frame(chan: int, end: int, n: int, nbytes: int) -> bytes:
    """A Credit frame (section 3.2)."""
    return _CREDIT.pack(18, CREDIT, chan, end, n, nbytes)


def request_frame(rid: int, body: Dict[str, Any]) -> bytes:
    """A Request frame: id and MessagePack map."""
    return frame(REQUEST, _ID.pack(rid) + msgpack.packb(body, use_bin_type=True))


def notice_frame(body: Dict[str, Any]) -> bytes:
    """A Notice frame: one MessagePack map."""
    return frame(NOTICE, msgpack.packb(body, use_bin_type=True))


def string(s: str) -> bytes:
    """A protocol ``str`` field (section 14): u16 length, UTF-8 bytes."""
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError("longer than 65535 bytes")
    return _U16.pack(len(b)) + b


def blob(b: bytes) -> bytes:
    """A protocol ``blob`` field: u32 length, bytes."""
    return _U32.pack(len(b)) + b


def u8(n: int) -> bytes:
    return bytes((n,))


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def i64(n: int) -> bytes:
    return _I64.pack(n)


def op_frame(rid: int, code: int, fields: bytes) -> bytes:
    """An Op frame (section 14.1)."""
    return frame(OP, _ID.pack(rid) + bytes((code,)) + fields)


def call_frame(
    rid: int, timeout_ms: int, flags: int, service: bytes, method: bytes, args: bytes
) -> bytes:
    """A Call frame (section 15.2)."""
    return frame(
        CALL,
        struct.pack("<IIBB", rid, timeout_ms, flags, len(service))
        + service
        + bytes((len(method),))
        + method
        + args,
    )


def call_reply_frame(rid: int, status: int, body: bytes) -> bytes:
    """A CallReply frame (section 15.2)."""
    return frame(CALL_REPLY, struct.pack("<IB", rid, status) + body)


def cancel_frame(rid: int) -> bytes:
    """A Cancel frame (section 15.2)."""
    return frame(CANCEL, _ID.pack(rid))


# ---- parsing what the hub sends ----------------------------------------------------


class Reader:
    """Reads the fields of one payload; any overrun is a :class:`ProtocolError`."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: memoryview, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def bad(self, why: str) -> ProtocolError:
        return ProtocolError(f"malformed {self.what} frame from the hub: {why}")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.bad("shorter than its fields")
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def i64(self) -> int:
        return int(_I64.unpack(self.take(8))[0])

    def string(self) -> str:
        n = _U16.unpack(self.take(2))[0]
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError:
            raise self.bad("a string is not UTF-8") from None

    def short_string(self) -> str:
        n = self.u8()
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError:
            raise self.bad("a name is not UTF-8") from None

    def blob(self) -> bytes:
        return bytes(self.take(self.u32()))

    def rest(self) -> bytes:
        v = bytes(self.buf[self.pos :])
        self.pos = len(self.buf)
        return v


def control_map(data: memoryview, tag: str, what: str) -> Dict[str, Any]:
    """Decodes the MessagePack map of a Reply or Event and checks its tag."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # any decoding failure of peer input
        raise ProtocolError(f"malformed {what} from the hub: {e}") from None
    if not isinstance(value, dict) or not isinstance(value.get(tag), str):
        raise ProtocolError(f"malformed {what} from the hub: not a map with '{tag}'")
    return value


def end_of(value: Any, what: str) -> int:
    """The end named in a control map: ``"A"`` or ``"B"``."""
    if value == "A":
        return 0
    if value == "B":
        return 1
    raise ProtocolError(f"malformed {what} from the hub: an end is {value!r}")


def uint(m: Dict[str, Any], key: str, what: str) -> int:
    v = m.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ProtocolError(f"malformed {what} from the hub: '{key}' is {v!r}")
    return v


def opt_bool(m: Dict[str, Any], key: str) -> bool:
    return m.get(key) is True


def op_reply(r: Reader) -> Tuple[int, Any]:
    """The status and fields of an OpReply (section 14.2), the id already read."""
    status = r.u8()
    if status == 0 or status == 2:
        value: Any = None
    elif status == 1:
        value = r.rest()
    elif status == 3:
        value = r.i64()
    elif status == 4:
        value = r.u8() != 0
    elif status == 5:
        value = [r.string() for _ in range(r.u32())]
    elif status == 6:
        n = r.u32()
        value = [(r.string(), r.blob()) for _ in range(n)]
    elif status == 255:
        m = control_map(r.buf[r.pos :], "code", "store error")
        value = (str(m.get("code")), str(m.get("message", "")))
    else:
        raise r.bad(f"unknown status {status}")
    return status, value


def parse_msg(p: memoryview) -> Tuple[int, int, memoryview, List[Tuple[int, int]]]:
    """A Msg payload: chan, to, body and carried list."""
    if len(p) < 7:
        raise ProtocolError("malformed Msg frame from the hub: header too short")
    chan, to, count = struct.unpack_from("<IBH", p, 0)
    tail = 5 * count
    if to > 1 or 7 + tail > len(p):
        raise ProtocolError("malformed Msg frame from the hub: bad end or carried list")
    end = len(p) - tail
    carried = []
    for i in range(count):
        c, e = _CARRIED.unpack_from(p, end + 5 * i)
        if e > 1:
            raise ProtocolError("malformed Msg frame from the hub: a carried end is not 0 or 1")
        carried.append((c, e))
    return chan, to, p[7:end], carried


def parse_credit(p: memoryview) -> Tuple[int, int, int, int]:
    if len(p) != 17:
        raise ProtocolError("malformed Credit frame from the hub: not 17 bytes")
    chan, end, n, nbytes = struct.unpack("<IBIQ", p)
    if end > 1:
        raise ProtocolError("malformed Credit frame from the hub: end is not 0 or 1")
    return chan, end, n, nbytes


def opt_uint(m: Dict[str, Any], key: str) -> Optional[int]:
    v = m.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
