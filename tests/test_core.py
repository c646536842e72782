"""The membership core, driven by hand: one node, messages fed in, effects read out."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from membership import EventKind, Membership, MembershipConfig, Status
from membership.effects import Event, Send
from membership.messages import Ack, Alive, Dead, Left, Nack, Ping, PingReq, PushPull, StateDigest, Suspect
from membership.state import CHECKSUM_MODULUS, Member, member_digest
from peer.runtime.wire import Codec, Keyring

ME = ("10.0.0.1", 7946)


def addr(name: str) -> tuple[str, int]:
    return (f"host-{name}", 7946)


def make_core(others: int | list[str] = 0, **overrides) -> Membership:
    core = Membership("me", ME, MembershipConfig(**overrides), rng=random.Random(7), now=0.0, incarnation=10)
    names = others if isinstance(others, list) else [f"m{i}" for i in range(others)]
    for name in names:
        core.receive(0.0, addr(name), Alive(name, 1, addr(name)))
    core.take_effects()
    return core


def sends(effects) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def events(effects) -> list[tuple[EventKind, str]]:
    return [(e.kind, e.member.name) for e in effects if isinstance(e, Event)]


def sent_messages(effects, kind=None) -> list:
    found = [m for s in sends(effects) for m in s.messages]
    return [m for m in found if kind is None or isinstance(m, kind)]


def run_until(core: Membership, until: float) -> list:
    """Tick the core at each of its deadlines up to ``until``; all effects."""
    effects = []
    while core.next_deadline() <= until:
        core.tick(core.next_deadline())
        effects += core.take_effects()
    return effects


def next_probe(core: Membership) -> tuple[float, Ping, list]:
    while True:
        now = core.next_deadline()
        core.tick(now)
        effects = core.take_effects()
        pings = sent_messages(effects, Ping)
        if pings:
            return now, pings[0], effects


def test_acked_probe_raises_no_suspicion():
    core = make_core(["b"])
    now, ping, effects = next_probe(core)
    assert ping.target == "b" and ping.reply_to == ME
    assert sends(effects)[0].dst == addr("b")
    core.receive(now + 0.01, addr("b"), Ack(ping.seq))
    later = run_until(core, now + 1.5 * core.config.probe_interval)  # past the end of this round
    assert not events(later) and core.stats.probes_failed == 0
    assert core.member("b").status is Status.ALIVE


@pytest.mark.parametrize("nacks, awareness", [(3, 0), (0, 3)])
def test_failed_probe_asks_relays_then_suspects(nacks, awareness):
    core = make_core(6)
    now, ping, _ = next_probe(core)
    core.tick(now + core.config.probe_timeout)
    effects = core.take_effects()
    requests = sent_messages(effects, PingReq)
    assert len(requests) == 3 and {r.target for r in requests} == {ping.target}
    relays = {s.dst for s in sends(effects) if isinstance(s.messages[0], PingReq)}
    assert addr(ping.target) not in relays and len(relays) == 3
    fallback = [s for s in sends(effects) if s.reliable]
    assert fallback and isinstance(fallback[0].messages[0], Ping) and fallback[0].dst == addr(ping.target)
    for _ in range(nacks):
        core.receive(now + 0.45, addr("x"), Nack(ping.seq))
    core.tick(now + core.config.probe_interval)
    effects = core.take_effects()
    assert (EventKind.SUSPECT, ping.target) in events(effects)
    assert core.member(ping.target).status is Status.SUSPECT
    # Relays that did not nack point at our own network: local health worsens.
    assert core.awareness == awareness


def test_relay_forwards_the_ack_or_answers_nack():
    core = make_core(["b", "r"])
    core.receive(1.0, addr("r"), PingReq(77, "b", addr("b"), addr("r")))
    effects = core.take_effects()
    (ping,) = sent_messages(effects, Ping)
    assert sends(effects)[0].dst == addr("b") and ping.target == "b"
    core.receive(1.01, addr("b"), Ack(ping.seq))
    assert [(s.dst, s.messages[0]) for s in sends(core.take_effects())] == [(addr("r"), Ack(77))]
    # A second request whose target stays silent: nack before the prober's round ends.
    core.receive(2.0, addr("r"), PingReq(78, "b", addr("b"), addr("r")))
    core.take_effects()
    core.tick(2.0 + 0.8 * core.config.probe_timeout)
    assert sent_messages(core.take_effects(), Nack) == [Nack(78)]


def test_ping_for_another_name_is_not_answered():
    core = make_core()
    core.receive(1.0, addr("x"), Ping(5, "someone-else", addr("x")))
    assert not core.take_effects() and core.stats.misdirected_pings == 1
    core.receive(1.0, addr("x"), Ping(6, "me", addr("x")), reliable=True)
    (send,) = sends(core.take_effects())
    assert send.reliable and send.messages == (Ack(6),)  # a reliable ping is answered reliably


@pytest.mark.parametrize("claim", [Suspect("me", 10, "b"), Dead("me", 10, "b"), Left("me", 12)])
def test_a_node_refutes_claims_about_itself(claim):
    core = make_core(["b"])
    core.receive(1.0, addr("b"), claim)
    assert core.incarnation == claim.incarnation + 1
    assert core.member("me").status is Status.ALIVE
    assert core.stats.refutations == 1
    core.receive(1.0, addr("b"), Ping(1, "me", addr("b")))
    assert Alive("me", claim.incarnation + 1, ME) in sent_messages(core.take_effects())


def test_stale_claims_about_itself_are_ignored():
    core = make_core(["b"])
    core.receive(1.0, addr("b"), Suspect("me", 9, "b"))
    core.receive(1.0, addr("b"), Alive("me", 10, ME))
    assert core.incarnation == 10 and core.stats.refutations == 0


def test_another_process_claiming_our_name_is_counted_and_refuted():
    core = make_core(["b"])
    core.receive(1.0, addr("b"), Alive("me", 50, ("elsewhere", 1)))
    assert core.incarnation == 51 and core.stats.name_conflicts == 1


def run_answering(core: Membership, until: float) -> list[tuple[float, object]]:
    """Like run_until, but every member answers every ping at once (so the
    core's own probes add no suspicion); effects come with their times."""
    timed = []
    while (now := core.next_deadline()) <= until:
        core.tick(now)
        effects = core.take_effects()
        for ping in sent_messages(effects, Ping):
            core.receive(now, addr(ping.target), Ack(ping.seq))
        timed += [(now, effect) for effect in effects + core.take_effects()]
    return timed


@pytest.mark.parametrize("confirmers, expected", [(0, "max"), (1, "between"), (2, "min"), (5, "min")])
def test_suspicion_timeout_shrinks_with_independent_confirmations(confirmers, expected):
    config = MembershipConfig()
    min_timeout = config.suspicion_min_timeout(11)
    max_timeout = config.suspicion_max_timeout(11)
    core = make_core(10)
    core.receive(1.0, addr("m1"), Suspect("m0", 1, "m1"))
    for i in range(confirmers):
        core.receive(1.0, addr("x"), Suspect("m0", 1, f"m{i + 2}"))
        core.receive(1.0, addr("x"), Suspect("m0", 1, "m1"))  # repeats count once
    assert events(core.take_effects()) == [(EventKind.SUSPECT, "m0")]
    timed = run_answering(core, until=100.0)
    (when,) = [t for t, e in timed if isinstance(e, Event) and e.kind is EventKind.FAILED]
    timeout = when - 1.0
    if expected == "max":
        assert timeout == pytest.approx(max_timeout)
    elif expected == "min":
        assert timeout == pytest.approx(min_timeout)  # k = suspicion_mult - 2 = 2 suffice
    else:
        assert min_timeout < timeout < max_timeout
    assert core.stats.declared_dead == 1
    soon_after = [e for t, e in timed if when <= t <= when + core.config.gossip_interval]
    assert Dead("m0", 1, "me") in sent_messages(soon_after)


def test_refutation_cancels_the_suspicion():
    core = make_core(4)
    core.receive(1.0, addr("m1"), Suspect("m0", 1, "m1"))
    core.receive(2.0, addr("m0"), Alive("m0", 2, addr("m0")))
    effects = core.take_effects() + [effect for _, effect in run_answering(core, 200.0)]
    assert events(effects) == [(EventKind.SUSPECT, "m0"), (EventKind.ALIVE, "m0")]


def test_probing_a_suspect_tells_it_so():
    core = make_core(["b"])
    core.receive(0.0, addr("x"), Suspect("b", 1, "x"))
    core.take_effects()
    now, ping, effects = next_probe(core)
    assert Suspect("b", 1, "me") in sent_messages(effects)  # the buddy system


def test_every_datagram_fits_the_packet_budget():
    core = make_core(300)
    codec = Codec(Keyring((b"k" * 32,)), wall_clock=lambda: 1.7e9, random_bytes=bytes)
    for i in range(300):
        core.receive(1.0, addr("x"), Alive(f"m{i}", 2, addr(f"m{i}"), b"x" * 100))
    core.receive(1.0, addr("x"), Ping(9, "me", addr("x")))
    effects = core.take_effects() + run_until(core, 10.0)
    datagrams = [s for s in sends(effects) if not s.reliable]
    assert len(datagrams) > 10
    sizes = [len(codec.encode(s.messages)) for s in datagrams]
    assert max(sizes) <= core.config.packet_budget
    assert max(sizes) > core.config.packet_budget - 200  # and they are filled, not sent half empty


def test_graceful_leave_gossips_left_then_completes_and_stops_probing():
    core = make_core(5)
    core.leave(1.0)
    effects = core.take_effects()
    assert Left("me", 10) in sent_messages(effects)
    assert core.leaving and not core.leave_complete
    effects = run_until(core, 1.0 + core.config.leave_timeout / 2)
    assert core.leave_complete
    assert not sent_messages(effects, Ping)
    assert core.member("me").status is Status.LEFT
    assert core.live_count == 5


def test_join_retries_with_backoff_until_a_member_answers():
    # The seed answers no probe here and is declared dead by 29 s: no rejoin
    # rounds, which would look for it every second (tested apart).
    core = make_core(rejoin_interval=1000.0)
    seed = ("10.0.0.9", 7946)
    core.join(0.0, [seed, ME])  # our own address is not a seed
    assert [(s.dst, s.reliable) for s in sends(core.take_effects())] == [(seed, True)]
    retries = [t for t in range(1, 16) if sends(run_until(core, float(t)))]
    assert retries[:3] == [1, 3, 7]  # 1 s, then doubling
    core.receive(16.0, seed, PushPull("s", True, seed, (Member("s", seed, 1, Status.ALIVE),)))
    assert events(core.take_effects()) == [(EventKind.JOINED, "s")]
    exchanges = [s for s in sends(run_until(core, 29.0)) if isinstance(s.messages[0], PushPull)]
    assert not exchanges  # joined: no more retries (the seed is alive, so no reconnects either)


def test_a_joiner_announces_itself_and_compares_views_soon_after():
    core = make_core()
    seed = ("10.0.0.9", 7946)
    core.join(0.0, [seed])
    core.take_effects()
    core.receive(0.5, seed, PushPull("s", True, seed, (Member("s", seed, 1, Status.ALIVE),)))
    core.take_effects()
    effects = [e for _, e in run_answering(core, 0.5 + 4 * core.config.probe_interval)]
    assert Alive("me", 10, ME) in sent_messages(effects)  # not left to the seed alone
    assert sent_messages(effects, StateDigest)  # long before push_pull_interval


def test_push_pull_merge_and_reply():
    core = make_core(["b", "c"])
    table = (
        Member("b", addr("b"), 1, Status.DEAD),  # a second-hand death: we only suspect
        Member("c", addr("c"), 1, Status.LEFT),
        Member("d", addr("d"), 3, Status.SUSPECT),  # a stranger, suspected
        Member("e", addr("e"), 3, Status.DEAD),  # a dead stranger: not worth knowing
        Member("me", ME, 10, Status.DEAD),  # news about ourselves: refute
    )
    core.receive(1.0, addr("b"), PushPull("b", False, addr("b"), table))
    effects = core.take_effects()
    assert events(effects) == [
        (EventKind.SUSPECT, "b"),
        (EventKind.LEFT, "c"),
        (EventKind.JOINED, "d"),
        (EventKind.SUSPECT, "d"),
    ]
    assert core.member("e") is None and core.incarnation == 11
    (reply,) = [s for s in sends(effects) if s.reliable]
    assert reply.dst == addr("b") and reply.messages[0].is_reply
    assert {m.name: m.status for m in reply.messages[0].members}["me"] is Status.ALIVE
    core.receive(1.0, addr("b"), PushPull("b", True, addr("b"), table))
    assert not sends(core.take_effects())  # a reply is not answered


def test_anti_entropy_sends_a_digest_and_exchanges_tables_only_when_views_differ():
    core = make_core(["b", "c"])
    effects = [e for _, e in run_answering(core, core.config.push_pull_interval)]
    (digest,) = sent_messages(effects, StateDigest)
    assert digest == StateDigest("me", ME, core.checksum)
    assert not [s for s in sends(effects) if s.reliable]  # no table went out
    twin = make_core(["b", "c"])
    twin.receive(1.0, addr("x"), StateDigest("x", addr("x"), core.checksum))
    assert not twin.take_effects() and twin.stats.digests_in_sync == 1
    twin.receive(1.0, addr("b"), Suspect("c", 1, "b"))
    twin.take_effects()
    twin.receive(1.0, addr("x"), StateDigest("x", addr("x"), core.checksum))
    (exchange,) = sends(twin.take_effects())
    assert exchange.reliable and exchange.dst == addr("x")
    assert isinstance(exchange.messages[0], PushPull) and not exchange.messages[0].is_reply


def test_reconnect_contacts_dead_members_and_seeds_then_forgets_the_dead():
    seed = ("10.0.0.9", 7946)
    core = make_core(["b", "c"], reconnect_interval=10.0, reconnect_timeout=100.0)
    core.join(0.0, [seed, addr("c")])
    core.receive(0.0, addr("x"), Dead("b", 1, "x"))
    core.take_effects()
    effects = [effect for _, effect in run_answering(core, 80.0)]
    contacted = [s.dst for s in sends(effects) if s.reliable and isinstance(s.messages[0], PushPull)]
    assert addr("b") in contacted and seed in contacted
    assert core.stats.reconnects >= 5
    run_answering(core, 130.0)
    assert core.member("b") is None and core.stats.reaped == 1
    assert core.member("c").status is Status.ALIVE


def test_a_member_seen_to_go_is_contacted_every_rejoin_interval_for_the_window_only():
    # A node restarted under its name with no seed of its own cannot find
    # us: we look for it at its address, often, while it is likely back.
    core = make_core(["b", "c"], reconnect_interval=1000.0, rejoin_interval=1.0, rejoin_window=20.0)
    core.receive(5.0, addr("b"), Left("b", 1))
    core.take_effects()
    timed = run_answering(core, 60.0)
    rejoins = [now for now, effect in timed
               if isinstance(effect, Send) and effect.dst == addr("b") and isinstance(effect.messages[0], PushPull)]
    assert rejoins and rejoins[0] <= 5.0 + 1.5
    assert all(later - earlier <= 1.5 for earlier, later in zip(rejoins, rejoins[1:]))
    assert rejoins[-1] <= 5.0 + 20.0 + 1.5 and len(rejoins) >= 12
    assert core.stats.rejoins == len(rejoins)
    assert ("rejoin",) not in core._timers  # the round stops with nobody left to look for


def test_a_member_known_dead_from_the_start_is_not_looked_for_every_second():
    # Only members we saw go count: a dead entry a join brings is old news.
    core = make_core(["c"], reconnect_interval=1000.0)
    core.receive(0.0, addr("x"), Dead("b", 1, "x"))
    core.take_effects()
    run_answering(core, 30.0)
    assert core.stats.rejoins == 0


def test_a_member_that_missed_a_leave_is_told_again():
    # b left; someone who missed it suspects b (its probes fail). We answer
    # with the leave, so the straggler does not end by declaring b failed.
    core = make_core(["b", "c"])
    core.receive(1.0, addr("b"), Left("b", 1))
    core.take_effects()
    run_until(core, 2.0)  # the leave has been gossiped and retired
    assert not core._broadcasts.pending("b")
    core.receive(2.5, addr("c"), Suspect("b", 1, "c"))
    assert core.member("b").status is Status.LEFT and core.stats.corrections == 1
    effects = run_until(core, 3.0)
    assert Left("b", 1) in sent_messages(effects)


def test_a_restarted_member_outranks_its_dead_self():
    core = make_core(["b"])
    core.receive(1.0, addr("x"), Dead("b", 1, "x"))
    # b's new boot time in ms, on the clock of make_core's world (10 ms at 0 s)
    core.receive(5.0, addr("b"), Alive("b", 4_900, ("new-host", 7946)))
    effects = core.take_effects()
    assert events(effects) == [(EventKind.FAILED, "b"), (EventKind.JOINED, "b")]
    assert core.member("b").addr == ("new-host", 7946)
    core.receive(6.0, addr("x"), Suspect("b", 1, "x"))  # news about the old self
    assert core.member("b").status is Status.ALIVE


def test_metadata_update_is_announced_with_a_new_incarnation():
    core = make_core(["b"])
    core.set_meta(1.0, b"zone=a")
    assert core.incarnation == 11
    core.receive(1.0, addr("b"), Ping(1, "me", addr("b")))
    (announcement,) = [m for m in sent_messages(core.take_effects(), Alive) if m.name == "me"]
    assert announcement == Alive("me", 11, ME, b"zone=a")
    other = Membership("other", addr("other"), MembershipConfig(), rng=random.Random(1), now=0.0)
    other.receive(0.0, ME, Alive("me", 10, ME))
    other.receive(1.0, ME, announcement)
    assert events(other.take_effects()) == [(EventKind.JOINED, "me"), (EventKind.UPDATED, "me")]
    with pytest.raises(ValueError, match="at most 512"):
        core.set_meta(2.0, b"x" * 513)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "me"]),
            st.sampled_from([Alive, Suspect, Dead, Left]),
            st.integers(0, 12),
        ),
        max_size=30,
    )
)
def test_checksum_always_equals_the_sum_over_the_live_view(history):
    core = make_core()
    for name, kind, incarnation in history:
        if kind is Alive:
            claim = Alive(name, incarnation, addr(name))
        elif kind is Left:
            claim = Left(name, incarnation)
        else:
            claim = kind(name, incarnation, "x")
        core.receive(1.0, addr("x"), claim)
    expected = sum(member_digest(m.name, m.status, m.incarnation) for m in core.live_members())
    assert core.checksum == expected % CHECKSUM_MODULUS
