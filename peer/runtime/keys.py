"""Cluster keys: generated, read from a key file or from ``PEER_KEY``.

A key file holds one base64 key per line (16, 24, 32 or 64 bytes once
decoded; ``#`` starts a comment). The first key signs, every key verifies:
``peer.runtime.wire.Keyring``'s rotation, so a key is changed with no downtime by
editing the files and restarting nodes one at a time (add the new key on a
second line everywhere; move it first everywhere; remove the old one).
``PEER_KEY`` holds the same thing, keys separated by commas.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping

from peer.runtime.wire import KEY_SIZES, Keyring

KEY_ENV = "PEER_KEY"
GENERATED_KEY_BYTES = 32


class KeyringError(ValueError):
    """A key that cannot be used; the message names where it came from."""


def generate_key() -> str:
    return base64.b64encode(secrets.token_bytes(GENERATED_KEY_BYTES)).decode()


def parse_keys(lines: list[str], source: str) -> Keyring:
    keys: list[bytes] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"{source} line {number}: not base64 (make one with `peer keygen`)") from None
        if len(key) not in KEY_SIZES:
            sizes = ", ".join(map(str, KEY_SIZES))
            raise KeyringError(f"{source} line {number}: a key is {sizes} bytes, this one is {len(key)}")
        if key in keys:
            raise KeyringError(f"{source} line {number}: the same key twice")
        keys.append(key)
    if not keys:
        raise KeyringError(f"{source}: no key in it (make one with `peer keygen`)")
    return Keyring(keys)


def load_keyring(key_file: str | None, environ: Mapping[str, str]) -> Keyring | None:
    """The key file if given, else ``PEER_KEY``, else None (an open cluster)."""
    if key_file is not None:
        try:
            with open(key_file, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not a text file"
            raise KeyringError(f"key file {key_file}: cannot read it: {reason}") from None
        return parse_keys(lines, f"key file {key_file}")
    if environ.get(KEY_ENV):
        return parse_keys(environ[KEY_ENV].split(","), KEY_ENV)
    return None
