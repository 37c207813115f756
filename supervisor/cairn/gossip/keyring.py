"""AES-GCM sealing of gossip packets with a rotating keyring; the cluster name is the AAD."""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import math
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cairn.errors import ConfigError
from cairn.files import read_small

VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + 8 + TAG_BYTES  # version, nonce, sent-at timestamp, tag
REPLAY_WINDOW_S = 30.0  # packets sent longer ago (or this far in the future) are refused
REPLAY_CACHE_MAX = 200_000  # nonces remembered inside the window; far above any real rate
KEY_FILE_MAX = 64 << 10  # a few keys and comments; a larger file is not a key file
_STAMP = struct.Struct(">d")
PEER_SCHEME = "Cairn-Peer"  # Authorization: Cairn-Peer t=<sent at>,n=<nonce>,s=<signature>
PEER_NONCE_BYTES = 16
PEER_NONCE_CHARS = len(base64.urlsafe_b64encode(bytes(PEER_NONCE_BYTES)))  # what the signer sends


class KeyringError(ConfigError):
    """The key file cannot be used (at start: exit 2); the message says which line and why."""

    def __init__(self, problem: str) -> None:
        super().__init__("gossip.key_file", problem)


class Dropped(Exception):
    """A packet that must be dropped and counted under `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Keyring:
    """Installed keys: the first (primary) seals, every one of them opens."""

    def __init__(self, keys: list[bytes], cluster: str) -> None:
        if not keys:
            raise KeyringError("the keyring has no key")
        for k in keys:
            if len(k) not in (16, 24, 32):
                raise KeyringError(f"a key is {len(k)} bytes; AES needs 16, 24 or 32")
        self.keys = list(keys)
        self._aeads = [AESGCM(k) for k in keys]
        self.aad = b"cairn-gossip/1/" + cluster.encode()
        # A separate key per gossip key for signing forwarded API requests (never the AES key).
        self._request_keys = [_derive(k, b"cairn peer request/1") for k in keys]

    @classmethod
    def from_file(cls, path: str | Path, cluster: str) -> Keyring:
        """One base64 key per line, primary first; blank lines and '#' comments are skipped."""
        p = Path(path)
        try:  # a link is fine (systemd credentials, secret managers); a FIFO or a device is not
            text = read_small(p, KEY_FILE_MAX).decode("ascii")
        except (OSError, ValueError) as err:  # ValueError: not ASCII, not a small regular file
            raise KeyringError(f"{p}: cannot read the key file: {err}") from None
        keys = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key = base64.b64decode(line, validate=True)
            except binascii.Error:
                raise KeyringError(f"{p}:{n}: not base64") from None
            if len(key) not in (16, 24, 32):
                raise KeyringError(f"{p}:{n}: key is {len(key)} bytes; AES needs 16, 24 or 32")
            keys.append(key)
        if not keys:
            raise KeyringError(f"{p}: no key in the file")
        return cls(keys, cluster)

    def seal(self, payload: bytes, wall: float) -> bytes:
        """Encrypt `payload` stamped with the wall-clock send time."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[0].encrypt(nonce, _STAMP.pack(wall) + payload, self.aad)
        return bytes([VERSION]) + nonce + sealed

    def open(self, data: bytes) -> tuple[bytes, float, bytes]:
        """(nonce, sent-at, payload); raises Dropped('decrypt') when no key opens it."""
        if len(data) < OVERHEAD or data[0] != VERSION:
            raise Dropped("decrypt")
        nonce, sealed = data[1 : 1 + NONCE_BYTES], data[1 + NONCE_BYTES :]
        for aead in self._aeads:
            try:
                plain = aead.decrypt(nonce, sealed, self.aad)
            except InvalidTag:
                continue
            (sent,) = _STAMP.unpack_from(plain)
            return nonce, sent, plain[_STAMP.size :]
        raise Dropped("decrypt")

    def sign_request(self, method: str, path: str, sender: str, receiver: str, wall: float) -> str:
        """The Authorization value of one forwarded request, to `receiver`: good once, briefly."""
        stamp = f"{wall:.3f}"
        nonce = base64.urlsafe_b64encode(os.urandom(PEER_NONCE_BYTES)).decode()
        sig = _sign(self._request_keys[0], method, path, sender, receiver, stamp, nonce)
        return f"{PEER_SCHEME} t={stamp},n={nonce},s={sig}"

    def check_request(
        self,
        credentials: str,
        method: str,
        path: str,
        sender: str,
        receiver: str,
        wall: float,
        seen: ReplayGuard,
    ) -> None:
        """Accept a forwarded request's signature (any installed key) or raise Dropped(why).

        `receiver` is this node's own name: a hop signed for another node does not open it.
        """
        fields = {}
        for field in credentials.split(","):
            name, _, value = field.strip().partition("=")
            fields[name] = value
        stamp, nonce, sig = fields.get("t", ""), fields.get("n", ""), fields.get("s", "")
        try:
            sent = float(stamp)
        except ValueError:
            raise Dropped("malformed") from None
        # The nonce is exactly what the signer makes: a longer one would take room in the cache.
        if not (
            len(nonce) == PEER_NONCE_CHARS
            and nonce.isascii()
            and sig
            and sig.isascii()
            and math.isfinite(sent)
        ):
            raise Dropped("malformed")
        if not any(
            hmac.compare_digest(sig, _sign(k, method, path, sender, receiver, stamp, nonce))
            for k in self._request_keys
        ):
            raise Dropped("bad signature")
        seen.check(nonce.encode(), sent, wall)  # only signed nonces take room in the cache


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _sign(
    key: bytes, method: str, path: str, sender: str, receiver: str, stamp: str, nonce: str
) -> str:
    # Header values may carry undecodable bytes (aiohttp keeps them as surrogates).
    fields = (method, path, sender, receiver, stamp, nonce)
    msg = "\n".join(fields).encode(errors="surrogateescape")
    return base64.urlsafe_b64encode(hmac.digest(key, msg, hashlib.sha256)).decode().rstrip("=")


class ReplayGuard:
    """Refuses a packet sent outside the window, or whose nonce was seen inside it.

    A nonce is kept until the packet leaves the window (sent + window), or until window after
    it was received if that is later: a sender whose clock runs ahead gets no second use.
    """

    def __init__(self, window: float = REPLAY_WINDOW_S) -> None:
        self.window = window
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def check(self, nonce: bytes, sent: float, wall: float) -> None:
        """Remember the nonce, or raise Dropped('replay_window' or 'replayed')."""
        if not abs(wall - sent) <= self.window:  # also refuses NaN
            raise Dropped("replay_window")
        # Oldest first: an entry kept longer than those behind it only delays their eviction.
        while self._seen and (
            next(iter(self._seen.values())) < wall or len(self._seen) >= REPLAY_CACHE_MAX
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise Dropped("replayed")
        self._seen[nonce] = max(sent, wall) + self.window  # until then a replay is in the window
