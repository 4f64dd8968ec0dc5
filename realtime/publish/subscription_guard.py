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
  down, and freed memory is handed back to the system (glibc's ``malloc_trim``) after churn;
* each peer has a budget: libzmq stores every subscription a peer sends (about 50 bytes per
  byte of topic, to clean up when it leaves) whether or not it is applied, so refusing alone
  left one peer able to grow the engine without limit (100,000 topic-like strings: +570 MB).
  A peer whose subscriptions add up to more than ``MAX_PEER_BYTES``, or that sends more than
  ``MAX_PEER_REFUSED`` that could never match, is dropped: its TCP connection is shut down,
  which makes libzmq free everything it stored for it. At most ``MAX_PEERS`` peers at once;
  a connection beyond is shut at once. Peers are told apart by the file descriptor libzmq
  tags each message with (``ZMQ_SRCFD``) and followed from accept to disconnect by a socket
  monitor, so a descriptor reused by a new connection starts a fresh budget.

Refusals are counted (``refused``) and reported in every status message's ``drops``
(``subscriptions_refused``), dropped peers likewise (``subscribers_dropped``); never silent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket as _socket
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from avbind.realtime.publish.messages import MAX_STREAM_NAME, TYPES

PREFIX = b"avbind/"
# "avbind/" + a stream name (at most MAX_STREAM_NAME bytes of UTF-8) + "/" + a type
MAX_TOPIC_BYTES = len(PREFIX) + MAX_STREAM_NAME + 1 + max(len(t) for t in (*TYPES, "preview"))
# Largest message a peer may send: a subscription (1 + MAX_TOPIC_BYTES); a peer sending more is
# dropped by libzmq before anything is stored. libzmq stores what a peer subscribes to (to clean
# up when it leaves) before the application sees it, and each departing peer costs a walk over
# all of it that grows with the square of the topics' lengths (a flood of 300-byte strings stalled
# the publishing thread for seconds), so this bound is what keeps both small. With CURVE the same
# limit applies to the handshake's INITIATE command, which needs 300 bytes (the least that let a
# CURVE subscriber in here); there, only keys in --curve-allow get as far as subscribing.
MAX_MESSAGE_BYTES = 1 + MAX_TOPIC_BYTES
MAX_CURVE_MESSAGE_BYTES = 320
MAX_TOPICS = 1024  # distinct topics held at once; a departing peer costs libzmq a walk over all of them
MAX_PEER_BYTES = 8 * 1024  # subscription bytes one peer may hold (net of its unsubscriptions)
MAX_PEER_REFUSED = 16  # subscriptions that can match no avbind topic, per peer, before it is dropped
MAX_PEERS = 256  # peers at once; the worst case libzmq can be made to store is about MAX_PEERS x 0.5 MB
# Subscriptions libzmq takes from one peer ahead of the guard: it moves all a peer's queued ones
# into its own store at once, and this queue bound is what makes it wait for the guard (and so
# for a verdict on the peer) instead of reading on as fast as the peer sends.
PEER_QUEUE = 64
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
    if not _STREAM.match(stream) or len(stream) > MAX_STREAM_NAME:
        return False
    return not slash or kind in _TYPE_PREFIXES


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back this way
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peer_name(fd: int) -> object:
    """The remote address of connection ``fd`` (None if it is no longer a connected socket)."""
    try:
        with _socket.socket(fileno=os.dup(fd)) as s:
            return s.getpeername()
    except OSError:
        return None


@dataclass
class _Peer:
    name: object  # its remote address when accepted: a descriptor is only shut if it still has it
    bytes: int = 0
    refused: int = 0


class SubscriptionGuard:
    """Configure ``socket`` (an XPUB, before bind) and handle what its peers send.

    Not thread-safe: call :meth:`drain` from the one thread that uses the socket.
    """

    def __init__(self, socket: zmq.Socket, max_topics: int = MAX_TOPICS, max_peers: int = MAX_PEERS,
                 max_peer_bytes: int = MAX_PEER_BYTES, max_peer_refused: int = MAX_PEER_REFUSED,
                 curve: bool = False) -> None:
        """``curve``: the socket will use CURVE, whose handshake needs larger messages."""
        socket.setsockopt(zmq.XPUB_MANUAL, 1)
        socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscribe and unsubscribe of every peer, to count
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_CURVE_MESSAGE_BYTES if curve else MAX_MESSAGE_BYTES)
        socket.setsockopt(zmq.RCVHWM, PEER_QUEUE)
        self.socket = socket
        self.max_topics, self.max_peers = max_topics, max_peers
        self.max_peer_bytes, self.max_peer_refused = max_peer_bytes, max_peer_refused
        self.held: dict[bytes, int] = {}  # topic -> subscriptions applied, net of unsubscriptions
        self.refused = 0
        self.dropped = 0  # peers shut out for exceeding their budget or the peer count
        self.peers: dict[int, _Peer] = {}  # connection file descriptor -> its budget
        # Descriptors of dropped peers: what they sent before the shutdown took effect is still
        # queued, and is refused, until the descriptor is accepted again for a new connection.
        self._shut: set[int] = set()
        self._monitor = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._churn = False
        self._trimmed = self._active = time.monotonic()

    def close(self) -> None:
        """Stop the socket monitor; call before closing the socket."""
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disable_monitor()
        self._monitor.close(0)

    def _connections(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._shut.discard(fd)
                self.peers[fd] = _Peer(_peer_name(fd))
                if len(self.peers) > self.max_peers:
                    self._drop(fd)
            else:
                self.peers.pop(fd, None)

    def _drop(self, fd: int) -> None:
        """Shut peer ``fd``'s connection: libzmq then removes all it stored for that peer."""
        peer = self.peers.pop(fd, None)
        self._shut.add(fd)
        self.dropped += 1
        if peer is None or peer.name is None or _peer_name(fd) != peer.name:
            return  # already gone (or the descriptor now belongs to someone else): nothing to shut
        with contextlib.suppress(OSError), _socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(_socket.SHUT_RDWR)

    def drain(self, limit: int = 10_000) -> int:
        """Apply or refuse what peers sent since the last call; the number of messages handled."""
        handled = 0
        self._connections()
        while handled < limit:
            try:
                frame = self.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            handled += 1
            message = frame.bytes
            if not message:
                continue
            kind, topic = message[0], message[1:]
            try:
                fd = frame.get(zmq.SRCFD)
            except zmq.ZMQError:  # one libzmq made itself (a departed peer's unsubscription)
                fd = -1
            if kind == 1:
                if fd in self._shut:
                    self.refused += 1
                    continue
                matches = could_match(topic)
                peer = self.peers.get(fd)
                if peer is not None and self._over_budget(peer, topic, matches):
                    self._drop(fd)
                    self.refused += 1
                    continue
                self._subscribe(topic, matches)
            elif kind == 0:
                if (peer := self.peers.get(fd)) is not None:
                    peer.bytes = max(0, peer.bytes - len(topic))
                self._unsubscribe(topic)
        now = time.monotonic()
        if handled:
            self._churn, self._active = True, now
        # Hand freed memory back once the churn pauses, and every few seconds while it goes on.
        if self._churn and (now - self._active > TRIM_QUIET_S or now - self._trimmed > TRIM_EVERY_S):
            _malloc_trim()
            self._churn, self._trimmed = False, now
        return handled

    def _over_budget(self, peer: _Peer, topic: bytes, matches: bool) -> bool:
        peer.bytes += len(topic)
        if not matches:
            peer.refused += 1
        return peer.bytes > self.max_peer_bytes or peer.refused > self.max_peer_refused

    def _subscribe(self, topic: bytes, matches: bool) -> None:
        if not matches or (topic not in self.held and len(self.held) >= self.max_topics):
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
