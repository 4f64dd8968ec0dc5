"""Ring buffers and the latest-frame buffer: placement by timestamp, gaps, overlaps, overflows, underruns."""

from __future__ import annotations

import numpy as np
import pytest

from avbind.realtime.buffers.audio_ring import TimedRing, TimestampJump
from avbind.realtime.buffers.frame_buffer import FrameBuffer
from avbind.realtime.sources.base import VideoFrame


def test_ring_reads_back_what_was_written_across_wraparound():
    ring = TimedRing(rate=100, capacity=50)
    signal = np.arange(130, dtype=np.float32)
    for i in range(0, 130, 7):
        ring.write(signal[i : i + 7], time=2.0 + i / 100)
    assert ring.start_time == 2.0 and ring.end == 130
    rows, missing = ring.read(90, 130)
    np.testing.assert_array_equal(rows, signal[90:130])
    assert missing == 0
    assert ring.counters.gap_rows == ring.counters.overlap_rows == 0


def test_ring_counts_overflow_and_underrun_and_fills_them():
    ring = TimedRing(rate=100, capacity=50, fill_value=-1.0)
    ring.write(np.arange(100, dtype=np.float32), time=0.0)
    rows, missing = ring.read(40, 110)  # 40..49 overwritten, 100..109 not yet written
    assert missing == 20
    assert ring.counters.overflow_rows == 10 and ring.counters.underrun_rows == 10
    np.testing.assert_array_equal(rows[:10], -1.0)
    np.testing.assert_array_equal(rows[10:60], np.arange(50, 100))
    np.testing.assert_array_equal(rows[60:], -1.0)
    # Before the stream began is silence by definition, not a loss.
    rows, missing = ring.read(-5, 0)
    assert missing == 0 and (rows == -1.0).all()


def test_ring_places_rows_by_timestamp_filling_gaps_and_trimming_overlaps():
    ring = TimedRing(rate=1000, capacity=1000)
    ring.write(np.ones(100, np.float32), time=0.0)
    ring.write(np.full(100, 2.0, np.float32), time=0.15)  # 50 ms late: 50 rows of silence first
    assert ring.end == 250 and ring.counters.gap_rows == 50
    ring.write(np.full(100, 3.0, np.float32), time=0.23)  # starts 20 rows before the end: trimmed
    assert ring.end == 330 and ring.counters.overlap_rows == 20
    rows, _ = ring.read(0, 330)
    assert (rows[100:150] == 0).all() and (rows[150:250] == 2).all() and (rows[250:] == 3).all()
    ring.write(np.ones(10, np.float32), time=0.332)  # 2 ms of jitter is not a gap
    assert ring.counters.gap_rows == 50 and ring.end == 340


def test_ring_raises_on_a_timestamp_jump_and_rejects_wrong_rows():
    ring = TimedRing(rate=100, capacity=100, row_shape=(4,), max_gap_s=1.0)
    ring.write(np.zeros((10, 4), np.float32), time=5.0)
    with pytest.raises(TimestampJump, match="jumped"):
        ring.write(np.zeros((10, 4), np.float32), time=9.0)
    with pytest.raises(TimestampJump):
        ring.write(np.zeros((10, 4), np.float32), time=1.0)
    with pytest.raises(ValueError, match=r"expected shape \(n, 4\)"):
        ring.write(np.zeros((10, 3), np.float32), time=5.1)


def test_ring_read_new_delivers_each_row_once():
    ring = TimedRing(rate=10, capacity=8)
    seen, cursor = [], 0
    for i in range(0, 20, 3):
        ring.write(np.arange(i, i + 3, dtype=np.float32))
        rows, cursor = ring.read_new(cursor)
        seen += rows.tolist()
    assert seen == list(range(21))


def _frame(t: float) -> VideoFrame:
    return VideoFrame(np.full((4, 4, 3), int(t * 10) % 256, np.uint8), t, 100 + t)


def test_frame_buffer_picks_latest_frame_at_or_before_and_counts_unread_evictions():
    frames = FrameBuffer(capacity=5)
    for i in range(8):
        frames.push(_frame(i * 0.04))
    assert frames.evicted_unread == 3  # nobody looked before the buffer filled
    assert frames.peek_at(0.2).time == pytest.approx(0.2)
    assert frames.frame_at(0.21).time == pytest.approx(0.2)
    assert frames.first_time == pytest.approx(0.2)  # older frames are gone once a step passed them
    for i in range(8, 12):
        frames.push(_frame(i * 0.04))
    # 0.2 was looked at; 0.24 was pushed out before any step reached its time.
    assert frames.evicted_unread == 4
    frames.push(_frame(0.3))  # an out-of-order timestamp is ignored
    assert frames.latest_time == pytest.approx(11 * 0.04)
