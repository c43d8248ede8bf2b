"""Services both ways: a Python service called from Rust, Rust services called from
Python (blocking and asyncio), and every kind of call error."""

import asyncio

from _common import expect_raises, report
from yukicomm import (
    CallError,
    ServiceClient,
    ServiceError,
    active_channel,
    async_call,
    call,
    current_call,
    serve,
    serve_fn,
)


class Calc:
    def add(self, a, b):
        return a + b

    async def flip(self, p):
        info = current_call()
        assert info is not None and info.service == "py.calc" and info.method == "flip"
        return {"x": p["y"], "y": p["x"], "label": p["label"]}

    def fail(self, why):
        raise ServiceError(f"{why}: refused")

    def crash(self):
        raise RuntimeError("a bug")

    async def slow(self, seconds):
        await asyncio.sleep(seconds)
        return 0


serve("py.calc", Calc())
serve_fn("py.echo", lambda words: words)


def body():
    # Rust services from Python.
    tr = ServiceClient("translator", timeout=10)
    assert tr.translate("hello", "Fr") == "bonjour"
    assert tr.call("languages") == ["En", "Fr"]
    e = expect_raises(CallError, lambda: tr.translate("goodbye", "Fr"), "translator.translate")
    assert e.kind == "service_error" and e.value == {"UnknownWord": "goodbye"}, (e.kind, e.value)
    e = expect_raises(CallError, lambda: tr.call("nothing"), "translator.nothing")
    assert e.kind == "unknown_method", e.kind
    e = expect_raises(CallError, lambda: tr.translate("hello", "Xx"), "translator")
    assert e.kind == "bad_request", e.kind
    assert call("double", 21) == 42
    e = expect_raises(CallError, lambda: call("nobody.serves", 1), "nobody.serves")
    assert e.kind == "no_server", e.kind

    async def aio():
        assert await async_call("double", 5) == 10
        assert await tr.async_call("translate", "hello", "En") == "hello"
        results = await asyncio.gather(*(async_call("double", i) for i in range(20)))
        assert results == [2 * i for i in range(20)]

    asyncio.run(aio())
    # The main process calls our services, then says go.
    assert active_channel.receive(timeout=30) == "go"


report(body)
