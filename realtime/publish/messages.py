"""The JSON messages avbind publishes, built in one place and described by ``message_schema.json``.

Every message is a ZeroMQ multipart ``[topic, json]`` with topic ``avbind/<stream>/<type>``, so a
subscriber filters by prefix (``avbind/cam0/`` for one stream, ``avbind/cam0/event`` for its
events) without parsing JSON. The one exception is ``preview`` (``--preview-fps``): ``[topic, json,
jpeg]``, the picture as raw bytes in a third frame, so that nothing is base64-inflated and a
subscriber that does not want pictures never decodes them.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import numpy as np

from avbind.realtime.postprocess.events import EventBoundary
from avbind.realtime.postprocess.segments import SegmentPrediction

SCHEMA_VERSION = 1
TYPES = ("segment", "event", "status", "step", "preview")
ATTACHED = ("preview",)  # types whose message carries a third, binary frame
TOP_K = 3  # classes listed in a segment message


def schema() -> dict:
    """The JSON Schema every message validates against."""
    return json.loads(files("avbind.realtime.publish").joinpath("message_schema.json").read_text())


# Bytes of UTF-8 (64 characters of ASCII); names go into every topic and every printed line, and
# the published socket drops a peer whose subscription is longer than the longest topic could be
# (subscription_guard.py): libzmq's cost per subscription grows with the square of its length.
MAX_STREAM_NAME = 64


def check_stream_name(stream: str) -> str:
    """Return ``stream`` if it can be a topic segment, else raise ValueError saying why.

    The name becomes ``avbind/<stream>/<type>``: a ``/`` would break prefix filtering, and control
    characters or text that is not UTF-8 would end up raw in subscribers' terminals and topics.
    Called by the CLI at parse time and by :func:`topic`, so a bad name fails before anything starts.
    """
    if not isinstance(stream, str):
        raise ValueError(f"stream names must be strings, got {type(stream).__name__}")
    if not stream.strip():
        raise ValueError(f"stream names must be non-empty and not only whitespace, got {stream!r}")
    if "/" in stream:
        raise ValueError(f"stream names must contain no '/', got {stream!r}")
    if not stream.isprintable():
        raise ValueError(f"stream names must contain no control or other unprintable characters, got {stream!r}")
    try:
        size = len(stream.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"stream names must be valid UTF-8, got {stream!r}") from None
    if size > MAX_STREAM_NAME:
        raise ValueError(f"stream names must be at most {MAX_STREAM_NAME} bytes in UTF-8 (64 ASCII characters), "
                         f"got {size}")
    return stream


def topic(stream: str, kind: str) -> str:
    """The ZeroMQ topic of a message; raises ValueError for unknown types and unusable stream names."""
    if kind not in TYPES:
        raise ValueError(f"message type must be one of {TYPES}, got {kind!r}")
    check_stream_name(stream)
    return f"avbind/{stream}/{kind}"


def _scores(names: tuple[str, ...], probs: np.ndarray, k: int | None = None) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable") if k else np.arange(len(probs))
    return [{"label": names[i], "score": round(float(np.clip(probs[i], 0, 1)), 5)} for i in order[:k]]


def segment_payload(
    segment: SegmentPrediction, event_names: tuple[str, ...], verb_names: tuple[str, ...] = (),
    noun_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    c = segment.class_index
    payload = {
        "segment": segment.index, "start": round(segment.start, 6), "end": round(segment.end, 6),
        "label": event_names[c], "class_index": c, "confidence": round(float(segment.probs[c]), 5),
        "is_background": c == len(event_names) - 1, "top": _scores(event_names, segment.probs, TOP_K),
        "steps": segment.steps, "degraded_steps": segment.degraded_steps,
    }
    if segment.verb_probs is not None and verb_names:
        payload["verb"] = _scores(verb_names, segment.verb_probs, 1)[0]
    if segment.noun_probs is not None and noun_names:
        payload["noun"] = _scores(noun_names, segment.noun_probs, 1)[0]
    return payload


def event_payload(boundary: EventBoundary, class_names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "event": boundary.kind, "event_id": boundary.event_id, "label": class_names[boundary.class_index],
        "class_index": boundary.class_index, "start": round(boundary.start, 6),
        "end": None if boundary.end is None else round(boundary.end, 6),
        "confidence": round(boundary.confidence, 5), "peak": round(boundary.peak, 5),
    }


def step_payload(
    index: int, t: float, probs: np.ndarray, event_names: tuple[str, ...], degraded: bool,
    mask: tuple[float, float],
) -> dict[str, Any]:
    return {"step": index, "time": round(t, 6), "scores": _scores(event_names, probs), "degraded": degraded,
            "modality_mask": [float(m) for m in mask]}


def preview_payload(width: int, height: int, frame_time: float, nbytes: int) -> dict[str, Any]:
    """A preview's JSON frame; the JPEG itself (``nbytes`` long) travels as the message's third frame."""
    return {"width": int(width), "height": int(height), "format": "jpeg", "time": round(frame_time, 6),
            "bytes": int(nbytes)}
