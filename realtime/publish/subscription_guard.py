"""What a subscriber can cost the engine: bounded.

A PUB socket stores every subscription string any peer sends, in a trie that costs tens of times
the string's bytes, and glibc keeps the freed memory after the peer leaves: a peer that sends
megabytes of subscriptions, or connects and disconnects in a loop, grows the engine for good.
So the published socket is an XPUB in manual mode, and this guard decides what it stores:

* a subscription longer than any avbind topic could be makes libzmq drop that peer
  (``ZMQ_MAXMSGSIZE``) before it is stored anywhere;
* a subscription that can match no avbind topic (anything but a prefix of
  ``avbind/<stream>/<type>``) is not applied: it could never receive a message anyway;
* at most ``max_topics`` distinct topics are held at once; beyond, new ones are refused;
* unsubscriptions (also those libzmq reports for a peer that vanished) are applied and counted
  down, and freed memory is handed back to the system (glibc's ``malloc_trim``) after churn.

Refusals are counted (``refused``) and reported in every status message's ``drops``
(``subscriptions_refused``), never silent.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import time

import zmq

from avbind.realtime.publish.messages import MAX_STREAM_NAME, TYPES

PREFIX = b"avbind/"
# "avbind/" + a stream name (at most MAX_STREAM_NAME characters, 4 UTF-8 bytes each) + "/" + a type
MAX_TOPIC_BYTES = len(PREFIX) + 4 * MAX_STREAM_NAME + 1 + max(len(t) for t in (*TYPES, "preview"))
# Largest message a peer may send: a subscription (1 + MAX_TOPIC_BYTES), with room for the CURVE
# handshake's INITIATE command, which the same limit applies to (300 bytes was the least that let a
# CURVE subscriber in here). A peer sending more is dropped. libzmq stores what a peer subscribes to
# (to clean up when it leaves) before the application sees it, so this bound is what limits it.
MAX_MESSAGE_BYTES = 320
MAX_TOPICS = 1024  # distinct topics held at once; a departing peer costs libzmq a walk over all of them
TRIM_EVERY_S = 5.0
TRIM_QUIET_S = 0.5
_TYPE_PREFIXES = {t[:i].encode() for t in (*TYPES, "preview") for i in range(len(t) + 1)}
_STREAM = re.compile(rb"^[^/]+$")


def could_match(topic: bytes) -> bool:
    """Whether some avbind topic ``avbind/<stream>/<type>`` starts with ``topic``."""
    if len(topic) > MAX_TOPIC_BYTES:
        return False
    if len(topic) <= len(PREFIX):
        return PREFIX.startswith(topic)
    if not topic.startswith(PREFIX):
        return False
    stream, slash, kind = topic[len(PREFIX):].partition(b"/")
    if not _STREAM.match(stream) or len(stream) > 4 * MAX_STREAM_NAME:
        return False
    return not slash or kind in _TYPE_PREFIXES


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back this way
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class SubscriptionGuard:
    """Configure ``socket`` (an XPUB, before bind) and handle what its peers send.

    Not thread-safe: call :meth:`drain` under the same lock as the socket's sends.
    """

    def __init__(self, socket: zmq.Socket, max_topics: int = MAX_TOPICS) -> None:
        socket.setsockopt(zmq.XPUB_MANUAL, 1)
        socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscribe and unsubscribe of every peer, to count
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket = socket
        self.max_topics = max_topics
        self.held: dict[bytes, int] = {}  # topic -> subscriptions applied, net of unsubscriptions
        self.refused = 0
        self._churn = False
        self._trimmed = self._active = time.monotonic()

    def drain(self, limit: int = 10_000) -> int:
        """Apply or refuse what peers sent since the last call; the number of messages handled."""
        handled = 0
        while handled < limit:
            try:
                message = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            if not message:
                continue
            kind, topic = message[0], message[1:]
            if kind == 1:
                self._subscribe(topic)
            elif kind == 0:
                self._unsubscribe(topic)
        now = time.monotonic()
        if handled:
            self._churn, self._active = True, now
        # Hand freed memory back once the churn pauses, and every few seconds while it goes on.
        if self._churn and (now - self._active > TRIM_QUIET_S or now - self._trimmed > TRIM_EVERY_S):
            _malloc_trim()
            self._churn, self._trimmed = False, now
        return handled

    def _subscribe(self, topic: bytes) -> None:
        if not could_match(topic) or (topic not in self.held and len(self.held) >= self.max_topics):
            self.refused += 1
            return
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)  # for the peer that sent it (manual mode)
        self.held[topic] = self.held.get(topic, 0) + 1

    def _unsubscribe(self, topic: bytes) -> None:
        count = self.held.get(topic)
        if count is None:
            return  # a refused subscription's unsubscription
        self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)
        if count <= 1:
            del self.held[topic]
        else:
            self.held[topic] = count - 1
