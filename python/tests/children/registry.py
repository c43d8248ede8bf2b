"""The registry from Python: create and name channels, look up Rust ones, errors,
select, timeouts and close."""

import time

from _common import STRING, expect_raises, report
from yukicomm import (
    Channel,
    ChannelClosed,
    RegistryError,
    Timeout,
    TypeMismatch,
    active_channel,
    get_channel,
    get_channels,
    list_channels,
    select,
    set_channel,
)


def body():
    jobs = Channel("py.jobs", type_name=STRING)
    jobs.send("job 1")
    closing = Channel("py.closing", type_name=STRING)
    active_channel.send("ready")
    assert jobs.receive(timeout=20) == "done 1"
    ch, v = select(active_channel, jobs, timeout=20)
    assert (ch, v) == (jobs, "sel"), (ch, v)
    expect_raises(Timeout, lambda: select(jobs, timeout=0.2), "py.jobs")
    expect_raises(Timeout, lambda: jobs.receive(timeout=0.1), "py.jobs")

    results = get_channel("rust.results", type_name="u32")
    results.send(7)
    expect_raises(TypeMismatch, lambda: get_channel("rust.results", type_name=STRING), "rust.results")
    e = expect_raises(RegistryError, lambda: get_channel("no.such.channel"), "no.such.channel")
    assert e.code == "unknown_channel", e.code
    e = expect_raises(RegistryError, lambda: set_channel("py.jobs", Channel()), "py.jobs")
    assert e.code == "name_taken", e.code
    e = expect_raises(RegistryError, lambda: set_channel("bad name!", Channel()), "bad name!")
    assert e.code == "invalid_name", e.code
    names = [c.name for c in list_channels()]
    for n in ("py.jobs", "py.closing", "rust.results", "py-active", "py-passive"):
        assert n in names, (n, names)
    assert "rust.results" in get_channels()

    assert active_channel.receive(timeout=20) == "go-close"
    closing.send("last")
    closing.close()
    expect_raises(ChannelClosed, lambda: closing.receive(timeout=10), "py.closing")
    expect_raises(ChannelClosed, lambda: closing.send("more"), "py.closing")
    assert closing.is_closed
    time.sleep(0.01)


report(body)
