"""The stream preamble: what a connection to the gossip port must show before
the transport reads, buffers or allocates anything large for it.

A stream frame used to be announced by its length alone, so anyone who could
reach the port could make a node buffer 8 MiB per connection before the
frame's MAC was checked at its very end. Now every stream frame is preceded by
a fixed-size preamble::

    magic:4 = b"PEER"  version:u8 = 2  flags:u8  sent_ms:u64  nonce:16  length:u32  mac:32

``length`` is that of the frame that follows. In a keyed cluster ``flags`` has
``KEYED`` and ``mac`` is HMAC-SHA256 over the 34 bytes before it, under a key
derived from the keyring's primary key (any ring key verifies); the receiver
checks it, and refuses ``sent_ms`` outside the codec's replay window around
its own clock and a nonce it has seen within that window (the codec's
``ReplayGuard``: one rule for frames and preambles), before it reads a byte of
the frame. So a peer without the
key costs the receiver one 66-byte read, and a captured preamble cannot be
replayed to make it buffer another frame. In an open cluster ``flags`` is 0,
``mac`` is zero and nothing but the form is checked: there the transport's byte
budget bounds what strangers may make it buffer.

Against an older peer (length-prefixed streams): its 4-byte length reads here
as a magic that is not ours, and our magic read there as a length of 1.3 GB,
over its limit; both sides refuse the stream at once and count it, allocating
nothing (as both refuse the other's datagrams: the frame format changed with
this one, see ``peer.runtime.wire``).

Everything here is pure: the clock (``now_ms``) and the nonce come in as
arguments; ``PreambleChecker`` keeps the bounded cache of nonces seen.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct

import attrs

from peer.runtime.wire import REPLAY_WINDOW, DropReason, Keyring, ReplayGuard, derive_key

MAGIC = b"PEER"
STREAM_VERSION = 2  # version 1 was the bare length prefix
KEYED = 0x01
NONCE_SIZE = 16
MAC_SIZE = 32
_FIELDS = struct.Struct(">4sBBQ16sI")
PREAMBLE_SIZE = _FIELDS.size + MAC_SIZE  # 66 bytes
_NO_MAC = bytes(MAC_SIZE)
# Nonces remembered at most (see ``ReplayGuard`` for what happens beyond):
# only key holders can add one, so the cache fills only with real streams.
MAX_SEEN = 16_384

assert len(MAGIC) == 4 and MAGIC[0] != 0, "an older peer must read the magic as a length over its limit"


class PreambleRefusal(enum.Enum):
    BAD_PREAMBLE = "bad_preamble"  # not our magic or version, or a length out of range
    BAD_MAC = "bad_mac"  # the MAC matches no key in the ring, or a cluster key on one side only
    STALE = "stale"  # sent_ms outside the window around our clock
    REPLAYED = "replayed"  # a nonce seen before within the window


@attrs.frozen
class Preamble:
    length: int
    sent_ms: int
    nonce: bytes


def _stream_keys(keyring: Keyring | None) -> list[hmac.HMAC]:
    # Preambles are MACed under a key of their own, derived from each cluster
    # key, so no MAC made for a frame can ever pass for one made for a preamble.
    if keyring is None:
        return []
    return [hmac.new(derive_key(key, b"stream preamble", 32), digestmod=hashlib.sha256) for key in keyring.keys]


class PreambleSealer:
    """Builds preambles under the keyring's primary key (None: an open cluster)."""

    def __init__(self, keyring: Keyring | None) -> None:
        self._keys = _stream_keys(keyring)

    def seal(self, length: int, *, now_ms: int, nonce: bytes) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
        fields = _FIELDS.pack(MAGIC, STREAM_VERSION, KEYED if self._keys else 0, now_ms, nonce, length)
        if not self._keys:
            return fields + _NO_MAC
        mac = self._keys[0].copy()
        mac.update(fields)
        return fields + mac.digest()


class PreambleChecker:
    """Verifies preambles; remembers the nonces of the keyed ones it accepted."""

    def __init__(self, keyring: Keyring | None, *, max_length: int, max_seen: int = MAX_SEEN) -> None:
        self._keys = _stream_keys(keyring)
        self.max_length = max_length
        self.seen = ReplayGuard(round(REPLAY_WINDOW * 1000), max_seen)

    @property
    def keyed(self) -> bool:
        return bool(self._keys)

    def check(self, data: bytes, *, now_ms: int) -> Preamble | PreambleRefusal:
        """The preamble in ``data`` (``PREAMBLE_SIZE`` bytes), or why it is refused.
        Cheapest checks first; the nonce is remembered only once all passed."""
        if len(data) != PREAMBLE_SIZE:
            return PreambleRefusal.BAD_PREAMBLE
        magic, version, flags, sent_ms, nonce, length = _FIELDS.unpack_from(data)
        if magic != MAGIC or version != STREAM_VERSION or flags & ~KEYED or not 0 < length <= self.max_length:
            return PreambleRefusal.BAD_PREAMBLE
        if bool(flags & KEYED) != self.keyed:
            return PreambleRefusal.BAD_MAC  # a key on one side only: as the codec says of such frames
        preamble = Preamble(length, sent_ms, nonce)
        if not self._keys:
            return preamble
        fields, mac = data[: _FIELDS.size], data[_FIELDS.size :]
        if not any(hmac.compare_digest(_digest(key, fields), mac) for key in self._keys):
            return PreambleRefusal.BAD_MAC
        dropped = self.seen.check(sent_ms, nonce, now_ms)
        if dropped is None:
            return preamble
        return PreambleRefusal.STALE if dropped.reason is DropReason.STALE else PreambleRefusal.REPLAYED


def _digest(key: hmac.HMAC, data: bytes) -> bytes:
    mac = key.copy()
    mac.update(data)
    return mac.digest()
