"""A peer flooding the published endpoint with subscriptions (long strings, many short ones that
look like avbind topics, connect/disconnect churn) must not grow the engine's memory nor slow its
steps: measured against a stretch of the same run without the attack."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from avbind_testing import wait_for

from avbind.models.weights import default_onnx
from avbind.realtime.backends import create_backend
from avbind.realtime.engine import Engine
from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.publish.subscriber import Subscriber
from avbind.realtime.sources.synthetic import SyntheticSource

ATTACK = r"""
import os, sys, time, zmq
endpoint, seconds, flood = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "flood"
context = zmq.Context()
end = time.monotonic() + seconds
while not flood and time.monotonic() < end:  # the control: the same process, as busy, no subscriptions
    sum(os.urandom(2048))
while flood and time.monotonic() < end:
    peers = []
    for k in range(10):
        s = context.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        for j in range(300):  # short ones that look like avbind topics
            s.setsockopt(zmq.SUBSCRIBE, b"avbind/" + os.urandom(24).hex().encode() + b"/")
        for j in range(100):  # 300 bytes of noise: can match no topic (refused and counted)
            s.setsockopt(zmq.SUBSCRIBE, os.urandom(150).hex().encode())
        for j in range(20):  # long strings, 4 KiB each: libzmq drops the peer at the first
            s.setsockopt(zmq.SUBSCRIBE, os.urandom(2048).hex().encode())
        peers.append(s)
    time.sleep(0.5)
    for s in peers:  # churn: every round's peers leave
        s.close()
"""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class _PeakRss(threading.Thread):
    """The largest RSS seen while it runs, sampled every 0.2 s (the synthetic source's clips come and
    go, so one reading at the end of a window says little)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = _rss_mb(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakRss:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


def test_subscription_flood_leaves_memory_and_step_rate_alone() -> None:
    publisher = Publisher("tcp://127.0.0.1:*")
    engine = Engine(create_backend(default_onnx()), publisher)
    refused: list[int] = []
    engine.listeners.append(lambda m: refused.append(m["drops"].get("subscriptions_refused", 0))
                            if m["type"] == "status" else None)
    subscriber = Subscriber(publisher.bound[0], types=("segment", "status"))
    received: list[dict] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            got = subscriber.receive(0.1)
            if got is not None:
                received.append(got.message)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    engine.start()
    stream = engine.add_stream("cam", [SyntheticSource(seed=7)])
    window = 12.0
    try:
        assert wait_for(lambda: stream.counters.steps > 20, 60)
        time.sleep(3.0)  # past start-up allocations
        # the control: the same engine, the same length of time, no attack
        steps0 = stream.counters.steps
        with _PeakRss() as control:
            hog = subprocess.Popen([sys.executable, "-c", ATTACK, publisher.bound[0], str(window), "control"])
            hog.wait(timeout=window + 60)
            time.sleep(1.0)
        steps_control = stream.counters.steps - steps0
        steps1 = stream.counters.steps
        with _PeakRss() as attacked:
            attacker = subprocess.Popen([sys.executable, "-c", ATTACK, publisher.bound[0], str(window), "flood"])
            attacker.wait(timeout=window + 60)
            time.sleep(1.0)  # the last round's departures are handled
        steps_attack = stream.counters.steps - steps1
    finally:
        engine.stop()
        stop.set()
        reader.join(2)
        subscriber.close()
        publisher.close()
    assert attacked.peak <= 1.10 * control.peak, (
        f"peak RSS {control.peak:.0f} MB without the attack, {attacked.peak:.0f} MB with it")
    # steps are paced by the source (the attack window is at least as long as the control's): an
    # engine the attack slowed would fall behind it and step less
    assert steps_attack >= 0.9 * steps_control, (steps_attack, steps_control)
    assert max(refused, default=0) > 0, "the refused subscriptions are reported in status drops"
    assert publisher.guard is not None and len(publisher.guard.held) <= 2, publisher.guard.held  # only ours
    seqs = [m["seq"] for m in received if m["type"] == "segment"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the legitimate subscriber lost messages"


GREEDY = r"""
import os, sys, time, zmq
endpoint, count = sys.argv[1], int(sys.argv[2])
context = zmq.Context()
s = context.socket(zmq.SUB)
s.setsockopt(zmq.SNDHWM, 0)  # nothing held back on the attacker's side: every subscription is sent
s.setsockopt(zmq.RECONNECT_IVL, -1)  # once dropped, stay away (a reconnect is a fresh, budgeted peer)
s.connect(endpoint)
for j in range(count):  # one peer, never leaving, all of them look like avbind topics (56 bytes)
    s.setsockopt(zmq.SUBSCRIBE, b"avbind/" + os.urandom(24).hex().encode() + b"/")
print("sent", flush=True)
time.sleep(60)
"""


def test_one_greedy_peer_is_dropped_and_frees_what_it_cost() -> None:
    """libzmq stores every subscription a peer sends before the application sees it, so refusing
    them did not bound one peer that never leaves (it grew the engine by ~3 KB per topic, without
    limit); its budget does."""
    publisher = Publisher("tcp://127.0.0.1:*")
    subscriber = Subscriber(publisher.bound[0], types=("segment",))
    attacker = None
    try:
        assert wait_for(lambda: len(publisher.guard.held) >= 1, 10)  # ours is applied
        time.sleep(0.5)
        before = _rss_mb()
        with _PeakRss() as attacked:
            attacker = subprocess.Popen([sys.executable, "-c", GREEDY, publisher.bound[0], "50000"],
                                        stdout=subprocess.PIPE, text=True)
            assert attacker.stdout.readline().strip() == "sent"
            assert wait_for(lambda: publisher.subscribers_dropped >= 1, 60)
            time.sleep(1.0)
        # The same socket still serves the subscriber that behaved.
        for seq in range(3):
            publisher.publish("cam", "segment", {"segment": seq}, time.monotonic())
        got = [subscriber.receive(10) for _ in range(3)]
    finally:
        if attacker is not None:
            attacker.kill()
            attacker.wait()
        subscriber.close()
        publisher.close()
    assert attacked.peak - before < 40, f"RSS {before:.0f} MB -> {attacked.peak:.0f} MB with one greedy peer"
    assert [g.message["segment"] for g in got if g is not None] == [0, 1, 2]
    assert publisher.subscriptions_refused > 0
