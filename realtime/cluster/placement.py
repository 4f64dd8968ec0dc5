"""Which worker holds which stream: consistent hashing on the stream name, bounded by a capacity.

Hashing keeps placement stable as workers come and go: a stream moves only when its worker leaves
or when a worker joins at its point of the ring, so most streams keep their model state. Each worker
appears at many points (virtual nodes) so load spreads evenly, and a worker that is full passes a
stream on to the next worker around the ring (consistent hashing with bounded loads). The hash is
BLAKE2b of the name, not Python's ``hash``, so every process and every run agrees.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

VIRTUAL_NODES = 64  # points per worker on the ring


def ring_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class PlacementFullError(RuntimeError):
    """Every worker holds its capacity: the stream cannot be placed now."""


@dataclass
class Placement:
    capacity: int  # streams per worker
    workers: list[str] = field(default_factory=list)
    assigned: dict[str, str] = field(default_factory=dict)  # stream -> worker

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1 stream per worker, got {self.capacity}")
        self._ring: list[tuple[int, str]] = []
        for worker in list(self.workers):
            self.workers.remove(worker)
            self.add_worker(worker)

    # -- queries ---------------------------------------------------------------------------
    def load(self, worker: str) -> int:
        return sum(1 for w in self.assigned.values() if w == worker)

    def streams_of(self, worker: str) -> list[str]:
        return sorted(s for s, w in self.assigned.items() if w == worker)

    def candidates(self, stream: str) -> list[str]:
        """Workers in the order the stream tries them: clockwise from its hash, each once."""
        if not self._ring:
            return []
        start = bisect.bisect(self._ring, (ring_hash(stream), ""))
        order: list[str] = []
        for i in range(len(self._ring)):
            worker = self._ring[(start + i) % len(self._ring)][1]
            if worker not in order:
                order.append(worker)
                if len(order) == len(self.workers):
                    break
        return order

    def choose(self, stream: str, exclude: Iterable[str] = ()) -> str:
        """The first worker with room, clockwise from the stream's hash; PlacementFullError if none."""
        skip = set(exclude)
        for worker in self.candidates(stream):
            if worker not in skip and self.load(worker) < self.capacity:
                return worker
        raise PlacementFullError(f"no worker has room for stream {stream!r}: {len(self.workers)} worker(s) "
                            f"x {self.capacity} streams are all taken")

    # -- changes ---------------------------------------------------------------------------
    def add_stream(self, stream: str) -> str:
        if stream in self.assigned:
            raise ValueError(f"stream {stream!r} is already placed on {self.assigned[stream]}")
        worker = self.choose(stream)
        self.assigned[stream] = worker
        return worker

    def remove_stream(self, stream: str) -> str | None:
        return self.assigned.pop(stream, None)

    def remove_worker(self, worker: str) -> dict[str, str | None]:
        """Take ``worker`` off the ring; its streams go to the next worker with room (None: nowhere)."""
        if worker in self.workers:
            self.workers.remove(worker)
            self._ring = [p for p in self._ring if p[1] != worker]
        moves: dict[str, str | None] = {}
        for stream in self.streams_of(worker):
            del self.assigned[stream]
            try:
                moves[stream] = self.add_stream(stream)
            except PlacementFullError:
                moves[stream] = None
        return moves

    def add_worker(self, worker: str) -> dict[str, str]:
        """Put ``worker`` on the ring; the streams whose first choice it now is move to it (while it
        has room), and no others. Returns stream -> the worker it moves from."""
        if worker in self.workers:
            return {}
        self.workers.append(worker)
        for i in range(VIRTUAL_NODES):
            bisect.insort(self._ring, (ring_hash(f"{worker}#{i}"), worker))
        moves: dict[str, str] = {}
        for stream in sorted(self.assigned):
            if self.load(worker) >= self.capacity:
                break
            if self.candidates(stream)[0] == worker and self.assigned[stream] != worker:
                moves[stream] = self.assigned[stream]
                self.assigned[stream] = worker
        return moves
