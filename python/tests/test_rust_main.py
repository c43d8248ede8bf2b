"""End to end: a real Rust main process supervising real Python children (and, for the
store, a Rust child), over the real protocol. Each scenario's Rust side is in
`examples/python_host.rs`, its Python side in `tests/children/<scenario>.py`."""

import re

import pytest

from conftest import run_host


def _scenario(rust_bin, name):
    r = run_host(rust_bin("python_host"), name)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and f"PASS {name}" in r.stdout, out[-6000:]
    return out


def test_documented_example_both_receive_modes_every_round(rust_bin):
    r = run_host(rust_bin("python_plugin"), "--rounds", "3", "--interval-ms", "300")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert out.count("[nonebot] [INFO] Passive receive: I am main process passive") == 3, out[-4000:]
    assert out.count("[nonebot] [INFO] Active receive: I am main process active") == 3, out[-4000:]


def test_values_both_ways_on_every_kind_and_channels_inside_messages(rust_bin):
    _scenario(rust_bin, "values")


def test_registry_from_python(rust_bin):
    _scenario(rust_bin, "registry")


def test_store_and_pubsub_between_python_child_rust_child_and_main(rust_bin):
    _scenario(rust_bin, "store")


def test_python_service_called_from_rust_and_rust_services_from_python(rust_bin):
    _scenario(rust_bin, "services")


def test_python_child_killed_with_sigkill_is_seen_disconnected(rust_bin):
    out = _scenario(rust_bin, "kill")
    m = re.search(r"disconnected ([0-9.]+)(ms|µs|s) after SIGKILL", out)
    assert m, out[-3000:]
    value, unit = float(m.group(1)), m.group(2)
    seconds = value / 1000 if unit == "ms" else value / 1e6 if unit == "µs" else value
    assert seconds < 2.0, out[-3000:]


def test_python_child_restarted_on_request(rust_bin):
    out = _scenario(rust_bin, "restart")
    assert re.search(r"restarted: pid \d+ then pid \d+", out), out[-3000:]


@pytest.mark.parametrize("scenario", ["nonsense"])
def test_unknown_scenario_is_refused(rust_bin, scenario):
    r = run_host(rust_bin("python_host"), scenario)
    assert r.returncode == 2
