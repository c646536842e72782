"""The wire codec: the one place that touches untrusted bytes.

Frame layout (the same for a datagram and for a stream frame)::

    version:u8  flags:u8  body  [mac:32 bytes, when flags has SIGNED]

``body`` is a msgpack array of messages (a compound packet); each message is
itself an array whose first element is its tag (see ``membership.messages``).
msgpack only: nothing that can name code is ever decoded (no pickle, no ext
types).

Authentication: the MAC is HMAC-SHA256 over version, flags and body, keyed
with the keyring's primary key; any key in the ring verifies. Rotating a key
without downtime is three rolling steps: install the new key everywhere,
make it primary everywhere, remove the old one.

Decoding is total. Whatever the bytes, ``decode`` returns the messages or a
``Dropped`` with one of four reasons (oversized, unknown version, bad MAC,
malformed), counted in ``Codec.drops``; it never raises. Checks run cheapest
first and the MAC is verified before msgpack sees the body, so in a keyed
cluster only key holders reach the parser.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import msgpack

from crdt.messages import MESSAGE_TYPES as REPLICATION_TYPES
from crdt.messages import DeltaGossip
from crdt.messages import from_wire as replication_from_wire
from membership.messages import ENVELOPE_RESERVE
from membership.messages import from_wire as membership_from_wire

VERSION = 1
SIGNED = 0x01
HEADER_SIZE = 2
MAC_SIZE = 32
# The largest UDP payload; what we send is bounded by the packet budget.
MAX_DATAGRAM = 65_507
# A full state exchange of 10k members is about 600 KB.
MAX_STREAM_FRAME = 8 * 1024 * 1024
KEY_SIZES = (16, 24, 32, 64)

# How many recent deltas a codec remembers, to skip their repeats.
SEEN_DELTAS = 8192
# A replication delta's packed form starts with the header of an array of 4
# or 5 items, then its tag.
_DELTA_TAG = msgpack.packb(DeltaGossip.TAG)
_SHORT_ARRAYS = frozenset(msgpack.packb([None] * size)[0] for size in (4, 5))
_UNSIGNED_HEADER = bytes((VERSION, 0))
_SIGNED_HEADER = bytes((VERSION, SIGNED))

assert HEADER_SIZE + 3 + MAC_SIZE <= ENVELOPE_RESERVE, "the core's packet budget must cover the envelope"


class DropReason(enum.Enum):
    OVERSIZED = "oversized"
    UNKNOWN_VERSION = "unknown_version"
    BAD_MAC = "bad_mac"
    MALFORMED = "malformed"


@attrs.frozen
class Dropped:
    reason: DropReason
    detail: str


class FrameTooLarge(ValueError):
    """An outgoing frame exceeds its channel's size limit."""


def _key_tuple(keys: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(keys)


def _valid_keys(instance: object, attribute: attrs.Attribute, keys: tuple[bytes, ...]) -> None:
    if not keys:
        raise ValueError("a keyring needs at least one key")
    for key in keys:
        if len(key) not in KEY_SIZES:
            raise ValueError(f"a cluster key must be {', '.join(map(str, KEY_SIZES))} bytes long, not {len(key)}")
    if len(set(keys)) != len(keys):
        raise ValueError("a keyring must not hold the same key twice")


@attrs.frozen
class Keyring:
    """Cluster keys: ``keys[0]`` signs, every key verifies."""

    keys: tuple[bytes, ...] = attrs.field(converter=_key_tuple, validator=_valid_keys)

    @property
    def primary(self) -> bytes:
        return self.keys[0]

    def install(self, key: bytes) -> Keyring:
        """Also accept ``key`` (rotation step 1)."""
        return self if key in self.keys else Keyring(self.keys + (key,))

    def use(self, key: bytes) -> Keyring:
        """Sign with ``key``, an installed key (rotation step 2)."""
        if key not in self.keys:
            raise ValueError("install a key before making it primary")
        return Keyring((key,) + tuple(k for k in self.keys if k != key))

    def remove(self, key: bytes) -> Keyring:
        """Stop accepting ``key`` (rotation step 3); the primary stays."""
        if key == self.primary:
            raise ValueError("the primary key cannot be removed; make another key primary first")
        return Keyring(tuple(k for k in self.keys if k != key))


MessageDecoder = Callable[[Any], Any]


def decode_message(obj: Any) -> Any:
    """Any message the node speaks, by its tag: membership or replication."""
    if type(obj) is list and obj and obj[0] in REPLICATION_TYPES:
        return replication_from_wire(obj)
    return membership_from_wire(obj)


class Codec:
    """Frames messages for the wire and unframes them, counting every drop."""

    def __init__(
        self,
        keyring: Keyring | None = None,
        *,
        max_datagram: int = MAX_DATAGRAM,
        max_stream: int = MAX_STREAM_FRAME,
        message_decoder: MessageDecoder = decode_message,
    ) -> None:
        self.keyring = keyring  # a property: keyed MACs are prepared once per keyring
        self.max_datagram = max_datagram
        self.max_stream = max_stream
        self._decode_message = message_decoder
        self._packer = msgpack.Packer()
        self.drops: dict[DropReason, int] = {reason: 0 for reason in DropReason}
        self.frames_decoded = 0
        self.repeats_skipped = 0
        # Fingerprints of the deltas decoded lately, oldest first (a dict as
        # an ordered set). Gossip brings each delta to a node several times,
        # byte for byte the same: merging is idempotent, so a repeat is
        # skipped before it costs a decode and a merge.
        self._seen_deltas: dict[int, None] = {}

    @property
    def keyring(self) -> Keyring | None:
        return self._keyring

    @keyring.setter
    def keyring(self, keyring: Keyring | None) -> None:
        self._keyring = keyring
        # Keying HMAC costs about as much as the MAC of a small frame: key
        # once, then copy the keyed state for each frame.
        self._macs = [hmac.new(key, digestmod=hashlib.sha256) for key in keyring.keys] if keyring else []

    def _mac(self, index: int, data: bytes) -> bytes:
        mac = self._macs[index].copy()
        mac.update(data)
        return mac.digest()

    def encode(self, messages: Iterable[Any], *, stream: bool = False) -> bytes:
        body = self._packer.pack([message.to_wire() for message in messages])
        if self._keyring is None:
            frame = _UNSIGNED_HEADER + body
        else:
            signed = _SIGNED_HEADER + body
            frame = signed + self._mac(0, signed)
        limit = self.max_stream if stream else self.max_datagram
        if len(frame) > limit:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds the {limit}-byte limit")
        return frame

    def decode(self, data: bytes, *, stream: bool = False) -> tuple[Any, ...] | Dropped:
        result = self._decode(data, self.max_stream if stream else self.max_datagram)
        if isinstance(result, Dropped):
            self.drops[result.reason] += 1
        else:
            self.frames_decoded += 1
        return result

    def _decode(self, data: bytes, limit: int) -> tuple[Any, ...] | Dropped:
        if len(data) > limit:
            return Dropped(DropReason.OVERSIZED, f"{len(data)} bytes, limit {limit}")
        if len(data) < HEADER_SIZE + 1:
            return Dropped(DropReason.MALFORMED, f"frame of {len(data)} bytes is too short")
        if data[0] != VERSION:
            return Dropped(DropReason.UNKNOWN_VERSION, f"version {data[0]}, we speak {VERSION}")
        flags = data[1]
        if flags & ~SIGNED:
            return Dropped(DropReason.MALFORMED, f"unknown flags {flags:#04x}")
        signed = bool(flags & SIGNED)
        if self._keyring is None:
            if signed:
                return Dropped(DropReason.BAD_MAC, "signed frame, but this node has no cluster key")
            body = data[HEADER_SIZE:]
        else:
            if not signed:
                return Dropped(DropReason.BAD_MAC, "unsigned frame, but this cluster requires a key")
            if len(data) < HEADER_SIZE + 1 + MAC_SIZE:
                return Dropped(DropReason.MALFORMED, "signed frame too short for its MAC")
            if not self._verify(data[:-MAC_SIZE], data[-MAC_SIZE:]):
                return Dropped(DropReason.BAD_MAC, "MAC matches no key in the keyring")
            body = data[HEADER_SIZE:-MAC_SIZE]
        try:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_ext_len=0, max_buffer_size=len(body))
            unpacker.feed(body)
            count = unpacker.read_array_header()
            if not count:
                return Dropped(DropReason.MALFORMED, "body is not a non-empty list of messages")
            decode_message = self._decode_message
            messages, fresh = [], []
            for _ in range(count):
                start = unpacker.tell()
                unpacker.skip()
                item = body[start : unpacker.tell()]
                if item[1:2] == _DELTA_TAG and item[0] in _SHORT_ARRAYS:
                    fingerprint = hash(item)
                    if fingerprint in self._seen_deltas:
                        self.repeats_skipped += 1
                        continue
                    fresh.append(fingerprint)
                messages.append(decode_message(msgpack.unpackb(item, raw=False, strict_map_key=True, max_ext_len=0)))
            if unpacker.tell() != len(body):
                return Dropped(DropReason.MALFORMED, "bytes after the list of messages")
        except Exception as error:  # the trust boundary: nothing may escape
            return Dropped(DropReason.MALFORMED, f"{type(error).__name__}: {error}")
        self._remember(fresh)  # only once the whole frame decoded: a dropped frame's deltas may come again
        return tuple(messages)

    def _remember(self, fingerprints: list[int]) -> None:
        seen = self._seen_deltas
        for fingerprint in fingerprints:
            seen[fingerprint] = None
        while len(seen) > SEEN_DELTAS:
            del seen[next(iter(seen))]

    def _verify(self, signed: bytes, mac: bytes) -> bool:
        for index in range(len(self._macs)):
            if hmac.compare_digest(self._mac(index, signed), mac):
                return True
        return False

