"""Which cameras and microphones this machine has, by the names and numbers the sources take.

``avbind devices`` prints these, so a user picks ``--video 2`` or ``--audio mic:3`` knowing what
they are rather than by trial. Microphones come from PortAudio (through sounddevice), exactly as
:class:`~avbind.realtime.sources.microphone.MicrophoneSource` opens them. Cameras come from
Video4Linux's sysfs on Linux (no device is opened, so a camera in use by another program is
listed too); other platforms have no listing OpenCV can use, and the cameras are tried by index.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Microphone:
    index: int  # what --audio mic:INDEX takes
    name: str  # (part of) it works as --audio mic:NAME too
    host_api: str  # ALSA, PulseAudio, Core Audio, WASAPI, ...
    channels: int
    default_rate_hz: float
    default: bool


@dataclass(frozen=True)
class Camera:
    index: int  # what --video INDEX takes
    path: str  # /dev/videoN, which --video takes as well
    name: str


def list_microphones() -> tuple[list[Microphone], str | None]:
    """Input devices, and None or why there are none (PortAudio missing, no sound server)."""
    try:
        import sounddevice
    except OSError as err:  # the PortAudio library itself is missing
        return [], f"sounddevice cannot load PortAudio ({err}); apt-get install libportaudio2"
    try:
        devices = sounddevice.query_devices()
        apis = sounddevice.query_hostapis()
        default_input = sounddevice.default.device[0]
    except sounddevice.PortAudioError as err:
        return [], f"PortAudio: {err}"
    found = [
        Microphone(index=i, name=d["name"], host_api=apis[d["hostapi"]]["name"], channels=d["max_input_channels"],
                   default_rate_hz=float(d["default_samplerate"]), default=i == default_input)
        for i, d in enumerate(devices) if d["max_input_channels"] > 0
    ]
    return found, None if found else "PortAudio lists no input device (no sound card or sound server running?)"


def list_cameras(sysfs: str | Path = "/sys/class/video4linux") -> tuple[list[Camera], str | None]:
    """Capture devices, and None or why there are none (or why they cannot be listed here)."""
    if not sys.platform.startswith("linux"):
        return [], "cameras are not listed on this platform: try --video 0, 1, ..."
    root = Path(sysfs)
    found = []
    for node in sorted(root.glob("video*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)):
        # A UVC camera has a second node for metadata (index 1): not something to open as --video.
        index_file = node / "index"
        if index_file.is_file() and index_file.read_text().strip() not in ("", "0"):
            continue
        number = int(re.sub(r"\D", "", node.name) or 0)
        name = (node / "name").read_text().strip() if (node / "name").is_file() else node.name
        found.append(Camera(index=number, path=f"/dev/{node.name}", name=name))
    return found, None if found else "no Video4Linux capture device (/dev/video*) on this machine"


def describe_devices() -> dict:
    """Everything ``avbind devices --json`` prints."""
    microphones, mic_problem = list_microphones()
    cameras, camera_problem = list_cameras()
    return {"cameras": [asdict(c) for c in cameras], "cameras_problem": camera_problem,
            "microphones": [asdict(m) for m in microphones], "microphones_problem": mic_problem}


def format_devices(report: dict) -> str:
    lines = ["cameras (--video INDEX or --video PATH):"]
    lines += [f"  {c['index']:>3}  {c['path']:<14} {c['name']}" for c in report["cameras"]]
    if report["cameras_problem"]:
        lines.append(f"  none: {report['cameras_problem']}")
    lines.append("microphones (--audio mic:INDEX or --audio mic:NAME; plain --audio mic is the default, *):")
    for m in report["microphones"]:
        mark = "*" if m["default"] else " "
        lines.append(f"{mark} {m['index']:>3}  {m['name']}  ({m['host_api']}, {m['channels']} ch, "
                     f"{m['default_rate_hz']:g} Hz)")
    if report["microphones_problem"]:
        lines.append(f"  none: {report['microphones_problem']}")
    return "\n".join(lines)
