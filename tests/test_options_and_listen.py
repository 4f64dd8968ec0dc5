"""Bad command-line values fail at parse time, and ``avbind listen`` survives hostile publishers.

The option tests run the installed ``avbind`` in a subprocess: each must exit 2 with argparse's
one-line error naming the option, before any model loads (so they are fast). The listen tests use a
real ZeroMQ PUB socket on loopback that sends what a wrong or hostile publisher could send.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time

import jsonschema
import numpy as np
import pytest
import zmq
from avbind_testing import avbind_exe, free_port

from avbind.realtime.postprocess.events import DetectorSettings
from avbind.realtime.postprocess.segments import SegmentPrediction
from avbind.realtime.postprocess.stream_outputs import OutputSettings
from avbind.realtime.publish.messages import schema, segment_payload, topic
from avbind.realtime.publish.subscriber import Subscriber, escape, format_message
from avbind.realtime.scheduler.stream import StreamSettings

RUN = ["run", "--video", "x.mp4"]
BAD_OPTIONS = [
    ([*RUN, "--segment-s", "0"], "--segment-s"),
    ([*RUN, "--segment-s", "nan"], "--segment-s"),
    ([*RUN, "--event-on", "2"], "--event-on"),
    ([*RUN, "--event-on", "0"], "--event-on"),
    ([*RUN, "--event-off", "-0.1"], "--event-off"),
    ([*RUN, "--event-off", "0.7"], "--event-off"),  # above the default --event-on 0.6
    ([*RUN, "--event-off", "0.5", "--event-on", "0.4"], "--event-off"),
    ([*RUN, "--event-min-s", "-1"], "--event-min-s"),
    ([*RUN, "--event-gap-s", "inf"], "--event-gap-s"),
    ([*RUN, "--audio-wait-s", "nan"], "--audio-wait-s"),
    ([*RUN, "--audio-wait-s", "-0.5"], "--audio-wait-s"),
    ([*RUN, "--max-lag-s", "-1"], "--max-lag-s"),
    ([*RUN, "--max-lag-s", "0"], "--max-lag-s"),
    ([*RUN, "--batch-wait-ms", "-1"], "--batch-wait-ms"),
    ([*RUN, "--threads", "-2"], "--threads"),
    ([*RUN, "--threads", "two"], "--threads"),
    ([*RUN, "--speed", "nan"], "--speed"),
    ([*RUN, "--speed", "-1"], "--speed"),
    ([*RUN, "--seconds", "0"], "--seconds"),
    ([*RUN, "--seconds", "nan"], "--seconds"),
    ([*RUN, "--name", "a/b"], "--name"),
    ([*RUN, "--name", ""], "--name"),
    ([*RUN, "--name", "   "], "--name"),
    ([*RUN, "--name", "\x1b[31mred"], "--name"),
    ([*RUN, "--name", "two\nlines"], "--name"),
    ([*RUN, "--name", "x" * 65], "--name"),
    (["demo", "--speed", "0"], "--speed"),
    (["demo", "--seconds", "-5"], "--seconds"),
    (["demo", "--event-on", "2"], "--event-on"),
    (["live", "--max-lag-s", "nan"], "--max-lag-s"),
    (["listen", "--seconds", "0"], "--seconds"),
    (["listen", "--count", "0"], "--count"),
    (["listen", "--stream", "a/b"], "--stream"),
]


def _check_usage_error(result: subprocess.CompletedProcess, option: str) -> None:
    stderr = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {option}" in errors[0], stderr
    assert "\x1b" not in stderr  # a hostile name is shown escaped, not interpreted by the terminal


@pytest.mark.parametrize(("args", "option"), BAD_OPTIONS, ids=[" ".join(a[1:] if a[0] == "run" else a)
                                                                for a, _ in BAD_OPTIONS])
def test_bad_option_values_fail_at_parse_time(args: list[str], option: str) -> None:
    result = subprocess.run([avbind_exe(), *args], capture_output=True, timeout=60)
    _check_usage_error(result, option)


def test_a_stream_name_that_is_not_utf8_fails_at_parse_time() -> None:
    # b"\xff" reaches Python as a surrogate escape, which cannot become a UTF-8 ZeroMQ topic
    result = subprocess.run([avbind_exe(), *RUN, "--name", b"cam\xff"], capture_output=True, timeout=60)
    _check_usage_error(result, "--name")


def test_good_values_still_parse() -> None:
    from avbind.realtime.cli import build_parser

    args = build_parser().parse_args([*RUN, "--speed", "0", "--event-on", "0.8", "--event-off", "0.8",
                                            "--audio-wait-s", "0", "--threads", "2", "--name", "cam 0"])
    assert args.speed == 0 and args.threads == 2 and args.name == ["cam 0"]
    assert math.isinf(build_parser().parse_args([*RUN, "--speed", "inf"]).speed)  # unpaced


@pytest.mark.parametrize("make", [
    lambda: OutputSettings(segment_s=0),
    lambda: OutputSettings(segment_s=math.nan),
    lambda: DetectorSettings(on=2.0),
    lambda: DetectorSettings(on=0.5, off=0.0),
    lambda: DetectorSettings(min_duration_s=math.nan),
    lambda: DetectorSettings(merge_gap_s=-1),
    lambda: StreamSettings(audio_wait_s=math.nan),
    lambda: StreamSettings(max_lag_s=-1),
    lambda: StreamSettings(max_lag_s=math.inf),
])
def test_settings_reject_bad_values_for_library_users(make) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("name", ["a/b", "", " ", "\x1b[2J", "a\nb", "cam\udcff", "x" * 65])
def test_topic_rejects_bad_stream_names(name: str) -> None:
    with pytest.raises(ValueError):
        topic(name, "segment")


# listen ------------------------------------------------------------------------------------------
NAMES = ("slide left red disc", "grow green triangle", "background")
EVIL = "\x1b[2J\x1b]0;pwned\x07\nFAKE LINE"


def _envelope(stream: str, kind: str, seq: int = 0) -> dict:
    now = time.time()
    return {"schema_version": 1, "type": kind, "stream": stream, "seq": seq, "capture_time": now - 0.01,
            "publish_time": now}


def _valid_segment(label: str = "slide left red disc") -> tuple[list[bytes], dict]:
    probs = np.array([0.7, 0.1, 0.2], np.float32)
    payload = segment_payload(SegmentPrediction(3, 3.0, 4.0, probs, 5, 0, 0.0), (label, *NAMES[1:]))
    message = {**_envelope("cam0", "segment"), **payload}
    jsonschema.Draft202012Validator(schema()).validate(message)  # truly valid, only its label is nasty
    return [b"avbind/cam0/segment", json.dumps(message).encode()], message


def _hostile() -> list[list[bytes]]:
    good = _valid_segment()[1]
    evil_stream = {**good, "stream": f"evil{EVIL}"}
    return [
        [b"avbind/cam0/segment"],  # one frame
        [b"avbind/cam0/segment", b"{}", b"extra"],  # three frames
        [b"avbind/cam0/segment", b"not json {"],
        [b"avbind/cam0/segment", b"\xff\xfe"],  # body not UTF-8
        [b"avbind/cam0/segment", b"[1, 2, 3]"],  # JSON, but not an object
        [b"avbind/cam0/segment", b'"just a string"'],
        [b"avbind/cam0/segment", json.dumps({"type": "segment"}).encode()],  # missing fields
        [b"avbind/cam0/segment", json.dumps({**good, "seq": "zero"}).encode()],  # wrong field type
        [b"avbind/cam0/segment", json.dumps({**good, "stream": None}).encode()],
        [b"avbind/\xff/segment", json.dumps(good).encode()],  # topic not UTF-8
        [b"avbind/cam0", json.dumps(good).encode()],  # topic not avbind/<stream>/<type>
        [f"avbind/evil{EVIL}/segment".encode(), json.dumps(evil_stream).encode()],
    ]


def _pub() -> tuple[zmq.Socket, str]:
    socket = zmq.Context.instance().socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    socket.bind(endpoint)
    return socket, endpoint


def test_listen_survives_hostile_messages_and_prints_the_valid_one_escaped() -> None:
    pub, endpoint = _pub()
    valid, _ = _valid_segment(label=f"nasty{EVIL}")
    listen = subprocess.Popen([avbind_exe(), "listen", endpoint, "--count", "1", "--seconds", "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        while listen.poll() is None and time.monotonic() < deadline:  # ZeroMQ's slow joiner: resend until heard
            for frames in _hostile():
                pub.send_multipart(frames)
            pub.send_multipart(valid)
            time.sleep(0.05)
        stdout, stderr = listen.communicate(timeout=10)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.communicate()
        pub.close()
    err = stderr.decode("utf-8", "backslashreplace")
    assert listen.returncode == 0, err
    assert "Traceback" not in err, err
    assert b"\x1b" not in stdout and b"\x07" not in stdout and b"\x1b" not in stderr
    lines = stdout.decode().splitlines()
    assert len(lines) == 1, lines  # the valid message, on one line: its newline did not forge another
    assert lines[0].startswith("[cam0]") and "nasty\\x1b[2J" in lines[0] and "\\x0aFAKE LINE" in lines[0]
    assert " ms)" in lines[0] and "age " in lines[0]  # how stale the message is
    assert "malformed" in err  # skipped and counted, and said so on stderr


def test_subscriber_counts_malformed_messages_and_logs_rate_limited(caplog) -> None:
    pub, endpoint = _pub()
    subscriber = Subscriber(endpoint, types=("segment", "event", "status"))
    valid, _ = _valid_segment()
    try:
        deadline = time.monotonic() + 20
        while (first := subscriber.receive(0.02)) is None and time.monotonic() < deadline:
            pub.send_multipart(valid)  # slow joiner: until one arrives
        assert first is not None, "subscriber never connected"
        while subscriber.receive(0.1) is not None:
            pass
        caplog.set_level(logging.WARNING, logger="avbind.realtime.publish.subscriber")
        hostile = _hostile()
        for frames in hostile:
            pub.send_multipart(frames)
        pub.send_multipart(valid)
        received = subscriber.receive(5.0)
    finally:
        subscriber.close()
        pub.close()
    assert received is not None and received.message["stream"] == "cam0"
    assert subscriber.malformed == len(hostile)
    notices = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(notices) <= 1 and all("\x1b" not in r.getMessage() and "\n" not in r.getMessage() for r in notices)


@pytest.mark.parametrize("message", [
    {},
    {"type": "segment"},
    {"type": "segment", "stream": "s", "top": "nope", "start": "a", "end": None, "label": 3},
    {"type": "event", "event": "end", "start": "x", "end": 2.0, "label": ["l"]},
    {"type": "status", "stream": "s", "latency_ms": None, "drops": [1], "message": EVIL},
    {"type": "status", "stream": "s", "latency_ms": {"p50": "x", "p99": 1}, "drops": {EVIL: 1}},
    {"type": "step", "stream": "s", "scores": [{"label": EVIL}, 3, {"label": "ok", "score": "high"}]},
    {"type": EVIL, "stream": EVIL, "publish_time": "yesterday"},
])
def test_format_message_never_raises_and_escapes(message: dict) -> None:
    line = format_message(message)
    assert line.isprintable() and "\x1b" not in line and "\n" not in line


def test_format_message_shows_age_and_escapes_every_string() -> None:
    _, message = _valid_segment(label=EVIL)
    message = {**message, "stream": f"cam{EVIL}", "publish_time": 100.0}
    line = format_message(message, now=100.25)
    assert line.isprintable() and line.endswith("(age 250 ms)")
    assert escape("a\nb\x1b") == "a\\x0ab\\x1b"
