"""The control protocol of ``avbind serve``: one JSON request, one JSON reply, over ZeroMQ.

The server side is a ROUTER socket served by one thread, so a slow or vanished client cannot
block another (a REP socket would stall on a client that never reads its reply). Requests are
objects with a ``cmd`` (``add``, ``remove``, ``list``, ``ping``); replies are ``{"ok": true, ...}``
or ``{"ok": false, "error": "..."}``. Any language with ZeroMQ and JSON can drive a server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST_BYTES = 64 * 1024


class ControlError(RuntimeError):
    """The server refused a request (its reason) or did not answer."""


class ControlServer:
    def __init__(self, endpoint: str, handler: Handler, context: zmq.Context | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)  # a huge "request" is dropped, not parsed
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as err:
            self._socket.close()
            raise ValueError(f"cannot serve control on {endpoint}: {err}") from err
        self.bound = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._handler = handler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avbind-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(100):
                continue
            frames = self._socket.recv_multipart()
            if len(frames) < 2:
                continue
            identity, body = frames[0], frames[-1]
            reply = self.handle(body)
            with contextlib.suppress(zmq.ZMQError):  # the client went away: nothing to tell
                self._socket.send_multipart([identity, *frames[1:-1], json.dumps(reply).encode()], zmq.NOBLOCK)

    def handle(self, body: bytes) -> dict[str, Any]:
        """One request to one reply; never raises, so no request can stop the server."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be a JSON object with a "cmd" string'}
        try:
            return {"ok": True, **self._handler(request)}
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            return {"ok": False, "error": str(text)}
        except Exception as err:  # a bug: say so, keep serving
            log.exception("control request %s failed", request.get("cmd"))
            return {"ok": False, "error": f"internal error: {type(err).__name__}: {err}"}


def request(endpoint: str, command: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send one command and return the reply; ControlError if refused or unanswered within ``timeout_s``."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send_multipart([b"", json.dumps(command).encode()])
        if not socket.poll(int(timeout_s * 1000)):
            raise ControlError(f"no reply from {endpoint} within {timeout_s:g} s (is avbind serve running there?)")
        reply = json.loads(socket.recv_multipart()[-1])
    except zmq.ZMQError as err:
        raise ControlError(f"cannot reach {endpoint}: {err}") from err
    finally:
        socket.close()
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "refused"))
    return reply
