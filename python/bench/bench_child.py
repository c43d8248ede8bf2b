"""The Python side of `examples/python_bench.rs` (run it with `python3 python/dev.py
bench`): a Python child's channel round trip and one-way rates against a Rust main
process and its store `get` calls per second, then `multiprocessing.Pipe` between two
Python processes (what upstream is built on), in the same run, on the same machine."""

import multiprocessing as mp
import platform
import statistics
import sys
import time

from yukicomm import active_channel, shared_memory

QUICK = "--quick" in sys.argv
RT_N = 2_000 if QUICK else 20_000
ONE_WAY_N = 20_000 if QUICK else 200_000
GETS_N = 2_000 if QUICK else 20_000
MSG = "x" * 16


def percentile(samples, q):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(q * len(samples)))]


def round_trips(send, recv, n):
    for _ in range(n // 10):  # warm up
        send(MSG)
        recv()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        send(MSG)
        recv()
        samples.append(time.perf_counter() - t)
    return percentile(samples, 0.5) * 1e6, statistics.mean(samples) * 1e6


def yk_round_trip():
    return round_trips(active_channel.send, active_channel.receive, RT_N)


def yk_to_main():
    active_channel.send("sink")
    t = time.perf_counter()
    for _ in range(ONE_WAY_N):
        active_channel.send(MSG)
    active_channel.send("sink-end")
    count = int(active_channel.receive())
    assert count == ONE_WAY_N, count
    return ONE_WAY_N / (time.perf_counter() - t)


def yk_from_main():
    active_channel.send(f"flood {ONE_WAY_N}")
    t = time.perf_counter()
    n = 0
    while active_channel.receive() != "end":
        n += 1
    assert n == ONE_WAY_N, n
    return n / (time.perf_counter() - t)


def yk_gets():
    for _ in range(GETS_N // 10):
        shared_memory.get("bench.key")
    t = time.perf_counter()
    for _ in range(GETS_N):
        shared_memory.get("bench.key")
    return GETS_N / (time.perf_counter() - t)


def _pipe_peer(conn):
    while True:
        m = conn.recv()
        if m == "quit":
            return
        if m == "sink":
            n = 0
            while conn.recv() != "sink-end":
                n += 1
            conn.send(n)
        elif isinstance(m, str) and m.startswith("flood "):
            for _ in range(int(m[6:])):
                conn.send(MSG)
            conn.send("end")
        else:
            conn.send(m)


def pipe_figures():
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_pipe_peer, args=(b,))
    p.start()
    rt = round_trips(a.send, a.recv, RT_N)
    a.send("sink")
    t = time.perf_counter()
    for _ in range(ONE_WAY_N):
        a.send(MSG)
    a.send("sink-end")
    assert a.recv() == ONE_WAY_N
    to_peer = ONE_WAY_N / (time.perf_counter() - t)
    a.send(f"flood {ONE_WAY_N}")
    t = time.perf_counter()
    n = 0
    while a.recv() != "end":
        n += 1
    from_peer = n / (time.perf_counter() - t)
    a.send("quit")
    p.join()
    return rt, to_peer, from_peer


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    rt = yk_round_trip()
    to_main = yk_to_main()
    from_main = yk_from_main()
    gets = yk_gets()
    prt, pto, pfrom = pipe_figures()
    print(f"machine: {cpu_model()}, {mp.cpu_count()} cores; Python {platform.python_version()}")
    print(f"{'measure':44} {'yukicomm':>14} {'mp.Pipe':>14}")
    print(f"{'round trip 16 B, p50 / mean (us)':44} {rt[0]:6.1f} / {rt[1]:5.1f} {prt[0]:6.1f} / {prt[1]:5.1f}")
    print(f"{'one-way, Python child -> peer (msg/s)':44} {to_main:14,.0f} {pto:14,.0f}")
    print(f"{'one-way, peer -> Python child (msg/s)':44} {from_main:14,.0f} {pfrom:14,.0f}")
    print(f"{'store get from the child (calls/s)':44} {gets:14,.0f} {'-':>14}")
    print(f"round trip vs Pipe: {rt[0] / prt[0]:.2f}x (target <= 1.5x); "
          f"one-way vs upstream's 79,000/s: {min(to_main, from_main) / 79000:.1f}x (target >= 2x); "
          f"gets vs upstream's 490/s: {gets / 490:.0f}x (target >= 20x)", flush=True)
    active_channel.send("quit")


if __name__ == "__main__":
    main()
