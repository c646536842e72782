"""SWIM membership with Lifeguard: the sans-IO protocol core.

Theory of operation
-------------------
``Membership`` is one node's view of the cluster. It does no I/O and reads no
clock: a driver (the trio runtime, or the simulator) feeds it decoded
messages with ``receive(now, src, message)``, calls ``tick(now)`` at
``next_deadline()``, and carries out what ``take_effects()`` returns:
``Send`` (a datagram, or a message over the reliable channel) and ``Event``
(a membership change). Randomness comes from the injected ``random.Random``.

What a node believes about each member is the greatest claim it has heard
(see ``membership.state``); every accepted claim is queued for gossip
(``membership.broadcast``) and rides on the packets the node sends anyway.

Failure detection runs in rounds of ``probe_interval`` (stretched by the
local health multiplier, ``membership.awareness``). Each round pings the
next member of a shuffled round-robin list. Without an ack within
``probe_timeout``, ``indirect_checks`` members are asked to ping it for us
(they answer nack if they get nothing either), and it is pinged once more
over the reliable channel. Without an ack by the end of the round it becomes
suspect; unless it refutes in time, the Lifeguard suspicion timer
(``membership.suspicion``) declares it dead. A ping to a suspect carries the
suspicion, so the member learns of it at once and can refute (the "buddy
system").

Anti-entropy repairs whatever gossip missed: every ``push_pull_period``
a node sends one random member the checksum of its live view
(``StateDigest``); only if that member's view differs do the two exchange
their full member tables (``PushPull``), so a converged cluster pays a
datagram, not two tables. Joining is a full exchange with the seeds;
healing is one with a seed, dead or left member every
``reconnect_interval``, so split halves find each other again. A node
restarted under the same name must start with a higher incarnation than its
previous life used (the runtime passes its boot time in milliseconds), so
its new self outranks every claim about the old one.

Gossip spread while views are apart (a mass join, a healing split) leaves
holes: claims go only to members the sender knows. Two repairs close them
in seconds rather than at the next periodic exchange: after a join, or when
a member we had given up on returns, the next anti-entropy round comes
within a few probe intervals; and a node that hears a claim about a
member's older incarnation gossips the newer one again.

Claims from peers are checked before they count (``_admissible``), since
a key holder may be broken, older or hostile: a member name must be of
the safe charset (``valid_name``), and each source host introduces at
most ``learn_burst`` unknown members, then ``learn_rate`` a second
(``_may_learn``). Incarnations are bounded by time, so that no claim can
push a member anywhere it cannot come back from. An incarnation is a boot
time in ms plus one per refutation, and a member refutes far less often
than 1,000 times a second, so no honest incarnation runs ahead of the wall
clock. The core reads no clock: it estimates the wall clock in ms as its
own boot incarnation plus the ms of ``now`` elapsed since it was built
(``wall_estimate_ms``). An accusation (suspect, dead, left) may carry at
most that estimate plus ``INCARNATION_SLACK_MS``, an alive claim twice
the slack ahead, so the refutation of any accusation a node admitted is
admitted too, also by nodes whose clocks are up to the slack behind. A
claim at or below the incarnation we hold for its member raises nothing
and always counts, and so does an alive claim one above it (the step a
refutation takes): every member can always be accused, and can always
refute. One claim pushes a member at most twice the slack ahead of the
clock (a flood of accusations steps it by one a datagram, as SWIM lets any
key holder); a member that then crashes is detected as usual, and a
restarted one refutes its way over its old self. ``MAX_INCARNATION`` stays an
absolute cap, well inside the codec's range. The clock assumption: hosts'
wall clocks agree within the slack (a day; keyed clusters already refuse
frames more than ``REPLAY_WINDOW``, 120 s, off). A node whose clock was off
by more at boot refuses (and counts) its peers' honest claims until it is
restarted with a correct clock. Every refusal is counted in
``MembershipStats``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs

from membership.awareness import Awareness
from membership.broadcast import BroadcastQueue
from membership.config import MembershipConfig
from membership.effects import Effect, Event, Send
from membership.messages import (
    ENVELOPE_RESERVE,
    MAX_INCARNATION,
    META_MAX,
    NAME_CHARS,
    NAME_MAX,
    Ack,
    Alive,
    Claim,
    Dead,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    StateDigest,
    Suspect,
    claim_for,
    valid_name,
    wire_size,
)
from membership.state import (
    CHECKSUM_MODULUS,
    Address,
    Member,
    Status,
    member_digest,
    supersedes,
    transition_events,
)
from membership.suspicion import Suspicion
from membership.timers import Timers

# A relay answers nack when the target stays silent this long (as a
# fraction of probe_timeout), early enough to reach the prober in its round.
NACK_FRACTION = 0.8

# Learning buckets kept before full ones (equal to none) are forgotten.
LEARN_SOURCES_MAX = 1024

# How far ahead of our wall-clock estimate an accusation's incarnation may
# be (alive claims: twice as far, so refutations always pass). It must
# cover clock skew between hosts (NTP keeps them within ms; keyed clusters
# refuse frames more than 120 s off anyway) and the drift of our estimate
# over an uptime (a monotonic clock 100 ppm off: 9 s a day, an hour a
# year); refutations do not eat it (a member refutes a few times a second
# at most, the clock adds 1,000 ms a second). Small enough that a pushed
# member is back within the clock's reach after two days at most.
INCARNATION_SLACK_MS = 86_400_000


class Piggyback(Protocol):
    """A layer above whose small messages ride on membership packets
    (memberlist's Delegate.GetBroadcasts): the core tops every datagram up
    with them once its own claims are in."""

    def has_gossip(self) -> bool: ...

    def take_gossip(self, budget: int, limit: int, target: Address) -> list[Any]:
        """Messages that fit in ``budget`` bytes for a packet to ``target``
        (a live member); ``limit``: transmissions each may have in all (the
        core's retransmit limit)."""
        ...


@attrs.define
class MembershipStats:
    """Counters an operator (or a test) can read; never reset."""

    probes: int = 0
    probes_failed: int = 0
    ping_requests: int = 0  # indirect probes we asked others to make
    relayed_pings: int = 0  # indirect probes we made for others
    suspicions: int = 0  # members we suspected ourselves
    declared_dead: int = 0  # suspicions of ours that timed out
    refutations: int = 0
    push_pulls: int = 0  # full state exchanges we started on a differing digest
    digests_in_sync: int = 0  # digests that matched our view: nothing to exchange
    reconnects: int = 0
    rejoins: int = 0  # state sent to a member that went lately (see rejoin_window)
    corrections: int = 0  # newer claims re-gossiped because someone spread older ones
    misdirected_pings: int = 0  # pings naming someone else: a stale address
    name_conflicts: int = 0  # another process claims our name
    reaped: int = 0
    invalid_names: int = 0  # claims or exchanges naming a member (or accuser) outside the safe charset
    incarnations_refused: int = 0  # claims further ahead of the clock than the slack allows (or above MAX_INCARNATION)
    members_rate_limited: int = 0  # unknown members not learned: their source's learning budget was spent


@attrs.define
class _Probe:
    seq: int
    target: str
    incarnation: int
    expected_nacks: int = 0
    nacks: int = 0


@attrs.define
class _Bucket:
    """A source host's budget for introducing members (a token bucket)."""

    tokens: float
    stamp: float

    def refill(self, now: float, rate: float, burst: int) -> float:
        if now > self.stamp:
            self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
            self.stamp = now
        return self.tokens


@attrs.define
class _Relay:
    requester: Address
    origin_seq: int
    nacked: bool = False


class Membership:
    def __init__(
        self,
        name: str,
        addr: Address,
        config: MembershipConfig,
        *,
        rng: random.Random,
        now: float,
        incarnation: int = 1,
        meta: bytes = b"",
        piggyback: Piggyback | None = None,
    ) -> None:
        _check_meta(meta)
        if not valid_name(name):
            raise ValueError(f"member name {name!r:.160}: expected 1..{NAME_MAX} of {NAME_CHARS}")
        if not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation {incarnation} outside 0..{MAX_INCARNATION}")
        self.name = name
        self.addr = addr
        self.config = config
        self.stats = MembershipStats()
        # Bumped on every change to the member table: a driver (or a layer
        # above) compares it to know whether the view changed at all.
        self.version = 0
        self._rng = rng
        self._piggyback = piggyback
        # Our wall-clock reference (see wall_estimate_ms): our boot
        # incarnation is the wall clock in ms at ``now``.
        self._start_incarnation = incarnation
        self._start_now = now
        me = Member(name, addr, incarnation, Status.ALIVE, meta)
        self._members: dict[str, Member] = {name: me}
        self._since: dict[str, float] = {name: now}  # local time of the last status change
        self._checksum = member_digest(name, Status.ALIVE, incarnation)
        # Live members other than ourselves, indexable for O(1) sampling.
        self._live: list[str] = []
        self._live_index: dict[str, int] = {}
        self._gone: dict[str, None] = {}  # dead and left members, in the order they went
        self._went: dict[str, float] = {}  # members we saw go lately -> when (see _rejoin_round)
        self._live_addrs: dict[Address, int] = {}  # address -> live members using it
        self._probe_order: list[str] = []
        self._probe_next = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._broadcasts: BroadcastQueue[Claim] = BroadcastQueue()
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._retransmit_limit = config.retransmit_limit(1)
        self._payload_budget = config.packet_budget - ENVELOPE_RESERVE
        self._seq = 0
        self._seeds: tuple[Address, ...] = ()
        self._join_backoff = config.join_retry_interval
        self._leaving = False
        self._leave_timed_out = False
        self._effects: list[Effect] = []
        self._learning: dict[str, _Bucket] = {}  # source host -> its budget for new members
        self._src: Address | None = None  # the source of the message being handled
        self._timers: Timers[tuple[Any, ...]] = Timers()
        self._on_timer: dict[str, Callable[..., None]] = {
            "probe": self._probe_round,
            "probe_direct": self._probe_direct_timeout,
            "relay": self._relay_timeout,
            "suspicion": self._suspicion_timeout,
            "gossip": self._gossip_round,
            "push_pull": self._push_pull_round,
            "join_retry": self._join_retry,
            "reconnect": self._reconnect_round,
            "rejoin": self._rejoin_round,
            "leave_timeout": self._leave_timeout,
        }
        self._on_message: dict[type, Callable[[float, Any, bool], None]] = {
            Ping: self._on_ping,
            Ack: self._on_ack,
            Nack: self._on_nack,
            PingReq: self._on_ping_req,
            PushPull: self._on_push_pull,
            StateDigest: self._on_digest,
            Alive: self._on_claim,
            Suspect: self._on_claim,
            Dead: self._on_claim,
            Left: self._on_claim,
        }
        # Stagger the periodic work so that nodes started together do not
        # probe and gossip in lockstep.
        self._timers.schedule(("probe",), now + rng.uniform(0, config.probe_interval))
        # A gossip round goes as soon as there is news, then at most one
        # per gossip_interval while news keeps coming (see _arm_gossip).
        self._last_gossip_round = -math.inf
        self._timers.schedule(("push_pull",), now + rng.uniform(0.5, 1.0) * config.push_pull_interval)
        self._timers.schedule(("reconnect",), now + rng.uniform(0.5, 1.5) * config.reconnect_interval)
        # Announce ourselves as soon as we know anyone: news for everybody,
        # and we need not count on a seed to spread it.
        self._broadcast(now, self._alive_claim())

    # ------------------------------------------------------------------
    # The driver's interface.

    def receive(self, now: float, src: Address, message: Message, reliable: bool = False) -> None:
        """Handle one decoded message from ``src`` (``reliable``: it came over
        the reliable channel, and a reply should go back the same way)."""
        handler = self._on_message.get(type(message))
        if handler is None:
            raise TypeError(f"not a membership message: {message!r}")
        self._src = src
        try:
            handler(now, message, reliable)
        finally:
            self._src = None

    def tick(self, now: float) -> None:
        """Fire every timer that is due at ``now``."""
        while due := self._timers.due(now):
            for key in due:
                self._on_timer[key[0]](now, *key[1:])

    def next_deadline(self) -> float:
        return self._timers.next_deadline()

    def take_effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def join(self, now: float, seeds: Iterable[Address]) -> None:
        """Exchange state with every seed, retrying with backoff until some
        member answers; seeds are also re-contacted later to heal splits."""
        self._seeds = tuple(dict.fromkeys(seed for seed in seeds if seed != self.addr))
        if not self._seeds or self._leaving:
            return
        for seed in self._seeds:
            self._send_state(seed)
        self._join_backoff = self.config.join_retry_interval
        self._timers.schedule(("join_retry",), now + self._join_backoff)

    def leave(self, now: float) -> None:
        """Start a graceful leave: gossip our ``Left`` claim and stop probing.
        Done when ``leave_complete`` is true; the driver then stops."""
        if self._leaving:
            return
        self._leaving = True
        me = self._members[self.name]
        self._set_member(now, me, attrs.evolve(me, status=Status.LEFT))
        self._membership_size_changed()
        self._broadcast(now, Left(self.name, me.incarnation))
        self._probe = None
        for key in (("probe",), ("push_pull",), ("reconnect",), ("rejoin",), ("join_retry",)):
            self._timers.cancel(key)
        self._timers.schedule(("leave_timeout",), now + self.config.leave_timeout)
        self._gossip_round(now)  # spread it now rather than at the next gossip tick

    def set_meta(self, now: float, meta: bytes) -> None:
        """Change our metadata and announce it with a new incarnation."""
        _check_meta(meta)
        me = self._members[self.name]
        if meta == me.meta or self._leaving:
            return
        # At the bound (only claims forged near it get a member there) the
        # change stays local: no incarnation is left to announce it with.
        incarnation = min(me.incarnation + 1, MAX_INCARNATION)
        self._set_member(now, me, attrs.evolve(me, incarnation=incarnation, meta=meta))
        self._broadcast(now, self._alive_claim())

    # ------------------------------------------------------------------
    # Reading the view.

    @property
    def incarnation(self) -> int:
        return self._members[self.name].incarnation

    def wall_estimate_ms(self, now: float) -> int:
        """The wall clock in ms at ``now``, as far as we know it: our boot
        incarnation (the wall clock at construction) plus the time since."""
        return self._start_incarnation + math.floor((now - self._start_now) * 1000)

    def incarnation_limit(self, now: float, *, alive: bool = False) -> int:
        """The greatest incarnation a peer's accusation (``alive``: alive
        claim) may raise a member to at ``now``; see the module docstring."""
        slack = 2 * INCARNATION_SLACK_MS if alive else INCARNATION_SLACK_MS
        return min(self.wall_estimate_ms(now) + slack, MAX_INCARNATION if alive else MAX_INCARNATION - 1)

    @property
    def checksum(self) -> int:
        """Order-independent hash of the live view (name, status and
        incarnation of every alive or suspect member, ourselves included):
        equal checksums mean converged views."""
        return self._checksum

    @property
    def awareness(self) -> int:
        return self._awareness.score

    @property
    def leaving(self) -> bool:
        return self._leaving

    @property
    def leave_complete(self) -> bool:
        if not self._leaving:
            return False
        return self._leave_timed_out or not self._live or not self._broadcasts.pending(self.name)

    def member(self, name: str) -> Member | None:
        return self._members.get(name)

    def members(self) -> list[Member]:
        """Every member we know of, in any status, ourselves included."""
        return list(self._members.values())

    def live_members(self) -> list[Member]:
        """Alive and suspect members, ourselves included unless leaving."""
        return [m for m in self._members.values() if m.status.is_live]

    @property
    def live_count(self) -> int:
        """Live members including ourselves (n in the protocol's formulas)."""
        return len(self._live) + (0 if self._leaving else 1)

    # ------------------------------------------------------------------
    # Messages.

    def _on_ping(self, now: float, ping: Ping, reliable: bool) -> None:
        if ping.target != self.name:
            self.stats.misdirected_pings += 1
            return
        self._send(ping.reply_to, [Ack(ping.seq)], reliable)

    def _on_ack(self, now: float, ack: Ack, reliable: bool) -> None:
        probe = self._probe
        if probe is not None and ack.seq == probe.seq:
            self._probe = None
            self._timers.cancel(("probe_direct", probe.seq))
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            self._timers.cancel(("relay", ack.seq))
            self._send(relay.requester, [Ack(relay.origin_seq)])

    def _on_nack(self, now: float, nack: Nack, reliable: bool) -> None:
        probe = self._probe
        if probe is not None and nack.seq == probe.seq:
            probe.nacks += 1

    def _on_ping_req(self, now: float, request: PingReq, reliable: bool) -> None:
        seq = self._next_seq()
        self._relays[seq] = _Relay(request.reply_to, request.seq)
        self.stats.relayed_pings += 1
        self._send(request.target_addr, [Ping(seq, request.target, self.addr)])
        self._timers.schedule(("relay", seq), now + NACK_FRACTION * self.config.probe_timeout)

    def _on_push_pull(self, now: float, exchange: PushPull, reliable: bool) -> None:
        if not valid_name(exchange.sender):
            self.stats.invalid_names += 1
            return
        self._merge_state(now, exchange.sender, exchange.members)
        if not exchange.is_reply:
            self._send_state(exchange.reply_to, is_reply=True)

    def _on_digest(self, now: float, digest: StateDigest, reliable: bool) -> None:
        if digest.checksum == self._checksum:
            self.stats.digests_in_sync += 1
            return
        self.stats.push_pulls += 1
        self._send_state(digest.reply_to)

    def _on_claim(self, now: float, claim: Claim, reliable: bool) -> None:
        if self._admissible(now, claim) and self._may_learn(now, claim):
            self._apply(now, claim)

    def _admissible(self, now: float, claim: Claim) -> bool:
        """May a peer's claim count at all? Names must be safe to keep and
        log; an incarnation that raises its member's must lie within the
        time bound (``incarnation_limit``), so that no claim can push a
        member where it could not be accused or could not refute."""
        if claim.name not in self._members and not valid_name(claim.name):
            self.stats.invalid_names += 1
            return False
        if isinstance(claim, (Suspect, Dead)) and not valid_name(claim.accuser):
            self.stats.invalid_names += 1
            return False
        alive = isinstance(claim, Alive)
        limit = self.incarnation_limit(now, alive=alive)
        current = self._members.get(claim.name)
        if current is not None:
            if claim.name == self.name and not alive:
                # About ourselves: we refute whatever a peer whose clock is
                # up to the slack ahead of ours admitted, within the alive bound.
                limit = max(limit, self.incarnation_limit(now, alive=True) - 1)
            # At or below what we hold raises nothing: every member can be
            # accused; one above is the step of a refutation: every member
            # can refute. Neither lets one claim jump.
            limit = max(limit, current.incarnation + 1 if alive else current.incarnation)
        # Only an alive claim may reach the codec's bound: an accusation
        # there could not be refuted.
        if claim.incarnation > min(limit, MAX_INCARNATION if alive else MAX_INCARNATION - 1):
            self.stats.incarnations_refused += 1
            return False
        return True

    def _may_learn(self, now: float, claim: Claim) -> bool:
        """Charge a claim that introduces a member to its source's budget;
        False (counted) when the budget is spent."""
        src = self._src
        if not isinstance(claim, Alive) or claim.name in self._members or src is None:
            return True
        config = self.config
        bucket = self._learning.get(src[0])
        if bucket is None:
            if len(self._learning) >= LEARN_SOURCES_MAX:
                self._forget_full_buckets(now)
            bucket = self._learning[src[0]] = _Bucket(float(config.learn_burst), now)
        if bucket.refill(now, config.learn_rate, config.learn_burst) < 1.0:
            self.stats.members_rate_limited += 1
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full_buckets(self, now: float) -> None:
        config = self.config
        for host, bucket in list(self._learning.items()):
            if bucket.refill(now, config.learn_rate, config.learn_burst) >= config.learn_burst:
                del self._learning[host]
        if len(self._learning) >= LEARN_SOURCES_MAX:
            # Every source is busy: the oldest go, so the table stays bounded.
            for host in list(self._learning)[: LEARN_SOURCES_MAX // 2]:
                del self._learning[host]

    # ------------------------------------------------------------------
    # Claims: the only code that changes what we believe about a member.

    def _apply(self, now: float, claim: Claim, source: str | None = None) -> None:
        """Take ``claim`` into our view if it is news, and pass it on.
        ``source`` overrides whom the resulting events name as their cause."""
        name = claim.name
        if name == self.name:
            self._about_self(now, claim)
            return
        status = claim.STATUS
        current = self._members.get(name)
        if current is None:
            if status is not Status.ALIVE:
                return  # only an alive claim carries what we need to know a stranger
        elif not supersedes(claim.incarnation, status, current):
            if claim.incarnation < current.incarnation:
                self._correct(now, current)
            elif current.status is Status.LEFT and status is not Status.LEFT:
                # Someone missed this member's graceful leave and suspects it
                # (or still vouches for it): tell them again, before their
                # suspicion can turn a leave into a reported failure.
                self._correct(now, current)
            elif isinstance(claim, Suspect) and current.status is Status.SUSPECT:
                self._confirm_suspicion(now, claim)
            return
        if isinstance(claim, Alive):
            new = Member(name, claim.addr, claim.incarnation, Status.ALIVE, claim.meta)
        else:
            assert current is not None
            new = Member(name, current.addr, claim.incarnation, status, current.meta)
        if source is None and isinstance(claim, (Suspect, Dead)):
            source = claim.accuser
        self._set_member(now, current, new, source)
        if isinstance(claim, Suspect):
            self._start_suspicion(now, new, claim.accuser)
        self._broadcast(now, claim)

    def _correct(self, now: float, current: Member) -> None:
        """Someone still spreads news about ``current``'s previous life (it
        missed a refutation or a restart, typically while views were split),
        or missed its leave: spread what we know again, unless we already are."""
        if not self._broadcasts.pending(current.name):
            self.stats.corrections += 1
            self._broadcast(now, claim_for(current, self.name))

    def _about_self(self, now: float, claim: Claim) -> None:
        me = self._members[self.name]
        if self._leaving:
            return
        if claim.incarnation < me.incarnation:
            self._correct(now, me)
            return
        if isinstance(claim, Alive):
            if claim.incarnation == me.incarnation and claim.addr == me.addr and claim.meta == me.meta:
                return  # our own claim, echoed back
            if claim.addr != me.addr:
                self.stats.name_conflicts += 1
            if claim.incarnation >= MAX_INCARNATION:
                # Someone forged our alive claim at the bound: nothing
                # outranks it, so it stands (counted); see _admissible.
                self.stats.incarnations_refused += 1
                return
        else:
            self._awareness.apply_delta(1)  # being suspected hints that we are the slow one
        self.stats.refutations += 1
        refuted = attrs.evolve(me, incarnation=max(claim.incarnation, me.incarnation) + 1)
        self._set_member(now, me, refuted)
        self._broadcast(now, self._alive_claim())

    def _merge_state(self, now: float, sender: str, table: Sequence[Member]) -> None:
        # Everything new is gossiped on, even what a joiner learns from its
        # seed's table: during a mass join that redundancy is what fills the
        # holes left by claims spread while views were still small
        # (measured: ~1 s to converge with it, ~3.5 s without).
        members = self._members
        # A node that knows no live member yet (joining, restarted) takes a
        # full table whole, whatever its size: it is how a node learns its
        # cluster. Any other table is charged to its sender's budget.
        charged = bool(self._live)
        for row in table:
            current = members.get(row.name)
            if current is not None and (row.incarnation, row.status) <= (current.incarnation, current.status):
                continue  # not news (and an echo is no independent confirmation)
            if row.status is Status.ALIVE or row.status is Status.LEFT:
                self._apply_row(now, claim_for(row, sender), charged)
            else:
                # A second-hand death becomes a suspicion on the sender's
                # word, so the member gets its chance to refute (after a
                # partition, this is how each side learns the other lives).
                if row.status is Status.SUSPECT and row.name not in self._members:
                    if not self._apply_row(now, claim_for(attrs.evolve(row, status=Status.ALIVE), sender), charged):
                        continue
                self._apply_row(now, Suspect(row.name, row.incarnation, sender), charged)

    def _apply_row(self, now: float, claim: Claim, charged: bool) -> bool:
        """A full table's row, as a claim; False if refused."""
        if not self._admissible(now, claim) or (charged and not self._may_learn(now, claim)):
            return False
        self._apply(now, claim)
        return True

    def _set_member(self, now: float, old: Member | None, new: Member, source: str | None = None) -> None:
        """Replace ``old`` by ``new`` and keep every derived structure in step."""
        name = new.name
        self._members[name] = new
        self.version += 1
        if old is None or old.status != new.status:
            self._since[name] = now
        old_live = old if old is not None and old.status.is_live else None
        if old_live is not None:
            self._checksum -= member_digest(name, old_live.status, old_live.incarnation)
        if new.status.is_live:
            self._checksum += member_digest(name, new.status, new.incarnation)
        self._checksum %= CHECKSUM_MODULUS
        if name == self.name:
            return  # we are in no index of our own, and raise no events about ourselves
        self._reindex(now, old, old_live, new)
        if new.status is not Status.SUSPECT and self._suspicions.pop(name, None) is not None:
            self._timers.cancel(("suspicion", name))
        for kind in transition_events(old, new):
            self._effects.append(Event(kind, new, source))

    def _reindex(self, now: float, old: Member | None, old_live: Member | None, new: Member) -> None:
        """Update the live list, the probe order, the dead-and-left list and
        the live address counts for a member's change (``old_live``: ``old``
        if it was live)."""
        name = new.name
        was_live = old_live is not None
        if old_live is not None:
            self._count_live_addr(old_live.addr, -1)
        if new.status.is_live:
            self._count_live_addr(new.addr, +1)
            self._gone.pop(name, None)
        elif old is None or old.status != new.status:
            self._gone.pop(name, None)
            self._gone[name] = None  # (re)appended, so the dict stays ordered by _since
        if new.status.is_live and not was_live:
            self._live_index[name] = len(self._live)
            self._live.append(name)
            if len(self._live) == 1:
                self._arm_gossip(now)  # news held back while we knew nobody
            if len(self._live) == 1 or old is not None:
                # We just joined, or a member we had given up on is back (a
                # restart, a healed split): gossip spread while views were
                # apart leaves holes, so compare views soon to repair them.
                self._sync_soon(now)
            # Probe newcomers within the current round.
            position = self._rng.randint(self._probe_next, len(self._probe_order))
            self._probe_order.insert(position, name)
            self._membership_size_changed()
        elif was_live and not new.status.is_live:
            self._remove_live(name)
            self._membership_size_changed()
            self._went[name] = now
            if not self._leaving and ("rejoin",) not in self._timers:
                self._timers.schedule(("rejoin",), now + self._rng.uniform(0.5, 1.5) * self.config.rejoin_interval)

    def _count_live_addr(self, addr: Address, delta: int) -> None:
        count = self._live_addrs.get(addr, 0) + delta
        if count:
            self._live_addrs[addr] = count
        else:
            del self._live_addrs[addr]

    def _remove_live(self, name: str) -> None:
        index = self._live_index.pop(name)
        last = self._live.pop()
        if last != name:
            self._live[index] = last
            self._live_index[last] = index

    def _membership_size_changed(self) -> None:
        self._retransmit_limit = self.config.retransmit_limit(self.live_count)

    # ------------------------------------------------------------------
    # Suspicion (Lifeguard).

    def _start_suspicion(self, now: float, member: Member, accuser: str) -> None:
        suspicion = Suspicion.for_cluster(self.config, self.live_count, member.incarnation, accuser, now)
        self._suspicions[member.name] = suspicion
        self._timers.schedule(("suspicion", member.name), suspicion.deadline())

    def _confirm_suspicion(self, now: float, claim: Suspect) -> None:
        suspicion = self._suspicions.get(claim.name)
        if suspicion is None or suspicion.incarnation != claim.incarnation:
            return
        if suspicion.confirm(claim.accuser):
            self._timers.schedule(("suspicion", claim.name), suspicion.deadline())
            self._broadcast(now, claim)

    def _suspicion_timeout(self, now: float, name: str) -> None:
        suspicion = self._suspicions.pop(name, None)
        member = self._members.get(name)
        if suspicion is None or member is None or member.status is not Status.SUSPECT:
            return
        self.stats.declared_dead += 1
        # The event names who raised the suspicion; the claim, who ended it.
        self._apply(now, Dead(name, member.incarnation, self.name), source=suspicion.accuser)

    # ------------------------------------------------------------------
    # Probing (SWIM).

    def _probe_round(self, now: float) -> None:
        if self._probe is not None:
            self._probe_failed(now, self._probe)
        self._timers.schedule(("probe",), now + self._awareness.scale(self.config.probe_interval))
        if self._leaving:
            return
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(seq, target.name, target.incarnation)
        self.stats.probes += 1
        messages: list[Message] = [Ping(seq, target.name, self.addr)]
        if target.status is Status.SUSPECT:
            messages.append(Suspect(target.name, target.incarnation, self.name))
        self._send(target.addr, messages)
        self._timers.schedule(("probe_direct", seq), now + self.config.probe_timeout)

    def _next_probe_target(self) -> Member | None:
        for _ in range(len(self._probe_order) + 1):
            if self._probe_next >= len(self._probe_order):
                self._probe_order = list(self._live)
                self._rng.shuffle(self._probe_order)
                self._probe_next = 0
                if not self._probe_order:
                    return None
            name = self._probe_order[self._probe_next]
            self._probe_next += 1
            member = self._members.get(name)
            if member is not None and member.status.is_live and name != self.name:
                return member
        return None

    def _probe_direct_timeout(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq:
            return
        target = self._members.get(probe.target)
        if target is None or not target.status.is_live:
            self._probe = None
            return
        relays = self._sample_live(
            self.config.indirect_checks,
            lambda m: m.status is Status.ALIVE and m.name != probe.target,
        )
        for relay in relays:
            self._send(relay.addr, [PingReq(seq, target.name, target.addr, self.addr)])
        probe.expected_nacks = len(relays)
        self.stats.ping_requests += len(relays)
        if self.config.reliable_fallback_ping:
            self._send(target.addr, [Ping(seq, target.name, self.addr)], reliable=True)

    def _probe_failed(self, now: float, probe: _Probe) -> None:
        self._probe = None
        self.stats.probes_failed += 1
        if probe.expected_nacks:
            # Relays that did not even nack suggest our own network is at fault.
            self._awareness.apply_delta(probe.expected_nacks - probe.nacks)
        else:
            self._awareness.apply_delta(1)
        member = self._members.get(probe.target)
        if member is not None and member.status.is_live:
            # Suspects an alive member, or confirms the suspicion of a suspect one.
            self.stats.suspicions += member.status is Status.ALIVE
            self._apply(now, Suspect(probe.target, probe.incarnation, self.name))

    def _relay_timeout(self, now: float, seq: int) -> None:
        relay = self._relays.get(seq)
        if relay is None:
            return
        if relay.nacked:
            del self._relays[seq]
            return
        relay.nacked = True
        self._send(relay.requester, [Nack(relay.origin_seq)])
        # Keep relaying a late ack until the prober's round is surely over.
        self._timers.schedule(("relay", seq), now + self.config.probe_interval)

    # ------------------------------------------------------------------
    # Dissemination, state exchange, joining and healing.

    def _gossip_round(self, now: float) -> None:
        self._last_gossip_round = now
        for target in self._gossip_targets(now):
            messages = self._take_gossip(self._payload_budget, target.addr, piggyback=target.status.is_live)
            if not messages:
                continue  # a dead member, and no claim to tell it; the next target may be live
            self._effects.append(Send(target.addr, tuple(messages)))
        self._arm_gossip(now)

    def _take_gossip(self, budget: int, target: Address, *, piggyback: bool = True) -> list[Any]:
        """Queued claims first, then the layer above's messages, as many as
        fit; those only for a live member (a dead one is told claims, so it
        may refute, but the layer above's news would be lost on it and
        spend a transmission its live members needed)."""
        messages: list[Any] = self._broadcasts.take(budget, self._retransmit_limit) if self._broadcasts else []
        above = self._piggyback if piggyback else None
        if above is not None and above.has_gossip():
            room = budget - sum(wire_size(m) for m in messages)
            messages.extend(above.take_gossip(room, self._retransmit_limit, target))
        return messages

    def gossip_soon(self, now: float) -> None:
        """The layer above queued something to piggyback: make sure a gossip
        round comes."""
        self._arm_gossip(now)

    def _has_gossip(self) -> bool:
        return bool(self._broadcasts) or (self._piggyback is not None and self._piggyback.has_gossip())

    def _arm_gossip(self, now: float) -> None:
        """Schedule the next gossip round, if there is news and someone to
        tell it: now, after a quiet spell (news waits for no grid: a lone
        write reaches gossip_nodes members at once), else one
        gossip_interval after the last round (news that comes together
        goes together)."""
        if self._live and ("gossip",) not in self._timers and self._has_gossip():
            self._timers.schedule(("gossip",), max(now, self._last_gossip_round + self.config.gossip_interval))

    def _gossip_targets(self, now: float) -> list[Member]:
        """Random live members, and those failed recently enough that telling
        them may still let them refute."""
        horizon = now - self.config.gossip_to_the_dead_time
        recently_dead = []
        for name in reversed(self._gone):
            if self._since[name] < horizon:
                break
            member = self._members[name]
            if member.status is Status.DEAD:
                recently_dead.append(member)
        return self._sample_live(self.config.gossip_nodes, None, recently_dead)

    def _sync_soon(self, now: float) -> None:
        """Run the next anti-entropy round within a few probe intervals."""
        if not self._leaving:
            soon = now + self._rng.uniform(2.0, 4.0) * self.config.probe_interval
            self._timers.schedule_by(("push_pull",), soon)

    def _push_pull_round(self, now: float) -> None:
        """Anti-entropy with one random member, digest first: only if its
        view differs does it start a full state exchange with us."""
        self._timers.schedule(("push_pull",), now + self.config.push_pull_period(self.live_count))
        peers = self._sample_live(1, lambda m: m.status is Status.ALIVE)
        if peers:
            self._send(peers[0].addr, [StateDigest(self.name, self.addr, self._checksum)])

    def _join_retry(self, now: float) -> None:
        if self._live or self._leaving:
            return  # joined: healing takes over from here
        for seed in self._seeds:
            self._send_state(seed)
        self._join_backoff = min(2 * self._join_backoff, self.config.reconnect_interval)
        self._timers.schedule(("join_retry",), now + self._join_backoff)

    def _reconnect_round(self, now: float) -> None:
        self._timers.schedule(("reconnect",), now + self._rng.uniform(0.5, 1.5) * self.config.reconnect_interval)
        self._reap(now)
        if self._contact_one_of([*(self._members[name].addr for name in self._gone), *self._seeds]):
            self.stats.reconnects += 1

    def _rejoin_round(self, now: float) -> None:
        """Contact a member that went lately, at its address: if it is
        back as a new process, this brings it our state (see
        ``rejoin_window``). One per round; the round stops when none is left."""
        horizon = now - self.config.rejoin_window
        for name, went in list(self._went.items()):
            member = self._members.get(name)
            if went < horizon or member is None or member.status.is_live:
                del self._went[name]
        if self._contact_one_of([self._members[name].addr for name in self._went]):
            self.stats.rejoins += 1
        if self._went:
            self._timers.schedule(("rejoin",), now + self._rng.uniform(0.5, 1.5) * self.config.rejoin_interval)

    def _contact_one_of(self, addresses: list[Address]) -> bool:
        """Send our state to one of these addresses no live member uses
        (a member back as a new process there learns the cluster from it);
        False if there is none."""
        candidates = [addr for addr in dict.fromkeys(addresses) if addr not in self._live_addrs]
        if candidates:
            self._send_state(self._rng.choice(candidates))
        return bool(candidates)

    def _reap(self, now: float) -> None:
        """Forget members dead or left for longer than we remember them."""
        for name in list(self._gone):
            member = self._members[name]
            if member.status is Status.DEAD:
                keep_for = self.config.reconnect_timeout
            else:
                keep_for = self.config.tombstone_timeout
            if now - self._since[name] > keep_for:
                del self._members[name]
                del self._since[name]
                del self._gone[name]
                self.version += 1
                self.stats.reaped += 1

    def _leave_timeout(self, now: float) -> None:
        self._leave_timed_out = True

    # ------------------------------------------------------------------
    # Helpers.

    def _send(self, dst: Address, messages: list[Message], reliable: bool = False) -> None:
        """Send ``messages``; a datagram is topped up with queued claims."""
        if not reliable and self._has_gossip():
            room = self._payload_budget - sum(wire_size(m) for m in messages)
            messages.extend(self._take_gossip(room, dst, piggyback=dst in self._live_addrs))
        self._effects.append(Send(dst, tuple(messages), reliable))

    def _send_state(self, dst: Address, is_reply: bool = False) -> None:
        table = tuple(self._members.values())
        self._effects.append(Send(dst, (PushPull(self.name, is_reply, self.addr, table),), reliable=True))

    def _broadcast(self, now: float, claim: Claim) -> None:
        self._broadcasts.enqueue(claim.name, claim, wire_size(claim))
        self._arm_gossip(now)

    def _alive_claim(self) -> Claim:
        return claim_for(self._members[self.name], self.name)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _sample_live(
        self, k: int, accept: Callable[[Member], bool] | None, extra: Sequence[Member] = ()
    ) -> list[Member]:
        """Up to ``k`` distinct random members from the live list (plus
        ``extra``) that ``accept`` admits."""
        pool = len(self._live) + len(extra)
        if k <= 0 or pool == 0:
            return []
        chosen: list[Member] = []
        tried: set[int] = set()
        # Rejection sampling: cheap because nearly every live member is admitted.
        for _ in range(3 * k + 8):
            if len(chosen) == k or len(tried) == pool:
                break
            index = self._rng.randrange(pool)
            if index in tried:
                continue
            tried.add(index)
            member = self._members[self._live[index]] if index < len(self._live) else extra[index - len(self._live)]
            if accept is None or accept(member):
                chosen.append(member)
        if len(chosen) < k and len(tried) < pool:
            # Few admissible members: fall back to a full scan.
            rest = [
                m for i, m in enumerate(self._pool_members(extra))
                if i not in tried and (accept is None or accept(m))
            ]
            chosen.extend(self._rng.sample(rest, min(k - len(chosen), len(rest))))
        return chosen

    def _pool_members(self, extra: Sequence[Member]) -> list[Member]:
        return [self._members[name] for name in self._live] + list(extra)


def _check_meta(meta: bytes) -> None:
    if len(meta) > META_MAX:
        raise ValueError(f"member metadata is {len(meta)} bytes; at most {META_MAX} allowed")
