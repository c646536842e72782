"""Timings and limits of the membership protocol, and the named profiles.

The ``lan``, ``wan`` and ``local`` profiles carry memberlist's default
timings (DefaultLANConfig, DefaultWANConfig, DefaultLocalConfig), so figures
measured here compare with Serf and Consul on equal terms. The healing
settings (``reconnect_*``) follow Serf's agent defaults, which memberlist
itself lacks.
"""

from __future__ import annotations

import math

import attrs


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


@attrs.frozen
class MembershipConfig:
    """All durations are in seconds."""

    # Failure detection (SWIM): probe one member per interval; an ack must
    # arrive within probe_timeout, else ``indirect_checks`` members are asked
    # to probe it too before the end of the (health-scaled) interval.
    probe_interval: float = attrs.field(default=1.0, validator=_positive)
    probe_timeout: float = attrs.field(default=0.5, validator=_positive)
    indirect_checks: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    # Also try the probed member over the reliable channel (TCP in the
    # runtime) when the direct ping failed, as memberlist does.
    reliable_fallback_ping: bool = True

    # Lifeguard: the suspicion timeout starts at
    #   suspicion_mult * max(1, log10(n)) * probe_interval * max_timeout_mult
    # and shrinks towards the first factor's value as independent
    # confirmations arrive; local health scales probing by up to
    # awareness_max_multiplier.
    suspicion_mult: int = attrs.field(default=4, validator=_at_least_one)
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_at_least_one)
    awareness_max_multiplier: int = attrs.field(default=8, validator=_at_least_one)

    # Dissemination: every gossip_interval, send queued claims to
    # gossip_nodes random members; each claim is retransmitted
    # retransmit_mult * ceil(log10(n + 1)) times. Claims also ride on every
    # probe packet, which is filled up to packet_budget bytes.
    gossip_interval: float = attrs.field(default=0.2, validator=_positive)
    gossip_nodes: int = attrs.field(default=3, validator=_at_least_one)
    retransmit_mult: int = attrs.field(default=4, validator=_at_least_one)
    gossip_to_the_dead_time: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    packet_budget: int = attrs.field(default=1400, validator=attrs.validators.ge(576))

    # Anti-entropy: a full state exchange with one random member per
    # interval, stretched for clusters above 32 members (memberlist's
    # pushPullScale) so the cluster-wide rate stays flat.
    push_pull_interval: float = attrs.field(default=30.0, validator=_positive)

    # Joining and healing. Until it knows another live member, a node asks
    # its seeds to exchange state every join_retry_interval (doubling up to
    # reconnect_interval). After that, every reconnect_interval it contacts
    # one seed, dead member or left member it has not heard alive, so that
    # the halves of a partition merge again with no operator, however long
    # the split lasted. Dead members are remembered for reconnect_timeout,
    # left ones for tombstone_timeout (Serf's defaults: 30 s, 24 h, 24 h).
    join_retry_interval: float = attrs.field(default=1.0, validator=_positive)
    reconnect_interval: float = attrs.field(default=30.0, validator=_positive)
    # A member we saw go (leave, or be declared dead) is most likely a
    # process being restarted under its name, and one with no seed of its
    # own (a cluster's first node) cannot find us: for rejoin_window after it
    # went, we contact it every rejoin_interval (0.5-1.5 x), so that it hears
    # of its cluster before its settle time ends, not at a reconnect round.
    rejoin_interval: float = attrs.field(default=1.0, validator=_positive)
    rejoin_window: float = attrs.field(default=60.0, validator=_positive)
    reconnect_timeout: float = attrs.field(default=24 * 3600.0, validator=_positive)
    tombstone_timeout: float = attrs.field(default=24 * 3600.0, validator=_positive)

    # Learning members: each source host may introduce at most learn_burst
    # members we did not know, then learn_rate per second more (a token
    # bucket), so that one peer, broken or hostile, cannot flood the view
    # with members; what is refused is counted and learned later from
    # others. A node that knows no live member yet (joining, restarted)
    # takes a full state exchange whole, whatever its size.
    learn_burst: int = attrs.field(default=64, validator=_at_least_one)
    learn_rate: float = attrs.field(default=16.0, validator=_positive)

    # Graceful leave: the leave claim is gossiped until it has been sent
    # retransmit-limit times or leave_timeout passed.
    leave_timeout: float = attrs.field(default=5.0, validator=_positive)

    def retransmit_limit(self, cluster_size: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(cluster_size + 1)))

    def suspicion_min_timeout(self, cluster_size: int) -> float:
        scale = max(1.0, math.log10(max(1, cluster_size)))
        return self.suspicion_mult * scale * self.probe_interval

    def suspicion_max_timeout(self, cluster_size: int) -> float:
        """What a suspicion's timer starts at, before any confirmation."""
        return self.suspicion_max_timeout_mult * self.suspicion_min_timeout(cluster_size)

    def suspicion_confirmations(self, cluster_size: int) -> int:
        """Independent confirmations that shrink a suspicion's timer to its
        minimum; none where too few other members are left to give them."""
        expected = self.suspicion_mult - 2
        return 0 if cluster_size - 2 < expected else expected

    def push_pull_period(self, cluster_size: int) -> float:
        if cluster_size <= 32:
            return self.push_pull_interval
        multiplier = math.ceil(math.log2(cluster_size) - math.log2(32)) + 1
        return self.push_pull_interval * multiplier


PROFILES: dict[str, MembershipConfig] = {
    "lan": MembershipConfig(),
    "wan": MembershipConfig(
        suspicion_mult=6,
        push_pull_interval=60.0,
        probe_timeout=3.0,
        probe_interval=5.0,
        gossip_nodes=4,
        gossip_interval=0.5,
        gossip_to_the_dead_time=60.0,
    ),
    "local": MembershipConfig(
        indirect_checks=1,
        retransmit_mult=2,
        suspicion_mult=3,
        push_pull_interval=15.0,
        probe_timeout=0.2,
        probe_interval=1.0,
        gossip_interval=0.1,
        gossip_to_the_dead_time=15.0,
    ),
}


def profile(name: str) -> MembershipConfig:
    """The named profile, or a ValueError that lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown membership profile {name!r}; known: {', '.join(PROFILES)}") from None
