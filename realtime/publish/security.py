"""CurveZMQ for the published endpoint: who may subscribe, and nobody else can read.

Without it, anyone who can reach a bound port reads every prediction. With ``--curve-secret``
the PUB socket is a CURVE server: traffic is encrypted and a subscriber must know the server's
public key. With ``--curve-allow DIR`` a ZAP authenticator (pyzmq's ``ThreadAuthenticator``)
admits only clients whose public key is in DIR; an unknown key, a client without CURVE and one
with a wrong server key never complete the handshake and receive nothing.

Keys are ZeroMQ certificate files (``zmq.auth.create_certificates``): ``NAME.key`` holds the
public key and may be handed out; ``NAME.key_secret`` holds both and must stay private, so a
secret file that its group or others can read is refused, as ssh refuses such a key.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class CurveKeyError(ValueError):
    """A key file that is missing, malformed or readable by others."""


@dataclass(frozen=True)
class Curve:
    """What a socket needs for CURVE: its own key pair and, for a client, the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None  # clients only


def generate_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``folder/name.key`` and ``folder/name.key_secret`` (mode 0600); refuse to overwrite."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name, got {name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ValueError(f"{path} exists: remove it first or choose another --name")
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        made_public, made_secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old)
    os.chmod(made_secret, 0o600)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def _load(path: str | Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise CurveKeyError(f"{path}: no such key file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise CurveKeyError(f"{path}: not a ZeroMQ certificate ({err})") from None
    if public is None or len(public) != 40:
        raise CurveKeyError(f"{path}: not a ZeroMQ certificate (no 40-character public-key)")
    if want_secret and (secret is None or len(secret) != 40):
        raise CurveKeyError(f"{path}: has no secret-key; give the .key_secret file, not the public .key")
    if want_secret:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CurveKeyError(f"{path}: a secret key readable by others ({stat.filemode(mode)}); chmod 600 it")
    return public, secret


def server_curve(secret_file: str | Path) -> Curve:
    public, secret = _load(secret_file, want_secret=True)
    return Curve(public, secret)  # type: ignore[arg-type]


def client_curve(server_key_file: str | Path, secret_file: str | Path) -> Curve:
    server_public, _ = _load(server_key_file, want_secret=False)
    public, secret = _load(secret_file, want_secret=True)
    return Curve(public, secret, server_public)  # type: ignore[arg-type]


def check_allow_dir(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise CurveKeyError(f"{folder}: --curve-allow needs a folder of public .key files")
    keys = list(folder.glob("*.key"))
    if not keys:
        raise CurveKeyError(f"{folder}: holds no .key file: nobody could subscribe")
    for key in keys:
        _load(key, want_secret=False)
    return folder


class _AllowedKeys:
    """ZAP credentials provider: the public keys in the allow folder, read again at each handshake
    (a key file added or removed takes effect for the next connection, no restart), plus the
    ephemeral keys of this process's own viewers."""

    def __init__(self) -> None:
        self.folder: Path | None = None  # None: any client key (encryption without an allow list)
        self.local: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:  # key: Z85, as in the certificate files
        if self.folder is None or key in self.local:
            return True
        allowed = set()
        for path in self.folder.glob("*.key"):
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (ValueError, OSError, UnicodeDecodeError):
                continue
            if public:
                allowed.add(public)
        return key in allowed


_authenticators: dict[int, tuple[ThreadAuthenticator, _AllowedKeys]] = {}
_auth_lock = threading.Lock()


def apply_server(socket: zmq.Socket, curve: Curve, allow: str | Path | None) -> None:
    """Make ``socket`` (before bind) a CURVE server; with ``allow``, only those public keys get in.

    One ZAP authenticator serves a context (started on first use, for every domain), so all of a
    process's CURVE sockets share the allowed keys.
    """
    socket.curve_secretkey = curve.secret
    socket.curve_publickey = curve.public
    socket.curve_server = True
    context = socket.context
    with _auth_lock:
        entry = _authenticators.get(id(context))
        if entry is None:
            auth, keys = ThreadAuthenticator(context), _AllowedKeys()
            auth.start()
            auth.configure_curve_callback(domain="*", credentials_provider=keys)
            entry = _authenticators[id(context)] = (auth, keys)
        entry[1].folder = check_allow_dir(allow) if allow is not None else None


def local_client(socket: zmq.Socket, server: Curve) -> Curve:
    """A fresh key pair for a viewer inside this process (the terminal view of ``avbind run``),
    admitted by the authenticator of ``socket``'s context without being in the allow folder."""
    public, secret = zmq.curve_keypair()
    with _auth_lock:
        entry = _authenticators.get(id(socket.context))
        if entry is not None:
            entry[1].local.add(public)
    return Curve(public, secret, server.public)


def apply_client(socket: zmq.Socket, curve: Curve) -> None:
    """Make ``socket`` (before connect) a CURVE client of the server whose public key it was given."""
    socket.curve_secretkey = curve.secret
    socket.curve_publickey = curve.public
    socket.curve_serverkey = curve.server_public


def is_loopback(endpoint: str) -> bool:
    """Whether a bind endpoint stays on this machine (ipc://, inproc://, tcp://127.x or ::1)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: reachable from outside


def warn_if_open(endpoints: list[str], curve: Curve | None, what: str = "predictions") -> None:
    if curve is None and any(not is_loopback(e) for e in endpoints):
        shown = ", ".join(e for e in endpoints if not is_loopback(e))
        print(f"avbind: warning: {shown} is reachable from the network without CURVE: anyone there can read the "
              f"{what}. Use --curve-secret (see avbind keys generate).", file=sys.stderr, flush=True)
