"""AES-GCM sealing of gossip packets with a rotating keyring; the cluster name is the AAD."""

from __future__ import annotations

import base64
import binascii
import collections
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cairn.errors import ConfigError

VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + 8 + TAG_BYTES  # version, nonce, sent-at timestamp, tag
REPLAY_WINDOW_S = 30.0  # packets sent longer ago (or this far in the future) are refused
REPLAY_CACHE_MAX = 200_000  # nonces remembered inside the window; far above any real rate
_STAMP = struct.Struct(">d")


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

    @classmethod
    def from_file(cls, path: str | Path, cluster: str) -> Keyring:
        """One base64 key per line, primary first; blank lines and '#' comments are skipped."""
        p = Path(path)
        try:
            text = p.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
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

    def api_token(self) -> str:
        """The bearer token forwarded requests carry, derived from the primary key."""
        return _derive_token(self.keys[0])

    def api_tokens(self) -> list[str]:
        """Tokens accepted from peers: one per installed key, so rotation never locks out."""
        return [_derive_token(k) for k in self.keys]


def _derive_token(key: bytes) -> str:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cairn api token/1")
    return base64.urlsafe_b64encode(hkdf.derive(key)).decode().rstrip("=")


class ReplayGuard:
    """Refuses a packet sent outside the window, or whose nonce was seen inside it."""

    def __init__(self, window: float = REPLAY_WINDOW_S) -> None:
        self.window = window
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def check(self, nonce: bytes, sent: float, wall: float) -> None:
        """Remember the nonce, or raise Dropped('replay_window' or 'replayed')."""
        if not abs(wall - sent) <= self.window:  # also refuses NaN
            raise Dropped("replay_window")
        while self._seen and (
            next(iter(self._seen.values())) < wall - self.window
            or len(self._seen) >= REPLAY_CACHE_MAX
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise Dropped("replayed")
        self._seen[nonce] = wall
