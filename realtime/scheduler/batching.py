"""Run the due steps of many streams as one backend call.

One session serves every stream: per-stream state is kept by the streams and stacked along the
batch axis for the call, then split back, so streams can join, leave or reset between calls
without the backend knowing.
"""

from __future__ import annotations

import numpy as np

from avbind.realtime.backends.base import Backend
from avbind.realtime.sync.stream_aligner import StepInput


def run_batch(
    backend: Backend, steps: list[StepInput], states: list[list[np.ndarray] | None],
) -> tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]]:
    """Outputs and new state of each stream, in the order given; a None state is a fresh stream."""
    n = len(steps)
    fresh = backend.initial_state(1)
    states = [fresh if s is None else s for s in states]
    inputs = {
        "frame": np.stack([s.frame for s in steps]),
        "log_mel": np.stack([s.log_mel for s in steps]),
        "modality_mask": np.asarray([s.mask for s in steps], dtype=np.float32),
    }
    stacked = [np.concatenate([s[i] for s in states]) for i in range(len(fresh))] if n > 1 else states[0]
    outputs, new_state = backend.step(inputs, stacked)
    per_stream_out = [{k: v[i] for k, v in outputs.items()} for i in range(n)]
    per_stream_state = [[s[i : i + 1] for s in new_state] for i in range(n)]
    return per_stream_out, per_stream_state
