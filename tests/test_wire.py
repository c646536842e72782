"""The wire codec: round trips, authentication, encryption, replay protection, key rotation, total decoding."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.hlc import Timestamp
from crdt.messages import DeltaGossip
from crdt.ormap import ORMap
from membership.messages import ENVELOPE_RESERVE, Ack, Alive, Ping
from peer.runtime import wire
from peer.runtime.wire import (
    ENCRYPTED,
    KEYED_HEADER_SIZE,
    REPLAY_CAPACITY,
    SIGNED,
    TAG_SIZE,
    VERSION,
    Codec,
    Dropped,
    DropReason,
    Encryption,
    FrameTooLarge,
    Keyring,
    ReplayGuard,
)
from tests.strategies import messages

K1, K2, K3 = b"1" * 32, b"2" * 32, b"3" * 16
PING = [Ping(1, "b", ("10.0.0.1", 7946))]
EPOCH = 1_700_000_000.0
OFF, SWITCHING, ON = Encryption.OFF, Encryption.SWITCHING, Encryption.ON


class Clock:
    """A wall clock a test sets."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_NONCES = itertools.count(1)


def counter_bytes() -> Callable[[int], bytes]:
    """Distinct 'random' bytes, also across codecs (as random nonces are)."""
    return lambda size: next(_NONCES).to_bytes(size, "big")


def make(keys: tuple[bytes, ...] | None = (K1,), encryption: Encryption = OFF, clock: Clock | None = None, **kw) -> Codec:
    return Codec(
        Keyring(keys) if keys else None,
        encryption=encryption,
        wall_clock=clock or Clock(),
        random_bytes=counter_bytes(),
        **kw,
    )


def _reason(codec: Codec, data: bytes, stream: bool = False) -> DropReason:
    result = codec.decode(data, stream=stream)
    assert isinstance(result, Dropped), result
    return result.reason


# -- round trips, envelope, keys -------------------------------------------------------------------------------------


@given(
    st.lists(messages, min_size=1, max_size=5),
    st.sampled_from([None, (K1,), (K3, K1)]),
    st.sampled_from(list(Encryption)),
    st.sampled_from(list(Encryption)),
    st.booleans(),
)
def test_round_trip_under_every_key_and_encryption_combination(batch, keys, sending, receiving, stream):
    if keys is None:
        sending = receiving = OFF
    sender, receiver = make(keys, sending), make(keys, receiving)
    result = receiver.decode(sender.encode(batch, stream=stream), stream=stream)
    if keys is not None and sending is OFF and receiving is ON:
        assert result == Dropped(DropReason.PLAINTEXT, "signed but not encrypted, and this node requires encryption")
    else:
        assert result == tuple(batch)


@pytest.mark.parametrize("encryption", [OFF, ON])
def test_envelope_fits_the_reserve_the_core_budgets_for(encryption):
    codec = make((K1,), encryption)
    batch = [Ack(1)] * 200  # enough messages to need the 3-byte array header
    payload = sum(len(msgpack.packb(m.to_wire())) for m in batch)
    assert len(codec.encode(batch)) - payload <= ENVELOPE_RESERVE
    assert len(make(None).encode(batch)) - payload <= ENVELOPE_RESERVE


@pytest.mark.parametrize("encryption", [OFF, ON])
def test_keyring_rotation_without_downtime(encryption):
    a, b = make((K1,), encryption), make((K1,), encryption)
    # Step 1: install the new key everywhere; the old one still makes frames.
    a.keyring, b.keyring = a.keyring.install(K2), b.keyring.install(K2)
    assert b.decode(a.encode(PING)) == tuple(PING)
    # Step 2: make it primary, one node at a time: both keys are accepted.
    a.keyring = a.keyring.use(K2)
    assert b.decode(a.encode(PING)) == tuple(PING)
    assert a.decode(b.encode(PING)) == tuple(PING)
    b.keyring = b.keyring.use(K2)
    # Step 3: remove the old key; frames made with it are now refused.
    a.keyring = a.keyring.remove(K1)
    assert a.decode(b.encode(PING)) == tuple(PING)
    old = make((K1,), encryption)
    assert a.decode(old.encode(PING)) == Dropped(DropReason.BAD_MAC, "tag verifies under no key in the keyring")
    assert a.drops[DropReason.BAD_MAC] == 1


def test_keys_whose_ids_collide_are_each_tried(monkeypatch):
    derive = wire.derive_key
    monkeypatch.setattr(wire, "derive_key", lambda key, purpose, size: b"\0" * size if purpose == b"key id" else derive(key, purpose, size))
    both = make((K1, K2), SWITCHING)
    assert both.decode(make((K2,), ON).encode(PING)) == tuple(PING)
    assert both.decode(make((K1,), OFF).encode(PING)) == tuple(PING)
    assert _reason(both, make((K3,), ON).encode(PING)) is DropReason.BAD_MAC


def test_keyring_refuses_bad_keys_and_unsafe_steps():
    with pytest.raises(ValueError, match="bytes long"):
        Keyring((b"short",))
    with pytest.raises(ValueError, match="at least one key"):
        Keyring(())
    with pytest.raises(ValueError, match="same key twice"):
        Keyring((K1, K1))
    ring = Keyring((K1, K3))
    with pytest.raises(ValueError, match="primary key cannot be removed"):
        ring.remove(K1)
    with pytest.raises(ValueError, match="install a key"):
        ring.use(K2)
    assert ring.remove(K3) == Keyring((K1,))


def test_a_keyed_codec_is_given_its_clock_and_randomness_and_encryption_needs_a_key():
    with pytest.raises(ValueError, match="wall_clock and random_bytes"):
        Codec(Keyring((K1,)))
    with pytest.raises(ValueError, match="needs a cluster key"):
        Codec(None, encryption=ON)
    codec = make((K1,), SWITCHING)
    with pytest.raises(ValueError, match="needs a cluster key"):
        codec.keyring = None


# -- encryption ------------------------------------------------------------------------------------------------------


def test_an_encrypted_frame_is_unreadable_without_the_key_and_hides_its_body():
    secret = [Alive("payroll-db-7f3a", 3, ("10.9.8.7", 7946), b"role=primary")]
    signed, encrypted = make((K1,), OFF).encode(secret), make((K1,), ON).encode(secret)
    assert b"payroll-db-7f3a" in signed and b"role=primary" in signed  # signing hides nothing
    assert b"payroll-db-7f3a" not in encrypted and b"role=primary" not in encrypted
    assert b"10.9.8.7" not in encrypted and msgpack.packb(secret[0].to_wire()) not in encrypted
    assert encrypted[1] == ENCRYPTED and signed[1] == SIGNED
    assert _reason(make((K2,), ON), encrypted) is DropReason.BAD_MAC
    assert _reason(make((K2,), OFF), encrypted) is DropReason.BAD_MAC
    assert _reason(make(None), encrypted) is DropReason.BAD_MAC
    assert make((K1,), OFF).decode(encrypted) == tuple(secret)


def test_the_header_is_authenticated_with_the_body():
    frame = make((K1,), ON).encode(PING)
    for position in range(2, len(frame)):  # key id, stamp, nonce, ciphertext, tag: any bit flipped
        mutated = bytearray(frame)
        mutated[position] ^= 0x04
        assert _reason(make((K1,), ON), bytes(mutated)) is DropReason.BAD_MAC, position
    # Relabelled as signed, the ciphertext and GCM tag do not verify as a MAC.
    relabelled = bytes([VERSION, SIGNED]) + frame[2:]
    assert _reason(make((K1,), SWITCHING), relabelled) is DropReason.BAD_MAC
    assert _reason(make((K1,), ON), relabelled) is DropReason.PLAINTEXT


def test_switching_encryption_on_and_off_in_a_rolling_restart():
    nodes = [make((K1,), OFF) for _ in range(3)]

    def all_hear_each_other() -> bool:
        return all(b.decode(a.encode(PING)) == tuple(PING) for a in nodes for b in nodes if a is not b)

    # Switching on: every node to SWITCHING (makes encrypted, accepts both), one at a time ...
    for node in nodes:
        node.encryption = SWITCHING
        assert all_hear_each_other()
    # ... then every node to ON, one at a time.
    for node in nodes:
        node.encryption = ON
        assert all_hear_each_other()
    assert _reason(nodes[0], make((K1,), OFF).encode(PING)) is DropReason.PLAINTEXT  # a forgotten node stands out
    # Switching off is the same, backwards.
    for mode in (SWITCHING, OFF):
        for node in nodes:
            node.encryption = mode
            assert all_hear_each_other()
    # Skipping the middle step cuts the cluster in two while it lasts.
    nodes[0].encryption = ON
    assert _reason(nodes[0], nodes[1].encode(PING)) is DropReason.PLAINTEXT


# -- replay protection -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encryption", [OFF, ON])
@pytest.mark.parametrize("stream", [False, True])
def test_a_replayed_frame_is_dropped_and_counted(encryption, stream):
    clock = Clock()
    sender, receiver = make((K1,), encryption, clock), make((K1,), encryption, clock)
    frame = sender.encode(PING, stream=stream)
    assert receiver.decode(frame, stream=stream) == tuple(PING)
    clock.now += 30
    assert receiver.decode(frame, stream=stream) == Dropped(DropReason.REPLAYED, "a frame seen before")
    assert receiver.decode(frame, stream=not stream) == Dropped(DropReason.REPLAYED, "a frame seen before")
    assert receiver.decode(sender.encode(PING, stream=stream), stream=stream) == tuple(PING)  # the same messages anew
    assert receiver.drops[DropReason.REPLAYED] == 2 and receiver.frames_decoded == 2


def test_an_open_cluster_has_no_replay_protection():
    codec = make(None)
    frame = codec.encode(PING)
    assert codec.decode(frame) == codec.decode(frame) == tuple(PING)  # nothing is authenticated, so nothing is checked


@pytest.mark.parametrize("encryption", [OFF, ON])
def test_frames_stamped_outside_the_window_are_stale(encryption):
    ours, theirs = Clock(), Clock()
    receiver = make((K1,), encryption, ours, replay_window=60.0)
    sender = make((K1,), encryption, theirs)
    for offset, reason in [(-60.001, DropReason.STALE), (-60.0, None), (59.999, None), (60.0, None), (60.002, DropReason.STALE)]:
        theirs.now = ours.now + offset
        result = receiver.decode(sender.encode(PING))
        if reason is None:
            assert result == tuple(PING), offset
        else:
            assert isinstance(result, Dropped) and result.reason is reason, offset
            assert "the window is 60s" in result.detail
    assert receiver.drops[DropReason.STALE] == 2
    # A frame accepted in time and replayed once it is old is stale, not replayed.
    theirs.now = ours.now
    frame = sender.encode(PING)
    assert receiver.decode(frame) == tuple(PING)
    ours.now += 61
    assert _reason(receiver, frame) is DropReason.STALE


def test_a_frame_is_checked_against_the_replay_cache_only_once_its_tag_verified():
    receiver = make((K1,))
    frame = make((K1,)).encode(PING)
    forged = frame[:-1] + bytes([frame[-1] ^ 1])
    assert _reason(receiver, forged) is DropReason.BAD_MAC
    assert len(receiver.replay) == 0
    assert receiver.decode(frame) == tuple(PING)  # the forgery did not burn the genuine frame's nonce


def test_the_replay_cache_forgets_what_the_window_has_passed():
    clock = Clock()
    receiver, sender = make((K1,), OFF, clock), make((K1,), OFF, clock)
    for _ in range(500):
        assert receiver.decode(sender.encode(PING)) == tuple(PING)
        clock.now += 0.5
    assert len(receiver.replay) <= 2 * 120 / 0.5 + 2  # the window's span of stamps, not all 500
    clock.now += 121
    receiver.decode(sender.encode(PING))
    assert len(receiver.replay) == 1


def test_the_replay_cache_stays_bounded_under_100k_distinct_frames_and_lets_no_replay_through():
    capacity = 1000
    clock = Clock()
    receiver = make((K1,), OFF, clock, replay_capacity=capacity)
    sender = make((K1,), OFF, clock)
    frames = []
    accepted = 0
    for index in range(100_000):
        clock.now = EPOCH + index * 0.001  # 1,000 frames a second: a flood, for a cache of 1,000
        frame = sender.encode(PING)
        accepted += receiver.decode(frame) == tuple(PING)
        assert len(receiver.replay) <= capacity
        if index % 997 == 0:
            frames.append(frame)
    assert accepted > 90_000  # fresh frames keep coming in: the cache forgets its past seconds early
    for frame in frames:  # every sampled frame again, now: none gets through
        assert _reason(receiver, frame) in (DropReason.STALE, DropReason.REPLAYED)
    assert len(make((K1,)).replay) == 0 and make((K1,)).replay.capacity == REPLAY_CAPACITY


def test_the_replay_cache_forgets_early_by_raising_a_floor_and_fails_closed_within_one_second():
    guard = ReplayGuard(window_ms=120_000, capacity=3)
    now = 1_000_000
    assert guard.check(now - 5000, b"a", now) is None
    assert guard.check(now - 5000, b"b", now) is None
    assert guard.check(now, b"c", now) is None
    # Full: the oldest past second is forgotten, and its frames are stale from now on.
    assert guard.check(now, b"d", now) is None and len(guard) == 2
    assert guard.check(now - 5000, b"a", now).reason is DropReason.STALE
    assert guard.check(now - 4000, b"e", now) is None  # after the forgotten second: still checked
    assert guard.check(now - 4000, b"e", now).reason is DropReason.REPLAYED
    # The current second (and the future) is never forgotten early: a flood in it is refused.
    assert guard.check(now, b"f", now) is None and len(guard) == 3
    refused = guard.check(now, b"g", now)
    assert refused.reason is DropReason.REPLAYED and "full" in refused.detail
    assert guard.check(now + 2000, b"h", now).reason is DropReason.REPLAYED
    # A second later, the flood's second is past and can be forgotten for new frames.
    assert guard.check(now + 1000, b"g", now + 1000) is None
    assert guard.check(now, b"c", now + 1000).reason is DropReason.STALE


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(-200_000, 200_000), st.integers(0, 40), st.integers(0, 3_000)), max_size=200))
def test_the_replay_cache_never_accepts_a_name_twice_and_stays_bounded(events):
    guard = ReplayGuard(window_ms=60_000, capacity=16)
    accepted: set[tuple[int, bytes]] = set()
    now = 10_000_000
    for offset, name, step in events:
        now += step
        stamp, nonce = now + offset, name.to_bytes(2, "big")
        if guard.check(stamp, nonce, now) is None:
            assert (stamp, nonce) not in accepted
            accepted.add((stamp, nonce))
            assert abs(stamp - now) <= 60_000
        assert len(guard) <= 16


# -- refusals and total decoding -------------------------------------------------------------------------------------


def test_every_kind_of_bad_frame_is_dropped_and_counted():
    keyed, open_ = make((K1,)), make(None)
    good = make((K1,)).encode([Ack(7)])
    tampered = bytearray(good)
    tampered[KEYED_HEADER_SIZE] ^= 0x01
    assert _reason(keyed, bytes(tampered)) is DropReason.BAD_MAC
    assert _reason(keyed, open_.encode([Ack(7)])) is DropReason.BAD_MAC  # open in a keyed cluster
    assert _reason(open_, good) is DropReason.BAD_MAC  # keyed, but we hold no key
    assert _reason(keyed, make((K2,)).encode([Ack(7)])) is DropReason.BAD_MAC  # another key's id
    assert _reason(keyed, bytes([VERSION + 1]) + good[1:]) is DropReason.UNKNOWN_VERSION
    assert _reason(keyed, bytes([1, 1]) + good[2:]) is DropReason.UNKNOWN_VERSION  # the previous format
    assert _reason(keyed, b"\x02") is DropReason.MALFORMED
    assert _reason(open_, bytes([VERSION, 0x80]) + b"\x91\x92\x02\x07") is DropReason.MALFORMED  # unknown flag
    assert _reason(keyed, bytes([VERSION, SIGNED | ENCRYPTED]) + good[2:]) is DropReason.MALFORMED  # both
    assert _reason(open_, bytes([VERSION, 0]) + b"\xc1") is DropReason.MALFORMED  # not msgpack
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[99, 1]])) is DropReason.MALFORMED  # unknown tag
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[2, -1]])) is DropReason.MALFORMED  # bad seq
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[2, True]])) is DropReason.MALFORMED  # bool is no int
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([])) is DropReason.MALFORMED  # no messages
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[2, 1]]) + b"\x00") is DropReason.MALFORMED
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb({"a": 1})) is DropReason.MALFORMED
    assert _reason(keyed, bytes([VERSION, SIGNED]) + b"\x00" * (KEYED_HEADER_SIZE + TAG_SIZE - 2)) is DropReason.MALFORMED
    big = make(None, max_datagram=100)
    assert _reason(big, b"\x01" * 101) is DropReason.OVERSIZED
    assert big.decode(big.encode([Alive("x" * 60, 1, ("10.0.0.9", 1))]), stream=True)  # streams have their own limit
    assert keyed.drops[DropReason.BAD_MAC] == 3 and open_.drops[DropReason.MALFORMED] == 8


def test_only_key_holders_reach_the_parser():
    # A body that would be malformed, signed with the right key, is refused as malformed;
    # with a wrong tag, the same body never reaches msgpack and is refused as bad_mac.
    codec = make((K1,))
    material = codec._materials[0]
    header = wire._KEYED_HEADER.pack(VERSION, SIGNED, material.key_id, int(EPOCH * 1000), b"n" * 12)
    body = b"\xc1"
    assert _reason(codec, header + body + material.tag(header + body)) is DropReason.MALFORMED
    assert _reason(codec, header.replace(b"n" * 12, b"m" * 12) + body + b"\0" * TAG_SIZE) is DropReason.BAD_MAC


def test_one_bad_message_drops_its_whole_packet():
    codec = make(None)
    frame = bytes([VERSION, 0]) + msgpack.packb([[2, 1], [5, "n", 1, "10.0.0.1", 0, b""]])  # port 0
    result = codec.decode(frame)
    assert isinstance(result, Dropped) and "port" in result.detail


def test_a_delta_decoded_lately_is_skipped_when_it_comes_again_and_nothing_else_is():
    codec = make((K1,))
    delta = DeltaGossip("runs", ORMap("a#1").put("k", {"v": 1}, Timestamp(1, 0, "a#1")))
    ping = Ping(1, "b", ("10.0.0.2", 7946))
    assert codec.decode(codec.encode([delta, ping])) == (delta, ping)
    # The same delta again (from another member, relaying it): only the ping is new.
    assert codec.decode(codec.encode([ping, delta])) == (ping,)
    assert codec.repeats_skipped == 1
    # Its direct copy is another message; a frame that is dropped remembers nothing.
    direct = DeltaGossip("runs", delta.delta, relay=False)
    other = DeltaGossip("runs", ORMap("a#1").put("j", 2, Timestamp(2, 0, "a#1")))
    open_ = make(None)
    assert isinstance(open_.decode(open_.encode([other])[:-1] + b"\x00"), Dropped)
    assert open_.decode(open_.encode([direct, other])) == (direct, other)


def test_oversized_frames_are_refused_on_the_way_out():
    codec = make(None, max_datagram=64)
    with pytest.raises(FrameTooLarge):
        codec.encode([Alive("x" * 100, 1, ("10.0.0.9", 1))])
    with pytest.raises(FrameTooLarge):
        make((K1,), ON, max_datagram=64).encode([Alive("x" * 20, 1, ("10.0.0.9", 1))])


@settings(max_examples=500)
@given(st.binary(max_size=2048), st.sampled_from([None, (K1,), (K1, K3)]), st.sampled_from(list(Encryption)), st.booleans())
def test_random_bytes_never_raise(data, keys, encryption, stream):
    codec = make(keys, encryption if keys else OFF)
    result = codec.decode(data, stream=stream)
    assert isinstance(result, (tuple, Dropped))


@settings(max_examples=500)
@given(
    st.lists(messages, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=16),
)
def test_mutated_frames_never_raise(batch, flips, cut):
    # Unkeyed, so mutations get past the MAC and reach the parser.
    codec = make(None)
    frame = bytearray(codec.encode(batch, stream=True))
    for position, value in flips:
        frame[position % len(frame)] = value
    mutated = bytes(frame[: len(frame) - cut] if cut < len(frame) else frame)
    result = codec.decode(mutated, stream=True)
    assert isinstance(result, (tuple, Dropped))
    if isinstance(result, tuple):
        assert codec.decode(codec.encode(result, stream=True), stream=True) == result


@settings(max_examples=300)
@given(
    st.lists(messages, min_size=1, max_size=3),
    st.sampled_from(list(Encryption)),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=16),
)
def test_a_mutated_keyed_frame_is_always_refused(batch, encryption, flips, cut):
    frame = make((K1,), encryption).encode(batch, stream=True)
    mutated = bytearray(frame)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    mutated = mutated[: len(mutated) - cut] if cut < len(mutated) else mutated
    result = make((K1,), SWITCHING).decode(bytes(mutated), stream=True)
    if bytes(mutated) == frame:
        assert result == tuple(batch)
    else:
        assert isinstance(result, Dropped) and result.reason is not DropReason.REPLAYED
