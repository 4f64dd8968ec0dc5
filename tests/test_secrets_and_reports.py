"""Field-readiness regressions: camera passwords never leave the engine; reports are strict JSON."""

from __future__ import annotations

import json

from avbind_testing import free_port, messages_until_ended

from avbind.realtime.sources.media_stream import MediaStreamSource, redact_credentials


def test_redaction_hides_passwords_and_secret_options_but_keeps_the_rest() -> None:
    assert redact_credentials("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact_credentials("rtsp://admin@cam/x") == "rtsp://admin@cam/x"  # no password: nothing to hide
    assert "s3cr3t" not in redact_credentials("srt://h:9000?mode=caller&passphrase=s3cr3t&latency=20")
    assert redact_credentials("clip.mp4") == "clip.mp4"
    assert redact_credentials("http://host/a@b.mp4") == "http://host/a@b.mp4"  # '@' in a path is not userinfo


def test_a_password_in_a_network_url_is_never_published() -> None:
    """Every status message of a stream whose URL holds a password, published for real, lacks it."""

    port = free_port()  # nobody listens: the source fails, and its failure is what gets published
    url = f"rtsp://viewer:hunter2@127.0.0.1:{port}/cam"
    source = MediaStreamSource(url, reconnect=False, open_timeout_s=2, read_timeout_s=2)
    assert "hunter2" not in source.name
    messages = messages_until_ended("cam", [source], timeout_s=30)
    text = json.dumps(messages)
    assert "127.0.0.1" in text  # the source is still named ...
    assert "hunter2" not in text  # ... without its password


def test_eval_report_is_strict_json_with_undefined_figures_as_null() -> None:
    from avbind.models.evaluation import strict_json

    report = {"per_class_accuracy": {"kettle": float("nan"), "door": 0.5}, "top5": [float("inf"), 1.0]}
    parsed = json.loads(strict_json(report), parse_constant=lambda word: (_ for _ in ()).throw(ValueError(word)))
    assert parsed == {"per_class_accuracy": {"kettle": None, "door": 0.5}, "top5": [None, 1.0]}
