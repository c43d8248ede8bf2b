"""What every Python child of the test scenarios shares: its verdict goes to the Rust
main process on the child's own active channel (``ok``, or ``fail: <traceback>``)."""

import threading
import traceback
from typing import Callable

from yukicomm import active_channel

STRING = "alloc::string::String"


def report(body: Callable[[], None]) -> None:
    """Runs ``body``, sends the verdict, then stays until the main process stops us."""
    try:
        body()
    except BaseException:
        text = traceback.format_exc()
        print(text, flush=True)
        active_channel.send("fail: " + text[-2000:])
    else:
        active_channel.send("ok")
    threading.Event().wait()


def expect_raises(exc: type, fn: Callable[[], object], contains: str = "") -> BaseException:
    """Calls ``fn``; it must raise ``exc`` whose text contains ``contains``."""
    try:
        fn()
    except exc as e:
        assert contains in str(e), f"{exc.__name__} without '{contains}': {e}"
        return e
    raise AssertionError(f"expected {exc.__name__}")
