"""Publishing over real ZeroMQ sockets: topics, schema, sequence numbers, and a stalled subscriber."""

from __future__ import annotations

import threading
import time

import jsonschema
import numpy as np
import pytest
import zmq

from avbind.realtime.postprocess.events import EventBoundary
from avbind.realtime.postprocess.segments import SegmentPrediction
from avbind.realtime.publish.messages import event_payload, schema, segment_payload, step_payload, topic
from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.publish.subscriber import Subscriber, format_message

NAMES = ("slide left red disc", "grow green triangle", "background")
VALIDATOR = jsonschema.Draft202012Validator(schema())


def _status() -> dict:
    return {"state": "running", "level": "info", "message": "", "backend": "onnxruntime on cpu", "fps": 25.0,
            "steps": 10, "steps_per_s": 5.0, "latency_ms": {"p50": 4.0, "p99": 6.5}, "sources": ["x.mp4"],
            "drops": {"steps_skipped": 0, "frames_evicted": 0, "audio_overflows": 0, "audio_overwritten": 0,
                      "audio_underruns": 0,
                      "degraded_steps": 0, "resets": 0}}


def _payloads() -> list[tuple[str, dict]]:
    probs = np.array([0.7, 0.1, 0.2], np.float32)
    segment = SegmentPrediction(3, 3.0, 4.0, probs, 5, 1, 0.0, np.array([0.9, 0.1]), np.array([0.2, 0.8]))
    start = EventBoundary("start", 0, 1, 2.4, None, 0.8, 0.9, 0.0)
    end = EventBoundary("end", 0, 1, 2.4, 5.0, 0.75, 0.9, 0.0)
    return [
        ("segment", segment_payload(segment, NAMES, ("slide left", "grow"), ("red disc", "green triangle"))),
        ("event", event_payload(start, NAMES[:-1])),
        ("event", event_payload(end, NAMES[:-1])),
        ("status", _status()),
        ("step", step_payload(12, 2.4, probs, NAMES, False, (1.0, 0.0))),
    ]


def _connected(publisher: Publisher, subscriber: Subscriber, stream: str) -> None:
    """Publish status messages until the subscriber sees one: ZeroMQ's slow joiner, done properly."""
    for _ in range(200):
        publisher.publish(stream, "status", _status(), time.monotonic())
        if subscriber.receive(0.02) is not None:
            while subscriber.receive(0.05) is not None:
                pass
            return
    raise AssertionError("subscriber never connected")


def test_every_message_type_is_valid_and_arrives_with_its_topic():
    publisher = Publisher("tcp://127.0.0.1:*")
    subscriber = Subscriber(publisher.bound[0], types=("segment", "event", "status", "step"))
    try:
        _connected(publisher, subscriber, "cam0")
        sent = [publisher.publish("cam0", kind, payload, time.monotonic()) for kind, payload in _payloads()]
        got = [subscriber.receive(2.0) for _ in sent]
    finally:
        subscriber.close()
        publisher.close()
    assert [g.topic for g in got] == [topic("cam0", m["type"]) for m in sent]
    for received in got:
        VALIDATOR.validate(received.message)
        assert received.message["schema_version"] == 1
        assert received.message["publish_time"] >= received.message["capture_time"] - 1
        assert format_message(received.message)  # every type has a readable line
    assert got[1].message["seq"] == 0 and got[2].message["seq"] == 1  # per stream and type
    assert got[0].message["verb"] == {"label": "slide left", "score": 0.9}


def test_schema_rejects_malformed_messages():
    good = {"schema_version": 1, "stream": "s", "seq": 0, "capture_time": 1.0, "publish_time": 1.0}
    kind, payload = _payloads()[0]
    VALIDATOR.validate({**good, "type": kind, **payload})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**good, "type": kind, **{k: v for k, v in payload.items() if k != "label"}})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**good, "type": "event", **_payloads()[1][1], "event": "middle"})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**good, "type": "status", **{**_status(), "drops": {"steps_skipped": -1}}})


def test_stream_filter_and_ipc_endpoint(tmp_path):
    publisher = Publisher(f"ipc://{tmp_path}/avbind.sock")
    only_b = Subscriber(publisher.bound[0], stream="b", types=("status",))
    try:
        for _ in range(200):  # wait until connected
            publisher.publish("b", "status", _status(), time.monotonic())
            if only_b.receive(0.02):
                break
        publisher.publish("a", "status", _status(), time.monotonic())
        publisher.publish("b", "status", {**_status(), "message": "from b"}, time.monotonic())
        messages = []
        while (r := only_b.receive(0.3)) is not None:
            messages.append(r.message)
    finally:
        only_b.close()
        publisher.close()
    assert messages and all(m["stream"] == "b" for m in messages)
    assert messages[-1]["message"] == "from b"


def test_stalled_subscriber_never_blocks_the_publisher_and_sees_its_losses():
    publisher = Publisher("tcp://127.0.0.1:*", hwm=50)
    stalled = Subscriber(publisher.bound[0], types=("status",), hwm=50)
    sink = zmq.Context.instance().socket(zmq.SUB)  # a raw socket that connects and never reads
    sink.setsockopt(zmq.RCVHWM, 10)
    sink.setsockopt_string(zmq.SUBSCRIBE, "")
    sink.connect(publisher.bound[0])
    try:
        _connected(publisher, stalled, "s")
        done = threading.Event()

        def flood() -> None:
            for _ in range(20_000):
                publisher.publish("s", "status", _status(), time.monotonic())
            done.set()

        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(60), "publishing blocked on subscribers that do not read"
        received = []
        while (r := stalled.receive(0.5)) is not None:
            received.append(r)
    finally:
        sink.close()
        stalled.close()
        publisher.close()
    assert 0 < len(received) < 20_000  # ZeroMQ dropped for the slow reader instead of blocking
    assert stalled.missed > 0 and stalled.missed == sum(r.missed for r in received)
