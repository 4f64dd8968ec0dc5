"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations


def random_clip(model, batch: int, time: int, seed: int):
    """Frames in [0, 1] and log-mel windows at realistic levels, for ``model``'s input sizes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c = model.config
    size = c.video.input_size
    frames = torch.rand(batch, time, 3, size, size, generator=g)
    log_mels = torch.randn(batch, time, c.audio.window_frames, c.features.n_mels, generator=g) * 3 - 6
    return frames, log_mels


def calibrated_model(config, seed: int = 1000):
    """A random AVBindNet whose BatchNorm running statistics were measured on random clips.

    With fresh statistics (mean 0, var 1) the activations of a randomly initialised MobileNet shrink
    about tenfold per stage in eval mode, so every output would be nearly constant and a parity
    test would pass for the wrong reason.
    """
    import torch

    from avbind.models.network import AVBindNet

    torch.manual_seed(0)
    model = AVBindNet(config)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(*random_clip(model, 2, 4, seed=seed + i))
    return model.eval()


def wait_for(condition, timeout_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; its last value either way.

    For the threads of live sources and the engine: a bounded wait instead of a fixed sleep.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return bool(condition())


def free_port(udp: bool = False) -> int:
    """A loopback port nobody listens on right now (TCP, or UDP for stream senders)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def avbind_exe() -> str:
    """The ``avbind`` console script of the running interpreter's environment, else the one on PATH.

    A virtual environment's scripts are next to its python, and tests run with that python need not
    have the environment's ``bin`` on PATH.
    """
    import shutil
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "avbind"
    if beside.exists():
        return str(beside)
    return shutil.which("avbind") or "avbind"


def messages_until_ended(name: str, sources: list, timeout_s: float) -> list[dict]:
    """Every message one stream of ``sources`` gives on the shipped model until its ``ended`` status."""
    from avbind.models.weights import default_onnx
    from avbind.realtime.backends import create_backend
    from avbind.realtime.engine import Engine

    engine = Engine(create_backend(default_onnx()))
    messages: list[dict] = []
    engine.listeners.append(messages.append)
    engine.start()
    try:
        engine.add_stream(name, sources)
        assert wait_for(lambda: any(m.get("state") == "ended" for m in messages), timeout_s), messages
    finally:
        engine.stop()
    return messages
