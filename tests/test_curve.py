"""CURVE on the published endpoint, with real sockets: allowed subscribers (Python, and Node.js
with zeromq@6 where npm can install it) receive every message; a subscriber with an unknown key,
one without CURVE and one with a wrong server key receive nothing, and publishing carries on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq
from avbind_testing import avbind_exe, free_port, wait_for

from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.publish.security import CurveKeyError, client_curve, generate_keys, is_loopback, server_curve
from avbind.realtime.publish.subscriber import Subscriber


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for folder, name in (("server", "server"), ("clients", "alice"), ("clients", "bob"), ("strangers", "mallory"),
                         ("fake", "server")):
        public, secret = generate_keys(tmp_path / folder, name)
        out[f"{folder}/{name}"], out[f"{folder}/{name}_secret"] = public, secret
    # the allow folder holds only the public keys of alice and bob
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in ("alice", "bob"):
        shutil.copy(out[f"clients/{name}"], allow)
    out["allow"] = allow
    return out


class Receiver(threading.Thread):
    def __init__(self, socket: zmq.Socket) -> None:
        super().__init__(daemon=True)
        self.socket, self.messages, self.stop = socket, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.socket.poll(50):
                self.messages.append(json.loads(self.socket.recv_multipart()[1]))
        self.socket.close()


def _sub(endpoint: str, server_public: bytes | None = None, pair: tuple[bytes, bytes] | None = None) -> Receiver:
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    if server_public is not None:
        socket.curve_serverkey = server_public
        socket.curve_publickey, socket.curve_secretkey = pair
    socket.setsockopt(zmq.SUBSCRIBE, b"avbind/")
    socket.connect(endpoint)
    receiver = Receiver(socket)
    receiver.start()
    return receiver


def _node_subscriber(endpoint: str, curve: dict[str, str], count: int, workdir: Path) -> subprocess.Popen | None:
    """A Node.js zeromq@6 subscriber printing every message it gets, or None without node or zeromq@6."""
    if shutil.which("node") is None:
        return None
    # .ci/run installs it there (npm install --prefix ~/.cache/avbind-node-zeromq zeromq@6)
    project = Path(os.environ.get("AVBIND_NODE_DIR", Path.home() / ".cache" / "avbind-node-zeromq"))
    if not (project / "node_modules" / "zeromq").is_dir():
        return None
    script = workdir / "sub.js"
    script.write_text(f"""
const zmq = require({json.dumps(str(project / "node_modules" / "zeromq"))});
(async () => {{
  const sock = new zmq.Subscriber({{curveServerKey: {json.dumps(curve["server"])},
    curvePublicKey: {json.dumps(curve["public"])}, curveSecretKey: {json.dumps(curve["secret"])}}});
  sock.connect({json.dumps(endpoint)});
  sock.subscribe("avbind/");
  let n = 0;
  for await (const [topic, body] of sock) {{
    const m = JSON.parse(body.toString());
    console.log(JSON.stringify({{topic: topic.toString(), seq: m.seq}}));
    if (++n >= {count}) break;
  }}
  process.exit(0);
}})();
""")
    return subprocess.Popen(["node", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_only_allowed_keys_read_the_predictions(keys: dict[str, Path], tmp_path: Path) -> None:
    server = server_curve(keys["server/server_secret"])
    publisher = Publisher(f"tcp://127.0.0.1:{free_port()}", curve=server, curve_allow=keys["allow"])
    endpoint = publisher.bound[0]
    alice = client_curve(keys["server/server"], keys["clients/alice_secret"])
    allowed = _sub(endpoint, alice.server_public, (alice.public, alice.secret))
    bob = Subscriber(endpoint, types=("status",), curve=client_curve(keys["server/server"],
                                                                     keys["clients/bob_secret"]))
    mallory = client_curve(keys["server/server"], keys["strangers/mallory_secret"])
    stranger = _sub(endpoint, mallory.server_public, (mallory.public, mallory.secret))
    plain = _sub(endpoint)
    fake = client_curve(keys["fake/server"], keys["clients/alice_secret"])  # right client, wrong server key
    wrong_server = _sub(endpoint, fake.server_public, (fake.public, fake.secret))
    with open(keys["server/server"]) as f:
        server_public = next(line.split('"')[1] for line in f if "public-key" in line)
    with open(keys["clients/bob_secret"]) as f:
        lines = f.read()
    node_curve = {"server": server_public, "public": lines.split('public-key = "')[1].split('"')[0],
                  "secret": lines.split('secret-key = "')[1].split('"')[0]}
    total = 40
    node = _node_subscriber(endpoint, node_curve, total, tmp_path)
    view = Subscriber(endpoint, types=("status",), curve=publisher.viewer_curve())  # a process's own view
    try:
        time.sleep(3.0 if node is not None else 1.0)  # handshakes (and node's start) before the first message
        for i in range(total):
            publisher.publish("cam", "status", {"state": "running", "i": i}, time.monotonic())
            time.sleep(0.01)
        assert wait_for(lambda: len(allowed.messages) == total, 10), len(allowed.messages)
        got_bob = [bob.receive(2.0) for _ in range(total)]
        assert all(r is not None for r in got_bob) and [r.message["seq"] for r in got_bob] == list(range(total))
        assert view.receive(2.0) is not None
        time.sleep(0.5)
        assert stranger.messages == [] and plain.messages == [] and wrong_server.messages == []
        assert [m["seq"] for m in allowed.messages] == list(range(total))
        if node is not None:
            out, err = node.communicate(timeout=30)
            seqs = [json.loads(line)["seq"] for line in out.splitlines() if line.startswith("{")]
            assert seqs == list(range(total)), (out, err)
        # publishing carried on for everyone allowed after the refused handshakes
        publisher.publish("cam", "status", {"state": "running"}, time.monotonic())
        assert wait_for(lambda: len(allowed.messages) == total + 1, 5)
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        for receiver in (allowed, stranger, plain, wrong_server):
            receiver.stop.set()
        bob.close()
        view.close()
        publisher.close()
    if node is None:
        pytest.skip("Node.js or zeromq@6 not available: the Python subscribers were checked, the Node.js one not")


def test_keys_with_wrong_permissions_or_format_are_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    secret = keys["server/server_secret"]
    assert secret.stat().st_mode & 0o777 == 0o600
    os.chmod(secret, 0o644)
    with pytest.raises(CurveKeyError, match="readable by others"):
        server_curve(secret)
    os.chmod(secret, 0o600)
    with pytest.raises(CurveKeyError, match="no secret-key"):
        server_curve(keys["server/server"])  # the public file given as the secret
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate\n")
    os.chmod(garbage, 0o600)
    with pytest.raises(CurveKeyError, match="not a ZeroMQ certificate"):
        server_curve(garbage)
    with pytest.raises(CurveKeyError, match="no such key file"):
        server_curve(tmp_path / "missing.key_secret")
    empty = tmp_path / "empty-allow"
    empty.mkdir()
    with pytest.raises(CurveKeyError, match=r"no \.key file"):
        Publisher("tcp://127.0.0.1:*", curve=server_curve(secret), curve_allow=empty)
    with pytest.raises(ValueError, match="exists"):
        generate_keys(tmp_path / "server", "server")


def test_cli_generates_keys_and_warns_when_open(tmp_path: Path) -> None:
    done = subprocess.run([avbind_exe(), "keys", "generate", str(tmp_path / "k"), "--name", "cam"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "k" / "cam.key").is_file() and (tmp_path / "k" / "cam.key_secret").stat().st_mode & 0o077 == 0
    assert is_loopback("tcp://127.0.0.1:5556") and is_loopback("ipc:///tmp/x") and not is_loopback("tcp://*:5556")
    assert not is_loopback("tcp://0.0.0.0:5556") and is_loopback("tcp://[::1]:5556")
    run = subprocess.run([avbind_exe(), "run", "--video", "synthetic", "--seconds", "1", "--quiet",
                          "--publish", f"tcp://0.0.0.0:{free_port()}"], capture_output=True, text=True, timeout=120)
    assert "without CURVE" in run.stderr, run.stderr
    secret = tmp_path / "k" / "cam.key_secret"
    os.chmod(secret, 0o644)
    refused = subprocess.run([avbind_exe(), "run", "--video", "synthetic", "--seconds", "1", "--quiet",
                              "--curve-secret", str(secret)], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "chmod 600" in refused.stderr, refused.stderr
