"""Late joiners (the Clone pattern): a subscriber joining after 20 s gets, from the snapshot, the
open events, last segment and last status of each stream, then the live messages with no gap and
no duplicate, checked against a subscriber that was there from the start."""

from __future__ import annotations

import json
import subprocess
import threading
import time

from avbind_testing import avbind_exe, free_port, wait_for

from avbind.realtime.publish.subscriber import Subscriber

TYPES = ("segment", "event", "status")


def test_a_late_joiner_gets_the_state_then_every_later_message() -> None:
    publish, snapshot = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    engine = subprocess.Popen(
        [avbind_exe(), "run", "--video", "synthetic", "--name", "cam", "--video", "synthetic:7", "--name", "door",
         "--speed", "2", "--seconds", "60", "--quiet", "--publish", publish, "--snapshot", snapshot],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reference = Subscriber(publish, types=TYPES)  # there from the start
    log: list[dict] = []
    stop = threading.Event()

    def keep() -> None:
        while not stop.is_set():
            got = reference.receive(0.1)
            if got is not None:
                log.append(got.message)

    reader = threading.Thread(target=keep, daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: len({m["stream"] for m in log if m["type"] == "segment"}) == 2, 60), \
            engine.stderr.read() if engine.poll() is not None else "no segments"
        time.sleep(20.0)  # the late joiner comes 20 s in
        late = subprocess.run([avbind_exe(), "listen", publish, "--snapshot", snapshot, "--json", "--seconds", "6"],
                              capture_output=True, text=True, timeout=60)
        assert late.returncode == 0, late.stderr
    finally:
        stop.set()
        reader.join(2)
        reference.close()
        engine.terminate()
        engine.wait(timeout=30)
    lines = [json.loads(line) for line in late.stdout.splitlines()]
    state, live = lines[0]["snapshot"], lines[1:]
    assert set(state["streams"]) == {"cam", "door"} and state["model"]["classes"]
    for name, stream in state["streams"].items():
        mine = [m for m in log if m["stream"] == name]
        seq = stream["seq"]
        # the snapshot is exactly the reference's picture after those seq
        upto = {kind: [m for m in mine if m["type"] == kind and m["seq"] <= seq[kind]] for kind in seq}
        assert stream["segment"] == upto["segment"][-1] and stream["status"] == upto["status"][-1]
        started = {m["event_id"]: m for m in upto.get("event", []) if m["event"] == "start"}
        ended = {m["event_id"] for m in upto.get("event", []) if m["event"] == "end"}
        assert stream["open_events"] == [started[k] for k in sorted(set(started) - ended)]
        # then every later message once, in order, from the next seq on
        for kind in TYPES:
            got = [m["seq"] for m in live if m["stream"] == name and m["type"] == kind]
            if not got:
                continue
            first = seq.get(kind, -1) + 1
            assert got == list(range(first, first + len(got))), (name, kind, seq.get(kind), got[:10])
            assert got == [m["seq"] for m in mine if m["type"] == kind and first <= m["seq"] <= got[-1]]
    assert any(m["type"] == "segment" for m in live), "no live segment after the snapshot"
