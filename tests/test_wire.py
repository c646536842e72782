"""The wire codec: round trips, authentication, key rotation, and total decoding."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.hlc import Timestamp
from crdt.messages import DeltaGossip
from crdt.ormap import ORMap
from membership.messages import ENVELOPE_RESERVE, Ack, Alive, Ping
from peer.runtime.wire import MAC_SIZE, VERSION, Codec, Dropped, DropReason, FrameTooLarge, Keyring
from tests.strategies import messages

K1, K2, K3 = b"1" * 32, b"2" * 32, b"3" * 16


@given(st.lists(messages, min_size=1, max_size=5), st.booleans())
def test_round_trip(batch, keyed):
    codec = Codec(Keyring((K1,)) if keyed else None)
    assert codec.decode(codec.encode(batch), stream=True) == tuple(batch)


def test_envelope_fits_the_reserve_the_core_budgets_for():
    codec = Codec(Keyring((K1,)))
    batch = [Ack(1)] * 200  # enough messages to need the 3-byte array header
    payload = sum(len(msgpack.packb(m.to_wire())) for m in batch)
    assert len(codec.encode(batch)) - payload <= ENVELOPE_RESERVE


def test_keyring_rotation_without_downtime():
    ping = [Ping(1, "b", ("10.0.0.1", 7946))]
    a, b = Codec(Keyring((K1,))), Codec(Keyring((K1,)))
    # Step 1: install the new key everywhere; the old one still signs.
    a.keyring, b.keyring = a.keyring.install(K2), b.keyring.install(K2)
    assert b.decode(a.encode(ping)) == tuple(ping)
    # Step 2: make it primary, one node at a time: both keys still verify.
    a.keyring = a.keyring.use(K2)
    assert b.decode(a.encode(ping)) == tuple(ping)
    assert a.decode(b.encode(ping)) == tuple(ping)
    b.keyring = b.keyring.use(K2)
    # Step 3: remove the old key; frames signed with it are now refused.
    a.keyring = a.keyring.remove(K1)
    assert a.decode(b.encode(ping)) == tuple(ping)
    old = Codec(Keyring((K1,)))
    assert a.decode(old.encode(ping)) == Dropped(DropReason.BAD_MAC, "MAC matches no key in the keyring")
    assert a.drops[DropReason.BAD_MAC] == 1


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


def _reason(codec: Codec, data: bytes, stream: bool = False) -> DropReason:
    result = codec.decode(data, stream=stream)
    assert isinstance(result, Dropped), result
    return result.reason


def test_every_kind_of_bad_frame_is_dropped_and_counted():
    keyed, open_ = Codec(Keyring((K1,))), Codec(None)
    good = keyed.encode([Ack(7)])
    tampered = bytearray(good)
    tampered[3] ^= 0x01
    assert _reason(keyed, bytes(tampered)) is DropReason.BAD_MAC
    assert _reason(keyed, open_.encode([Ack(7)])) is DropReason.BAD_MAC  # unsigned in a keyed cluster
    assert _reason(open_, good) is DropReason.BAD_MAC  # signed, but we hold no key
    assert _reason(keyed, bytes([VERSION + 1]) + good[1:]) is DropReason.UNKNOWN_VERSION
    assert _reason(keyed, b"\x01") is DropReason.MALFORMED
    assert _reason(open_, bytes([VERSION, 0x80]) + b"\x91\x92\x02\x07") is DropReason.MALFORMED  # unknown flag
    assert _reason(open_, bytes([VERSION, 0]) + b"\xc1") is DropReason.MALFORMED  # not msgpack
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[99, 1]])) is DropReason.MALFORMED  # unknown tag
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[2, -1]])) is DropReason.MALFORMED  # bad seq
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[2, True]])) is DropReason.MALFORMED  # bool is no int
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([])) is DropReason.MALFORMED  # no messages
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb([[2, 1]]) + b"\x00") is DropReason.MALFORMED
    assert _reason(open_, bytes([VERSION, 0]) + msgpack.packb({"a": 1})) is DropReason.MALFORMED
    assert _reason(keyed, bytes([VERSION, 1]) + b"\x00" * (MAC_SIZE - 1)) is DropReason.MALFORMED
    big = Codec(None, max_datagram=100)
    assert _reason(big, b"\x01" * 101) is DropReason.OVERSIZED
    assert big.decode(big.encode([Alive("x" * 60, 1, ("h", 1))]), stream=True)  # streams have their own limit
    assert keyed.drops[DropReason.BAD_MAC] == 2 and open_.drops[DropReason.MALFORMED] == 8


def test_one_bad_message_drops_its_whole_packet():
    codec = Codec(None)
    frame = bytes([VERSION, 0]) + msgpack.packb([[2, 1], [5, "n", 1, "h", 0, b""]])  # port 0
    result = codec.decode(frame)
    assert isinstance(result, Dropped) and "port" in result.detail


def test_a_delta_decoded_lately_is_skipped_when_it_comes_again_and_nothing_else_is():
    codec = Codec(Keyring((K1,)))
    delta = DeltaGossip("runs", ORMap("a#1").put("k", {"v": 1}, Timestamp(1, 0, "a#1")))
    ping = Ping(1, "b", ("10.0.0.2", 7946))
    assert codec.decode(codec.encode([delta, ping])) == (delta, ping)
    # The same delta again (from another member, relaying it): only the ping is new.
    assert codec.decode(codec.encode([ping, delta])) == (ping,)
    assert codec.repeats_skipped == 1
    # Its direct copy is another message; a frame that is dropped remembers nothing.
    direct = DeltaGossip("runs", delta.delta, relay=False)
    other = DeltaGossip("runs", ORMap("a#1").put("j", 2, Timestamp(2, 0, "a#1")))
    bad = codec.encode([other])[:-1] + b"\x00"
    assert isinstance(codec.decode(bad), Dropped)
    assert codec.decode(codec.encode([direct, other])) == (direct, other)


def test_oversized_frames_are_refused_on_the_way_out():
    codec = Codec(None, max_datagram=64)
    with pytest.raises(FrameTooLarge):
        codec.encode([Alive("x" * 100, 1, ("h", 1))])


@settings(max_examples=500)
@given(st.binary(max_size=2048), st.booleans(), st.booleans())
def test_random_bytes_never_raise(data, keyed, stream):
    codec = Codec(Keyring((K1,)) if keyed else None)
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
    codec = Codec(None)
    frame = bytearray(codec.encode(batch, stream=True))
    for position, value in flips:
        frame[position % len(frame)] = value
    mutated = bytes(frame[: len(frame) - cut] if cut < len(frame) else frame)
    result = codec.decode(mutated, stream=True)
    assert isinstance(result, (tuple, Dropped))
    if isinstance(result, tuple):
        assert codec.decode(codec.encode(result, stream=True), stream=True) == result
