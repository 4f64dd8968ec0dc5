"""Fixtures shared by several test files: a PulseAudio null sink as the microphone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

SINK_RATE = 48_000  # Hz, the null sink's rate


@pytest.fixture(scope="session")
def pulse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private PulseAudio daemon with a null sink ``vsink`` whose monitor is the default source."""
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("needs the pulseaudio binary and pactl (apt: pulseaudio pulseaudio-utils)")
    runtime = tmp_path_factory.mktemp("xdg")  # holds the daemon's socket: keep the path short
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_RUNTIME_DIR", str(runtime))
        patch.delenv("PULSE_SERVER", raising=False)
        subprocess.run(
            [
                "pulseaudio", "-D", "-n", "--system=false", "--exit-idle-time=-1",
                "--load=module-native-protocol-unix auth-anonymous=1",
                f"--load=module-null-sink sink_name=vsink rate={SINK_RATE}", "--load=module-always-sink",
            ],
            check=True, timeout=30, capture_output=True,
        )  # fmt: skip
        pid_file = runtime / "pulse" / "pid"
        try:
            subprocess.run(["pactl", "set-default-sink", "vsink"], check=True, timeout=10)
            subprocess.run(["pactl", "set-default-source", "vsink.monitor"], check=True, timeout=10)
            if "sounddevice" in sys.modules:  # PortAudio lists devices once: rescan now that "pulse" can open
                sounddevice = sys.modules["sounddevice"]
                sounddevice._terminate()
                sounddevice._initialize()
            yield "pulse"
        finally:
            if pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
