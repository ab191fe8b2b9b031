"""Encryption at rest for the outbox: AES-256-GCM (``cryptography``'s ``AESGCM``).

A sealed value is ``01 | key id (4) | nonce (12) | ciphertext + tag (16)``: a fresh
random 96-bit nonce per value; the key id (the first 4 bytes of SHA-256 of the key)
picks the key among ``key_file`` and ``old_key_files`` without trying each. The
associated data binds a value to its place (for a message: its envelope id and lane),
so a sealed payload moved to another row, or another lane, does not open.

A key file is exactly 32 random bytes, owned by the daemon's user and closed to
everyone else (mode 0600 or stricter), else ``KeyFileError`` naming the file and
what is wrong. ``cryptography`` is imported only here, only when encryption is on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.private import FILE_CLOSED, exposure, write_private

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = b"\x01"
HEADER = 1 + 4 + NONCE_BYTES
OVERHEAD = HEADER + 16  # what sealing adds to a value


class KeyFileError(EdgeError):
    """A key file that cannot be used (missing, not private, not 32 bytes)."""


class Unsealable(EdgeError):
    """A sealed value that no configured key opens (wrong key, or altered)."""


def is_sealed(blob: bytes) -> bool:
    """Sealed values start with the version byte; JSON payloads with ``{``."""
    return len(blob) >= OVERHEAD and blob[:1] == VERSION


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:4]


def read_key(path: Path) -> bytes:
    """The key in ``path``, checked: ours, closed to others, exactly 32 bytes."""
    path = Path(path)
    why = exposure(path, FILE_CLOSED)
    if why:
        raise KeyFileError(f"key file {why}")
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"key file {path} holds {len(key)} bytes, not {KEY_BYTES}"
                           " (make one with `edge outbox keygen --out FILE`)")
    return key


def keygen(path: Path) -> bytes:
    """A new random key written to ``path`` (mode 0600); never overwrites a file
    (``FileExistsError``). Returns the key id."""
    key = os.urandom(KEY_BYTES)
    write_private(Path(path), key, exclusive=True)
    return key_id(key)


class Sealer:
    """Seals with ``key_file``; opens with it or any of ``old_key_files``."""

    def __init__(self, key_file: Path, old_key_files: Sequence[Path] = ()) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only when on

        self.key_file = Path(key_file)
        self.old_key_files = [Path(p) for p in old_key_files]
        key = read_key(self.key_file)
        self.key_id = key_id(key)
        self._aead = AESGCM(key)
        self._ring: dict[bytes, Any] = {self.key_id: self._aead}
        for p in self.old_key_files:
            old = read_key(p)
            self._ring.setdefault(key_id(old), AESGCM(old))

    def describe(self) -> dict[str, Any]:
        return {"cipher": "aes-256-gcm", "key_file": str(self.key_file),
                "key_id": self.key_id.hex(), "old_keys": len(self._ring) - 1}

    def where(self) -> str:
        """The key files, for an error message."""
        files = [str(self.key_file), *(str(p) for p in self.old_key_files)]
        return "key_file " + files[0] + (
            f" or old_key_files {', '.join(files[1:])}" if files[1:] else "")

    def seal(self, plain: bytes, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + self.key_id + nonce + self._aead.encrypt(nonce, plain, ad)

    def open(self, blob: bytes, ad: bytes) -> bytes:
        """The plaintext of ``blob``; ``Unsealable`` naming the key files when no
        configured key opens it (or it was altered, or moved from another row)."""
        from cryptography.exceptions import InvalidTag

        if not is_sealed(blob):
            raise Unsealable("not a sealed value")
        aead = self._ring.get(bytes(blob[1:5]))
        if aead is None:
            raise Unsealable(f"sealed with key id {bytes(blob[1:5]).hex()}, which is not"
                             f" {self.where()}")
        try:
            return bytes(aead.decrypt(bytes(blob[5:HEADER]), bytes(blob[HEADER:]), ad))
        except InvalidTag:
            raise Unsealable(f"does not open with {self.where()}: altered, or moved"
                             " from another row") from None
