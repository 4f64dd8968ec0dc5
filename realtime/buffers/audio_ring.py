"""Fixed-memory ring buffers of audio samples (or log-mel frames) addressed by time.

A ring holds rows produced at a constant rate (16 000 samples/s, or 100 log-mel frames/s). Rows
have absolute indices from the first write; index ``i`` is at ``start_time + i / rate`` on the
stream timeline. Writers place rows by their timestamp, so small gaps become silence and
overlaps are trimmed, both counted; readers ask for index ranges and get fill values where data
is not there yet (an underrun) or was already overwritten (an overflow), both counted.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

GAP_TOLERANCE_S = 0.005  # s: timestamp jitter accepted before a write counts as a gap or overlap


class TimestampJump(Exception):  # noqa: N818 - a signal to reset, not a failure
    """A write whose timestamp jumps too far from where the stream was: the caller resets the stream."""


@dataclass
class RingCounters:
    rows_written: int = 0
    gap_rows: int = 0  # rows of silence inserted for small timestamp gaps
    overlap_rows: int = 0  # rows dropped because they repeated already-written time
    overflow_rows: int = 0  # rows a reader wanted that had already been overwritten
    underrun_rows: int = 0  # rows a reader had to go without because they had not arrived


class TimedRing:
    """A ring of ``capacity`` rows of shape ``row_shape`` at ``rate`` rows per second.

    Thread-safe for one writer and one reader.
    """

    def __init__(
        self, rate: float, capacity: int, row_shape: tuple[int, ...] = (), fill_value: float = 0.0,
        max_gap_s: float = 1.0,
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"ring needs rate > 0 and capacity > 0, got {rate}, {capacity}")
        self.rate = float(rate)
        self.capacity = int(capacity)
        self.row_shape = tuple(row_shape)
        self.fill_value = float(fill_value)
        self.max_gap_s = max_gap_s
        self._data = np.full((self.capacity, *self.row_shape), self.fill_value, dtype=np.float32)
        self._lock = threading.Lock()
        self.counters = RingCounters()
        self.start_time: float | None = None  # stream time of index 0
        self.end = 0  # absolute index one past the last written row

    def reset(self) -> None:
        with self._lock:
            self.start_time = None
            self.end = 0

    @property
    def end_time(self) -> float | None:
        """Stream time just after the last written row."""
        return None if self.start_time is None else self.start_time + self.end / self.rate

    def write(self, rows: np.ndarray, time: float | None = None) -> None:
        """Append ``rows`` whose first row is at stream time ``time`` (None: right after the last)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"ring rows: expected shape (n, {', '.join(map(str, self.row_shape))}), got {rows.shape}")
        with self._lock:
            if self.start_time is None:
                self.start_time = 0.0 if time is None else float(time)
            elif time is not None:
                at = (time - self.start_time) * self.rate
                lead = at - self.end
                tolerance = GAP_TOLERANCE_S * self.rate
                if abs(lead) > self.max_gap_s * self.rate:
                    raise TimestampJump(f"timestamp jumped by {lead / self.rate:+.3f} s")
                if lead > tolerance:
                    gap = round(lead)
                    self._put(np.full((gap, *self.row_shape), self.fill_value, np.float32))
                    self.counters.gap_rows += gap
                elif lead < -tolerance:
                    overlap = min(round(-lead), len(rows))
                    rows = rows[overlap:]
                    self.counters.overlap_rows += overlap
            self._put(rows)
            self.counters.rows_written += len(rows)

    def _put(self, rows: np.ndarray) -> None:
        n = len(rows)
        if n > self.capacity:  # only the newest capacity rows can be kept
            self.end += n - self.capacity
            rows = rows[-self.capacity :]
            n = self.capacity
        first = self.end % self.capacity
        head = min(n, self.capacity - first)
        self._data[first : first + head] = rows[:head]
        self._data[: n - head] = rows[head:]
        self.end += n

    def read(self, first: int, stop: int) -> tuple[np.ndarray, int]:
        """Rows [first, stop) by absolute index, fill where absent; returns (rows, rows missing).

        Negative indices (before the stream began) are filled without counting: that is how the
        first steps of a stream see silence, as in training.
        """
        out = np.full((stop - first, *self.row_shape), self.fill_value, dtype=np.float32)
        with self._lock:
            oldest = max(self.end - self.capacity, 0)
            lo, hi = max(first, oldest), min(stop, self.end)
            if hi > lo:
                self._copy(out, first, lo, hi)
            overflow = max(0, min(stop, oldest) - max(first, 0))
            underrun = max(0, stop - max(first, self.end))
            self.counters.overflow_rows += overflow
            self.counters.underrun_rows += underrun
        return out, overflow + underrun

    def _copy(self, out: np.ndarray, first: int, a: int, b: int) -> None:
        i = a
        while i < b:
            pos = i % self.capacity
            n = min(b - i, self.capacity - pos)
            out[i - first : i - first + n] = self._data[pos : pos + n]
            i += n

    def read_new(self, since: int) -> tuple[np.ndarray, int]:
        """Rows from absolute index ``since`` to the end, and the new end; for incremental consumers."""
        end = self.end
        if end <= since:
            return np.zeros((0, *self.row_shape), np.float32), since
        first = max(since, end - self.capacity)
        rows, _ = self.read(first, end)
        if first > since:
            self.counters.overflow_rows += first - since
        return rows, end


def ring_capacity(rate: float, seconds: float) -> int:
    return max(1, math.ceil(rate * seconds))
