"""The membership protocol's messages and their plain-data wire form.

Each message is a frozen value. ``to_wire()`` turns it into a list of
msgpack-native primitives, first element the message's tag; ``from_wire()``
rebuilds it from untrusted primitives and raises ``MalformedMessage`` (never
anything else) when a field has the wrong type, is out of range or too long.
The envelope around messages (version, authentication, compound packets,
size limits) belongs to the codec in ``peer.runtime.wire``; this module only knows
that the envelope costs at most ``ENVELOPE_RESERVE`` bytes, so the core can
fill a datagram up to its byte budget.

Messages that carry claims about members (``Alive``, ``Suspect``, ``Dead``,
``Left``) are what gossip disseminates; the others drive probing and the
full state exchange.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import msgpack

from membership.state import Address, Member, Status

# Bytes the wire envelope may add around a packet's messages: version and
# flags (2), key id (4), timestamp (8) and nonce (12), the compound array
# header (up to 3) and the tag (16): 45.
ENVELOPE_RESERVE = 48

NAME_MAX = 128
META_MAX = 512
MEMBERS_MAX = 100_000
UINT63 = (1 << 63) - 1
# The greatest incarnation a claim may carry (the core drops claims above
# it, and accusations at it, which their member could not refute; long
# before it, claims too far ahead of the wall clock: see membership.core). Far
# above any real one (a boot time in ms is about 2**41; refutations add
# one each) and well inside the codec's range, so a refutation always
# encodes; 2**53 is also the last integer a JSON reader that uses doubles
# (JavaScript, jq) reads exactly, and incarnations appear in /members.
MAX_INCARNATION = 1 << 53
# What a member name may hold: letters, digits and ``. _ : -`` (host
# names, ``host:port``), nothing that could forge a log line or a path.
NAME_CHARS = "A-Z a-z 0-9 . _ : -"
_VALID_NAME = re.compile(rf"[A-Za-z0-9._:-]{{1,{NAME_MAX}}}")
# An address's host is an IP literal (IPv6 with a zone: ``%``): names are
# resolved at the edge (seeds, --advertise), never from a peer's claim, as
# a name would make every send to it a blocking DNS lookup. A NUL or a
# non-ASCII host once reached ``sendto``, which raised, and the node exited.
_VALID_HOST = re.compile(r"[0-9A-Fa-f.:]{2,45}(%[A-Za-z0-9_.-]{1,64})?")
_STATUSES = tuple(Status)  # rank -> Status, cheaper than calling Status(rank)


def valid_name(name: str) -> bool:
    """Is ``name`` fit to be a member's name (and to appear in logs)?"""
    return _VALID_NAME.fullmatch(name) is not None


class MalformedMessage(ValueError):
    """A message's fields do not describe a valid message."""


def _name(value: Any, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= NAME_MAX:
        raise MalformedMessage(f"{what}: expected a name of 1..{NAME_MAX} characters")
    return sys.intern(value)  # names recur in every message: keep one copy


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= UINT63:
        raise MalformedMessage(f"{what}: expected an integer in 0..2**63-1")
    return value


def _uint64(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise MalformedMessage(f"{what}: expected an integer in 0..2**64-1")
    return value


def _addr(host: Any, port: Any, what: str) -> Address:
    if type(host) is not str or not _is_ip(host):
        raise MalformedMessage(f"{what}: expected an IP address")
    if type(port) is not int or not 0 < port < 65536:
        raise MalformedMessage(f"{what}: expected a port in 1..65535")
    return (sys.intern(host), port)


@functools.lru_cache(maxsize=4096)  # hosts recur in every table: parse each once
def _is_ip(host: str) -> bool:
    if _VALID_HOST.fullmatch(host) is None:  # cheap, and keeps odd strings out of the cache's parse
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _meta(value: Any, what: str) -> bytes:
    if type(value) is not bytes or len(value) > META_MAX:
        raise MalformedMessage(f"{what}: expected at most {META_MAX} bytes")
    return value


def _fields(fields: list[Any], count: int, what: str) -> list[Any]:
    if len(fields) != count:
        raise MalformedMessage(f"{what}: expected {count} fields, got {len(fields)}")
    return fields


@attrs.frozen(slots=True)
class Ping:
    """Are you there? ``target`` names who we expect, so a ping reaching a
    different process at a reused address is not taken for an answer."""

    TAG: ClassVar[int] = 1
    seq: int
    target: str
    reply_to: Address

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.seq, self.target, self.reply_to[0], self.reply_to[1]]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Ping:
        _fields(f, 5, "ping")
        return cls(_uint(f[1], "ping.seq"), _name(f[2], "ping.target"), _addr(f[3], f[4], "ping.reply_to"))


@attrs.frozen(slots=True)
class Ack:
    """The answer to a ping (or, relayed, to a ping request)."""

    TAG: ClassVar[int] = 2
    seq: int

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.seq]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Ack:
        _fields(f, 2, "ack")
        return cls(_uint(f[1], "ack.seq"))


@attrs.frozen(slots=True)
class Nack:
    """A relay's "I asked, the target did not answer me either" (Lifeguard):
    it tells the prober that its own network path works."""

    TAG: ClassVar[int] = 3
    seq: int

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.seq]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Nack:
        _fields(f, 2, "nack")
        return cls(_uint(f[1], "nack.seq"))


@attrs.frozen(slots=True)
class PingReq:
    """Please ping ``target`` for me and relay its ack (SWIM's ping-req)."""

    TAG: ClassVar[int] = 4
    seq: int
    target: str
    target_addr: Address
    reply_to: Address

    def to_wire(self) -> list[Any]:
        return [
            self.TAG, self.seq, self.target,
            self.target_addr[0], self.target_addr[1], self.reply_to[0], self.reply_to[1],
        ]

    @classmethod
    def from_wire(cls, f: list[Any]) -> PingReq:
        _fields(f, 7, "ping-req")
        return cls(
            _uint(f[1], "ping-req.seq"),
            _name(f[2], "ping-req.target"),
            _addr(f[3], f[4], "ping-req.target_addr"),
            _addr(f[5], f[6], "ping-req.reply_to"),
        )


@attrs.frozen(slots=True)
class Alive:
    """Claim: ``name`` is alive at ``incarnation``, reachable at ``addr``."""

    TAG: ClassVar[int] = 5
    STATUS: ClassVar[Status] = Status.ALIVE
    name: str
    incarnation: int
    addr: Address
    meta: bytes = b""

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.name, self.incarnation, self.addr[0], self.addr[1], self.meta]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Alive:
        _fields(f, 6, "alive")
        return cls(
            _name(f[1], "alive.name"),
            _uint(f[2], "alive.incarnation"),
            _addr(f[3], f[4], "alive.addr"),
            _meta(f[5], "alive.meta"),
        )


class _Accusation:
    """The wire form Suspect and Dead share: name, incarnation, accuser."""

    __slots__ = ()
    TAG: ClassVar[int]
    name: str
    incarnation: int
    accuser: str

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.name, self.incarnation, self.accuser]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Any:
        what = cls.__name__.lower()
        _fields(f, 4, what)
        make: Callable[[str, int, str], Any] = cls  # Suspect or Dead
        return make(_name(f[1], f"{what}.name"), _uint(f[2], f"{what}.incarnation"), _name(f[3], f"{what}.accuser"))


@attrs.frozen(slots=True)
class Suspect(_Accusation):
    """Claim: ``accuser`` suspects ``name`` (at ``incarnation``) has failed."""

    TAG: ClassVar[int] = 6
    STATUS: ClassVar[Status] = Status.SUSPECT
    name: str
    incarnation: int
    accuser: str


@attrs.frozen(slots=True)
class Dead(_Accusation):
    """Claim: ``accuser`` declared ``name`` (at ``incarnation``) failed."""

    TAG: ClassVar[int] = 7
    STATUS: ClassVar[Status] = Status.DEAD
    name: str
    incarnation: int
    accuser: str


@attrs.frozen(slots=True)
class Left:
    """Claim, made only by ``name`` itself: it left the cluster gracefully."""

    TAG: ClassVar[int] = 8
    STATUS: ClassVar[Status] = Status.LEFT
    name: str
    incarnation: int

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.name, self.incarnation]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Left:
        _fields(f, 3, "left")
        return cls(_name(f[1], "left.name"), _uint(f[2], "left.incarnation"))


@attrs.frozen(slots=True)
class PushPull:
    """A full state exchange: the sender's whole member table. A request
    (``is_reply`` false) is answered with the receiver's table."""

    TAG: ClassVar[int] = 9
    sender: str
    is_reply: bool
    reply_to: Address
    members: tuple[Member, ...]

    def to_wire(self) -> list[Any]:
        table = [[m.name, m.addr[0], m.addr[1], m.incarnation, int(m.status), m.meta] for m in self.members]
        return [self.TAG, self.sender, self.is_reply, self.reply_to[0], self.reply_to[1], table]

    @classmethod
    def from_wire(cls, f: list[Any]) -> PushPull:
        _fields(f, 6, "push-pull")
        sender = _name(f[1], "push-pull.sender")
        if type(f[2]) is not bool:
            raise MalformedMessage("push-pull.is_reply: expected a boolean")
        table = f[5]
        if type(table) is not list or len(table) > MEMBERS_MAX:
            raise MalformedMessage(f"push-pull.members: expected a list of at most {MEMBERS_MAX}")
        members = []
        statuses, intern = _STATUSES, sys.intern
        for row in table:
            # Inlined checks: a table may hold thousands of rows.
            if type(row) is not list or len(row) != 6:
                raise MalformedMessage("push-pull.members: expected rows of 6 fields")
            name, host, port, incarnation, status, meta = row
            if (
                type(name) is not str
                or not 0 < len(name) <= NAME_MAX
                or type(host) is not str
                or not _is_ip(host)
                or type(port) is not int
                or not 0 < port < 65536
                or type(incarnation) is not int
                or not 0 <= incarnation <= UINT63
                or type(status) is not int
                or not 0 <= status <= 3
                or type(meta) is not bytes
                or len(meta) > META_MAX
            ):
                raise MalformedMessage(f"push-pull.members: invalid row {row!r:.200}")
            members.append(Member(intern(name), (intern(host), port), incarnation, statuses[status], meta))
        return cls(sender, f[2], _addr(f[3], f[4], "push-pull.reply_to"), tuple(members))


@attrs.frozen(slots=True)
class StateDigest:
    """The checksum of the sender's live view: the cheap first step of the
    periodic anti-entropy. A receiver whose view differs starts a full
    ``PushPull`` with the sender; an equal view costs nothing more."""

    TAG: ClassVar[int] = 10
    sender: str
    reply_to: Address
    checksum: int

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.sender, self.reply_to[0], self.reply_to[1], self.checksum]

    @classmethod
    def from_wire(cls, f: list[Any]) -> StateDigest:
        _fields(f, 5, "digest")
        return cls(_name(f[1], "digest.sender"), _addr(f[2], f[3], "digest.reply_to"), _uint64(f[4], "digest.checksum"))


Claim = Alive | Suspect | Dead | Left
Message = Ping | Ack | Nack | PingReq | Alive | Suspect | Dead | Left | PushPull | StateDigest

MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TAG: cls for cls in (Ping, Ack, Nack, PingReq, Alive, Suspect, Dead, Left, PushPull, StateDigest)
}


def claim_for(member: Member, accuser: str) -> Claim:
    """The claim that states ``member`` as it is (``accuser`` signs a
    suspicion or a death)."""
    if member.status is Status.ALIVE:
        return Alive(member.name, member.incarnation, member.addr, member.meta)
    if member.status is Status.SUSPECT:
        return Suspect(member.name, member.incarnation, accuser)
    if member.status is Status.DEAD:
        return Dead(member.name, member.incarnation, accuser)
    return Left(member.name, member.incarnation)


def from_wire(obj: Any) -> Message:
    """Rebuild one message from decoded primitives, or raise MalformedMessage."""
    if type(obj) is not list or not obj:
        raise MalformedMessage("expected a non-empty list")
    cls = MESSAGE_TYPES.get(obj[0]) if type(obj[0]) is int else None
    if cls is None:
        raise MalformedMessage(f"unknown message tag {obj[0]!r}")
    return cls.from_wire(obj)


def wire_size(message: Message) -> int:
    """Bytes ``message`` takes inside a packet (before the envelope)."""
    return len(msgpack.packb(message.to_wire()))
