"""The wire codec: the one place that touches untrusted bytes.

Frame layout (the same for a datagram and for a stream frame)::

    open cluster:   version:u8  flags=0  body
    keyed cluster:  version:u8  flags:u8  key_id:4  stamp:u64  nonce:12  payload  tag:16

``body`` is a msgpack array of messages (a compound packet); each message is
itself an array whose first element is its tag (see ``membership.messages``).
msgpack only: nothing that can name code is ever decoded (no pickle, no ext
types).

Authentication. In a keyed cluster the flags say SIGNED (``payload`` is the
body in clear, ``tag`` is HMAC-SHA256 over everything before it, truncated
to 128 bits) or ENCRYPTED (``payload`` is the body under AES-256-GCM, the
header from version to nonce is its associated data, ``tag`` is GCM's). The
MAC and AEAD keys are derived from each keyring key with HKDF-SHA256, so any
16, 24, 32 or 64-byte key serves both; ``key_id`` is a third HKDF output. It
names the key a frame was made with, so decoding costs one MAC or one
decryption, not one per key in the ring; it reveals which frames share a key
and nothing about the key (it is a PRF output; checking a guessed key
against it is no easier than against the MAC). The first key of the ring
makes frames, every key is accepted: rotation is three rolling steps,
install the new key everywhere, make it primary everywhere, remove the old.

Replay protection (keyed clusters only; an open cluster authenticates
nothing, so there is nothing to protect). ``stamp`` is the sender's wall
clock in ms and ``nonce`` 12 random bytes, both authenticated. A frame
stamped more than ``replay_window`` away from our clock is dropped as
``stale``; one whose (stamp, nonce) was seen within the window is dropped as
``replayed`` (``ReplayGuard``). Gossip's own duplicates (a datagram the
network delivered twice) are dropped the same way, harmlessly: every
message is idempotent.

Encryption is a per-node mode (``Encryption``): OFF makes signed frames,
SWITCHING and ON make encrypted ones; OFF and SWITCHING accept both kinds,
ON refuses a signed frame (``plaintext``). Switching a running cluster on
is two rolling restarts, OFF -> SWITCHING everywhere, then -> ON; off, the
same backwards.

Decoding is total. Whatever the bytes, ``decode`` returns the messages or a
``Dropped`` with its reason (``DropReason``), counted in ``Codec.drops``; it
never raises. Checks run cheapest first, and the tag is verified before the
timestamp is believed and before msgpack sees the body, so in a keyed
cluster only key holders reach the parser and the replay cache.

The codec reads no clock and draws no randomness of its own: a keyed codec
is given ``wall_clock`` (seconds, like ``time.time``) and ``random_bytes``
(like ``os.urandom``), so the simulator runs it deterministically.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crdt.messages import MESSAGE_TYPES as REPLICATION_TYPES
from crdt.messages import DeltaGossip
from crdt.messages import from_wire as replication_from_wire
from membership.messages import ENVELOPE_RESERVE
from membership.messages import from_wire as membership_from_wire

# 2: keyed frames carry a key id, a timestamp and a nonce, and may be encrypted.
VERSION = 2
SIGNED = 0x01
ENCRYPTED = 0x02
HEADER_SIZE = 2  # version, flags
KEY_ID_SIZE = 4
NONCE_SIZE = 12  # AES-GCM's nonce; random, so a key should make well under 2**32 frames
TAG_SIZE = 16
_KEYED_HEADER = struct.Struct(f">BB{KEY_ID_SIZE}sQ{NONCE_SIZE}s")
KEYED_HEADER_SIZE = _KEYED_HEADER.size  # 26
# The largest UDP payload; what we send is bounded by the packet budget.
MAX_DATAGRAM = 65_507
# A full state exchange of 10k members is about 600 KB.
MAX_STREAM_FRAME = 8 * 1024 * 1024
KEY_SIZES = (16, 24, 32, 64)

# Frames stamped further than this from our clock are stale. Replays inside
# the window are caught by the replay cache, so the window only bounds what
# the cache must remember: it can be generous. Two minutes covers hosts whose
# clocks drift unsynchronised for days, a VM resumed from a short suspend,
# and a stream frame that waited out a connect timeout; a host off by more is
# misconfigured, and its frames are counted as stale and warned about.
REPLAY_WINDOW = 120.0
# The most (stamp, nonce) pairs the replay cache holds: about 5 MB. Enough
# for 130 frames a second from key holders, sustained over the 4-minute span
# of stamps the window admits (a busy node sees a few dozen); past it the
# cache forgets its oldest seconds early and treats them as stale (see
# ``ReplayGuard``), so memory stays bounded whatever the input rate.
REPLAY_CAPACITY = 65_536
_REPLAY_BUCKET_MS = 1000

# How many recent deltas a codec remembers, to skip their repeats.
SEEN_DELTAS = 8192
# A replication delta's packed form starts with the header of an array of 4
# or 5 items, then its tag.
_DELTA_TAG = msgpack.packb(DeltaGossip.TAG)
_SHORT_ARRAYS = frozenset(msgpack.packb([None] * size)[0] for size in (4, 5))
_OPEN_HEADER = bytes((VERSION, 0))
# Every message of a compound packet is counted in the core's budget; the
# envelope around them is this much at most (the array header is 3 bytes).
ENVELOPE_SIZE = KEYED_HEADER_SIZE + 3 + TAG_SIZE

assert ENVELOPE_SIZE <= ENVELOPE_RESERVE, "the core's packet budget must cover the envelope"


class DropReason(enum.Enum):
    OVERSIZED = "oversized"
    UNKNOWN_VERSION = "unknown_version"
    BAD_MAC = "bad_mac"
    PLAINTEXT = "plaintext"  # signed but not encrypted, and this node requires encryption
    STALE = "stale"  # stamped outside the replay window
    REPLAYED = "replayed"  # seen before within the window
    MALFORMED = "malformed"


class Encryption(enum.Enum):
    """What a keyed codec makes and what it accepts (see the module's doc)."""

    OFF = "off"  # make signed frames; accept signed and encrypted ones
    SWITCHING = "switching"  # make encrypted frames; accept both (while a cluster switches)
    ON = "on"  # make encrypted frames; refuse signed ones


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
    """Cluster keys: ``keys[0]`` makes frames, every key is accepted."""

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


def derive_key(key: bytes, purpose: bytes, length: int) -> bytes:
    # Separate keys per purpose, so the MAC key is never also a cipher key,
    # and a key of any accepted size yields a full AES-256 key.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"peer wire v2 " + purpose).derive(key)


class _KeyMaterial:
    """What one keyring key becomes: its id, its keyed MAC and its AEAD."""

    __slots__ = ("key_id", "mac", "aead")

    def __init__(self, key: bytes) -> None:
        self.key_id = derive_key(key, b"key id", KEY_ID_SIZE)
        # Keying HMAC costs about as much as the MAC of a small frame: key
        # once, then copy the keyed state for each frame.
        self.mac = hmac.new(derive_key(key, b"mac", 32), digestmod=hashlib.sha256)
        self.aead = AESGCM(derive_key(key, b"aead", 32))

    def tag(self, data: bytes) -> bytes:
        mac = self.mac.copy()
        mac.update(data)
        return mac.digest()[:TAG_SIZE]  # HMAC-SHA256-128 (RFC 4868's truncation)


class ReplayGuard:
    """Which authenticated frames were seen lately, in bounded memory.

    A frame is named by its (stamp, nonce), both under its tag: a replay is
    the frame it copies, byte for byte. Names are kept in one set per second
    of stamp; a second is forgotten once all its stamps are outside the
    window (its frames are stale by then anyway), so the cache holds the
    frames of the span of stamps the window admits, twice the window.

    The cap. Only key holders add names (the tag is checked first, and a
    replay adds nothing), so the cache fills only if they send more than
    ``capacity`` distinct frames in that span. Then it forgets its oldest
    past seconds early and raises a floor: a frame stamped in a forgotten
    second is dropped as stale, because it could no longer be told from a
    replay. Fresh frames keep coming in; only late ones are lost. The current
    second and later ones are never forgotten early (the floor would pass
    now, and every honest frame would be stale). If they alone fill the cache
    (key holders sending over ``capacity`` frames in a second, or stamping
    them ahead), a new frame is dropped as replayed: the cache fails closed,
    no replay ever gets through, and what is lost is the flood's own second.
    """

    def __init__(self, window_ms: int, capacity: int) -> None:
        if window_ms < 0 or capacity < 1:
            raise ValueError("the replay window must be >= 0 and the replay cache hold at least one frame")
        self.window_ms = window_ms
        self.capacity = capacity
        self._seconds: dict[int, set[bytes]] = {}
        self._size = 0
        self._current = -1  # the second of ``now`` at the last expiry
        self._floor = -1  # seconds up to this one were forgotten early

    def __len__(self) -> int:
        return self._size

    def check(self, stamp_ms: int, nonce: bytes, now_ms: int) -> Dropped | None:
        """None, and the frame is remembered; or why it is refused."""
        if not now_ms - self.window_ms <= stamp_ms <= now_ms + self.window_ms:
            return Dropped(
                DropReason.STALE,
                f"stamped {(stamp_ms - now_ms) / 1000:+.1f}s from this node's clock; the window is "
                f"{self.window_ms / 1000:g}s (are the clocks synchronised?)",
            )
        second, current = stamp_ms // _REPLAY_BUCKET_MS, now_ms // _REPLAY_BUCKET_MS
        if current != self._current:
            self._expire(now_ms, current)
        if second <= self._floor:
            return Dropped(DropReason.STALE, "older than the replay cache still remembers (it overflowed)")
        names = self._seconds.get(second)
        if names is not None and nonce in names:
            return Dropped(DropReason.REPLAYED, "a frame seen before")
        if self._size >= self.capacity and not self._make_room(min(second, current)):
            return Dropped(DropReason.REPLAYED, "the replay cache is full of this second's frames: cannot tell a replay")
        if names is None:
            names = self._seconds[second] = set()
        names.add(nonce)
        self._size += 1
        return None

    def _expire(self, now_ms: int, current: int) -> None:
        self._current = current
        horizon = (now_ms - self.window_ms) // _REPLAY_BUCKET_MS  # seconds before it end before the window
        for second in [second for second in self._seconds if second < horizon]:
            self._size -= len(self._seconds.pop(second))

    def _make_room(self, before: int) -> bool:
        for second in sorted(second for second in self._seconds if second < before):
            if self._size < self.capacity:
                break
            self._size -= len(self._seconds.pop(second))
            self._floor = max(self._floor, second)
        return self._size < self.capacity


MessageDecoder = Callable[[Any], Any]


def decode_message(obj: Any) -> Any:
    """Any message the node speaks, by its tag: membership or replication."""
    if type(obj) is list and obj and obj[0] in REPLICATION_TYPES:
        return replication_from_wire(obj)
    return membership_from_wire(obj)


class Codec:
    """Frames messages for the wire and unframes them, counting every drop.

    A keyed codec needs ``wall_clock`` (seconds) and ``random_bytes`` (n ->
    n random bytes) for its stamps and nonces; an open one uses neither.
    """

    def __init__(
        self,
        keyring: Keyring | None = None,
        *,
        encryption: Encryption = Encryption.OFF,
        wall_clock: Callable[[], float] | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
        replay_window: float = REPLAY_WINDOW,
        replay_capacity: int = REPLAY_CAPACITY,
        max_datagram: int = MAX_DATAGRAM,
        max_stream: int = MAX_STREAM_FRAME,
        message_decoder: MessageDecoder = decode_message,
    ) -> None:
        self._wall_clock = wall_clock
        self._random_bytes = random_bytes
        self._encryption = Encryption.OFF
        self.keyring = keyring  # a property: each key's material is derived once per keyring
        self.encryption = encryption  # a property: checked against the keyring
        self.replay = ReplayGuard(round(replay_window * 1000), replay_capacity)
        self.max_datagram = max_datagram
        self.max_stream = max_stream
        self._decode_message = message_decoder
        self._packer = msgpack.Packer()
        self.drops: dict[DropReason, int] = {reason: 0 for reason in DropReason}
        self.frames_decoded = 0
        self.repeats_skipped = 0
        # Fingerprints of the deltas decoded lately, oldest first (a dict as
        # an ordered set). Gossip brings each delta to a node several times,
        # in different frames: merging is idempotent, so a repeat is skipped
        # before it costs a decode and a merge.
        self._seen_deltas: dict[int, None] = {}

    @property
    def keyring(self) -> Keyring | None:
        return self._keyring

    @keyring.setter
    def keyring(self, keyring: Keyring | None) -> None:
        if keyring is not None and (self._wall_clock is None or self._random_bytes is None):
            raise ValueError("a keyed codec needs a wall_clock and random_bytes, for its timestamps and nonces")
        if keyring is None and self._encryption is not Encryption.OFF:
            raise ValueError("encryption needs a cluster key")
        self._keyring = keyring
        self._materials = [_KeyMaterial(key) for key in keyring.keys] if keyring else []
        # key id -> the keys that have it (one, unless two ids collide).
        self._by_id: dict[bytes, list[_KeyMaterial]] = {}
        for material in self._materials:
            self._by_id.setdefault(material.key_id, []).append(material)

    @property
    def encryption(self) -> Encryption:
        return self._encryption

    @encryption.setter
    def encryption(self, encryption: Encryption) -> None:
        if encryption is not Encryption.OFF and self._keyring is None:
            raise ValueError("encryption needs a cluster key")
        self._encryption = encryption

    def _now_ms(self) -> int:
        assert self._wall_clock is not None  # the keyring's setter made sure
        return int(self._wall_clock() * 1000)

    def encode(self, messages: Iterable[Any], *, stream: bool = False) -> bytes:
        body = self._packer.pack([message.to_wire() for message in messages])
        if self._keyring is None:
            frame = _OPEN_HEADER + body
        else:
            assert self._random_bytes is not None  # the keyring's setter made sure
            material = self._materials[0]
            stamp = min(max(self._now_ms(), 0), (1 << 64) - 1)
            nonce = self._random_bytes(NONCE_SIZE)
            if self._encryption is Encryption.OFF:
                signed = _KEYED_HEADER.pack(VERSION, SIGNED, material.key_id, stamp, nonce) + body
                frame = signed + material.tag(signed)
            else:
                header = _KEYED_HEADER.pack(VERSION, ENCRYPTED, material.key_id, stamp, nonce)
                frame = header + material.aead.encrypt(nonce, body, header)
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
        if flags not in (0, SIGNED, ENCRYPTED):
            return Dropped(DropReason.MALFORMED, f"unknown flags {flags:#04x}")
        if self._keyring is None:
            if flags:
                return Dropped(DropReason.BAD_MAC, "keyed frame, but this node has no cluster key")
            body = data[HEADER_SIZE:]
        else:
            opened = self._open(data, flags)
            if isinstance(opened, Dropped):
                return opened
            body = opened
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

    def _open(self, data: bytes, flags: int) -> bytes | Dropped:
        """A keyed frame's body, once its tag verified and it passed the replay cache."""
        if not flags:
            return Dropped(DropReason.BAD_MAC, "open frame, but this cluster requires a key")
        if flags == SIGNED and self._encryption is Encryption.ON:
            return Dropped(DropReason.PLAINTEXT, "signed but not encrypted, and this node requires encryption")
        if len(data) < KEYED_HEADER_SIZE + 1 + TAG_SIZE:
            return Dropped(DropReason.MALFORMED, "keyed frame too short for its header and tag")
        _, _, key_id, stamp, nonce = _KEYED_HEADER.unpack_from(data)
        body = None
        for material in self._by_id.get(key_id, ()):
            if flags == SIGNED:
                if hmac.compare_digest(material.tag(data[:-TAG_SIZE]), data[-TAG_SIZE:]):
                    body = data[KEYED_HEADER_SIZE:-TAG_SIZE]
                    break
            else:
                try:
                    body = material.aead.decrypt(nonce, data[KEYED_HEADER_SIZE:], data[:KEYED_HEADER_SIZE])
                    break
                except InvalidTag:
                    continue
        if body is None:
            return Dropped(DropReason.BAD_MAC, "tag verifies under no key in the keyring")
        refused = self.replay.check(stamp, nonce, self._now_ms())
        return body if refused is None else refused

    def _remember(self, fingerprints: list[int]) -> None:
        seen = self._seen_deltas
        for fingerprint in fingerprints:
            seen[fingerprint] = None
        while len(seen) > SEEN_DELTAS:
            del seen[next(iter(seen))]
