"""Claims from key holders that are broken, older or hostile: none may take a
member away from the others (issue 13, items 4, 7 and 9)."""

from __future__ import annotations

import copy
import random
import socket
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.digest import ROOT
from crdt.messages import DeltaGossip, SyncEntries
from crdt.ormap import Delta
from membership import Membership, MembershipConfig, Status
from membership.core import INCARNATION_SLACK_MS as SLACK
from membership.messages import MAX_INCARNATION, UINT63, Alive, Dead, Left, PushPull, Suspect, valid_name
from membership.state import Member
from peer.core.replication import ReplicationConfig, Replicator
from peer.jobs.definition import parse_job
from peer.jobs.local import JOBS, LEASES, MAPS, RUNS, UPDATES
from peer.jobs.records import READABLE, job_entry_from_wire, readable_job
from peer.runtime.settings import ConfigError, load
from peer.runtime.wire import Codec, Keyring, decode_message
from sim.direct import WALL_MS as WALL
from sim.faults import Crash
from sim.membership_scenario import SIM_KEY, MembershipRun, MembershipScenario
from tests.test_core import ME, addr, make_core, sent_messages
from tests.test_sim_membership import detection_bound, views

# -- incarnations ------------------------------------------------------------------------
#
# make_core's "me" booted with incarnation 10 at now=0: its wall-clock estimate is 10 ms
# then, 1010 at now=1.0. Cores built with ``node`` boot at the simulator's wall clock.

EST = 1010  # make_core's estimate at now=1.0
ACCUSE, ALIVE = EST + SLACK, EST + 2 * SLACK  # its limits then


def node(name: str, *, behind_ms: int = 0, now: float = 0.0) -> Membership:
    """A core booted at ``now`` at wall time WALL (less ``behind_ms``: its clock is behind)."""
    return Membership(name, addr(name), MembershipConfig(), rng=random.Random(1), now=now, incarnation=WALL - behind_ms)


def introduce(now: float, *cores: Membership) -> None:
    for core in cores:
        for other in cores:
            if other is not core:
                core.receive(now, other.addr, Alive(other.name, other.incarnation, other.addr))
        core.take_effects()


def alive_claims(core: Membership, name: str) -> list[Alive]:
    """The alive claims about ``name`` that ``core`` sends (or gossips at its next round)."""
    effects = core.take_effects()
    core.tick(core.next_deadline())
    effects += core.take_effects()
    return [m for m in sent_messages(effects) if isinstance(m, Alive) and m.name == name]


def test_the_bounds_are_far_above_boot_time_incarnations_and_inside_the_codec():
    assert 1_800_000_000_000 * 1000 < MAX_INCARNATION  # boot ms for millennia
    assert MAX_INCARNATION + 1 <= UINT63  # a refutation at the bound still encodes
    core = make_core()
    assert core.wall_estimate_ms(1.0) == EST
    assert (core.incarnation_limit(1.0), core.incarnation_limit(1.0, alive=True)) == (ACCUSE, ALIVE)
    assert core.incarnation_limit(3.5) == ACCUSE + 2500  # the bound moves with the clock


@pytest.mark.parametrize("incarnation", [UINT63, MAX_INCARNATION + 1, MAX_INCARNATION, MAX_INCARNATION - 1])
@pytest.mark.parametrize("kind", [Dead, Suspect, Left])
def test_an_accusation_far_beyond_the_clock_is_dropped_and_counted(kind, incarnation):
    """MAX_INCARNATION - 1 was the attack the codec's bound alone let through: b
    refuted to the bound, and from then on no accusation about it counted."""
    core = make_core(["b", "x"])
    claim = (lambda name: Left(name, incarnation)) if kind is Left else (lambda name: kind(name, incarnation, "x"))
    core.receive(1.0, addr("x"), claim("b"))
    assert core.member("b").status is Status.ALIVE and core.member("b").incarnation == 1
    assert core.stats.incarnations_refused == 1
    core.receive(1.0, addr("x"), claim("me"))  # about ourselves: no refutation either
    assert core.incarnation == 10 and core.stats.refutations == 0
    assert core.stats.incarnations_refused == 2


def test_dead_at_max_int_leaves_its_member_alive_everywhere_and_encodable():
    """The attack: one signed Dead(b, 2**63-1). Before, b refuted with an
    incarnation no codec could encode and stayed dead for good."""
    codec = Codec(Keyring([b"k" * 32]), wall_clock=lambda: WALL / 1000, random_bytes=random.Random(7).randbytes)
    frame = codec.encode([Dead("b", UINT63, "x")])
    (message,) = codec.decode(frame)  # it decodes (the codec's range)...
    b = Membership("b", addr("b"), MembershipConfig(), rng=random.Random(1), now=0.0, incarnation=5)
    other = make_core(["b", "x"])
    for core in (b, other):
        core.receive(1.0, addr("x"), message)  # ...and is refused by the core
    assert b.incarnation == 5 and b.stats.incarnations_refused == 1
    assert other.member("b").status is Status.ALIVE


def _claim(kind: type, name: str, incarnation: int) -> Any:
    if kind is Alive:
        return Alive(name, incarnation, addr(name))
    return Left(name, incarnation) if kind is Left else kind(name, incarnation, "x")


@pytest.mark.parametrize(("kind", "limit"), [(Suspect, ACCUSE), (Dead, ACCUSE), (Left, ACCUSE), (Alive, ALIVE)])
def test_a_claim_one_past_the_time_bound_is_refused_and_counted_and_one_at_it_is_taken(kind, limit):
    core = make_core(["b", "x"])
    core.receive(1.0, addr("x"), _claim(kind, "b", limit + 1))
    assert core.member("b").status is Status.ALIVE and core.member("b").incarnation == 1
    assert core.stats.incarnations_refused == 1
    core.receive(1.0, addr("x"), _claim(kind, "me", max(limit, ALIVE - 1) + 1))  # about ourselves
    assert core.incarnation == 10 and core.stats.refutations == 0 and core.stats.incarnations_refused == 2
    if kind is Alive:
        core.receive(1.0, addr("x"), _claim(kind, "c", limit + 1))  # nor does a stranger come in that far ahead
        assert core.member("c") is None and core.stats.incarnations_refused == 3
    core.receive(1.0, addr("x"), _claim(kind, "b", limit))
    assert core.member("b").status is kind.STATUS and core.member("b").incarnation == limit
    later = make_core(["b", "x"])
    later.receive(1.01, addr("x"), _claim(kind, "b", limit + 1))  # 10 ms later it is within the bound
    assert later.member("b").incarnation == limit + 1 and later.stats.incarnations_refused == 0


def test_a_member_refutes_the_largest_admissible_accusation_and_everyone_takes_the_refutation():
    b, other = node("b"), node("other", now=500.0)  # monotonic clocks differ per host; wall clocks agree
    behind = node("behind", behind_ms=3_600_000)  # an hour behind the others
    introduce(0.0, b, other, behind)
    largest = other.incarnation_limit(500.0 + 1.0)
    assert largest == WALL + 1000 + SLACK
    other.receive(501.0, addr("x"), Suspect("b", largest, "x"))
    assert other.member("b").status is Status.SUSPECT
    b.receive(1.0, other.addr, Suspect("b", largest, "other"))  # the buddy system tells b
    assert b.incarnation == largest + 1 and b.stats.incarnations_refused == 0
    (refutation,) = alive_claims(b, "b")[:1]
    assert refutation.incarnation == largest + 1
    other.receive(501.1, b.addr, refutation)
    behind.receive(1.1, b.addr, refutation)  # never saw the accusation, and its clock is an hour behind
    for core in (other, behind):
        assert core.member("b").status is Status.ALIVE and core.member("b").incarnation == largest + 1
        assert core.stats.incarnations_refused == 0
    # Sent to b itself, an accusation may be up to the alive bound less one: a peer
    # with a clock up to the slack ahead admitted it, and b must answer it.
    own = b.incarnation_limit(2.0, alive=True) - 1
    b.receive(2.0, addr("x"), Dead("b", own, "x"))
    assert b.incarnation == own + 1 and b.member("b").status is Status.ALIVE
    other.receive(502.0, b.addr, alive_claims(b, "b")[0])
    assert other.member("b").incarnation == own + 1 and other.stats.incarnations_refused == 0


def test_a_forged_alive_far_ahead_leaves_its_member_accusable_and_refuting():
    b, other = node("b"), node("other")
    introduce(0.0, b, other)
    forged = Alive("b", other.incarnation_limit(1.0, alive=True), ("elsewhere", 1))
    for core in (b, other):
        core.receive(1.0, addr("x"), forged)
    assert b.incarnation == forged.incarnation + 1 and b.stats.name_conflicts == 1
    other.receive(1.0, b.addr, alive_claims(b, "b")[0])  # one past the bound: the step of a refutation
    assert other.member("b").incarnation == forged.incarnation + 1 and other.member("b").addr == b.addr
    assert forged.incarnation + 1 > other.incarnation_limit(1.0)  # far above what an accusation may raise it to...
    other.receive(1.0, addr("x"), Suspect("b", forged.incarnation + 1, "x"))  # ...yet b can be accused
    assert other.member("b").status is Status.SUSPECT and other.stats.incarnations_refused == 0


@pytest.mark.parametrize("attack", ["suspect_at_max", "suspect_at_limit", "alive_at_limit"])
def test_a_member_pushed_by_one_signed_datagram_is_still_declared_failed_when_it_crashes(attack):
    """The attack a codec-only bound let through: one Suspect(b, MAX_INCARNATION-1)
    and b refuted to the bound, where no accusation could reach it; when it then
    crashed, it stayed alive in every view. Now b is pushed at most as far as the
    time bound allows, and its crash is detected as any other."""
    scenario = MembershipScenario(nodes=8, seed=3, duration=70, faults=(Crash({3}, at=30.0),))
    run = MembershipRun(scenario)
    run.run_until(10.0)
    target, b = run.nodes[0], run.nodes[3]
    now = target.clock.monotonic(run.sim.now)
    if attack == "suspect_at_max":
        claim: Any = Suspect(b.name, MAX_INCARNATION - 1, target.name)
    elif attack == "suspect_at_limit":
        claim = Suspect(b.name, target.core.incarnation_limit(now), target.name)
    else:
        claim = Alive(b.name, target.core.incarnation_limit(now, alive=True), b.addr)
    forger = Codec(Keyring((SIM_KEY,)), wall_clock=lambda: target.clock.wall(run.sim.now), random_bytes=random.Random(9).randbytes)
    target.deliver(("10.9.9.9", 7946), forger.encode([claim]), False)  # one signed datagram
    run.run_until(29.0)
    pushed = attack != "suspect_at_max"
    for view in views(run).values():
        status, incarnation = view[b.name]
        assert status is Status.ALIVE
        assert (incarnation > claim.incarnation) if pushed else (incarnation < 2 * WALL)
    result = run.run()
    assert result.converged and result.false_positives == 0
    (last,) = result.detection_all_seconds
    assert last is not None and last <= detection_bound(scenario.config(), scenario.nodes)
    for view in views(run).values():
        assert view[b.name][0] is Status.DEAD


def test_a_push_pull_row_out_of_range_is_dropped_alone():
    core = make_core(["b"])
    table = (
        Member("b", addr("b"), UINT63, Status.DEAD),
        Member("c", addr("c"), ALIVE + 1, Status.ALIVE),
        Member("d", addr("d"), 3, Status.ALIVE),
    )
    core.receive(1.0, addr("b"), PushPull("b", True, addr("b"), table))
    assert core.member("b").status is Status.ALIVE and core.member("c") is None
    assert core.member("d").status is Status.ALIVE
    assert core.stats.incarnations_refused == 2


def test_a_restarted_member_comes_back_over_a_pushed_incarnation():
    """b was pushed as far as an accusation can push it, and declared dead; its
    next life starts at its boot time, far below, and climbs back over it."""
    other = node("other")
    introduce(0.0, other, node("b"))
    pushed = other.incarnation_limit(1.0)
    other.receive(1.0, addr("x"), Dead("b", pushed, "x"))
    assert other.member("b").status is Status.DEAD
    # Booted 5 s after the others (its boot time in ms) on a monotonic clock of its own.
    b = Membership("b", addr("b"), MembershipConfig(), rng=random.Random(2), now=77.0, incarnation=WALL + 5000)
    b.join(77.0, [other.addr])
    (request,) = [m for m in sent_messages(b.take_effects()) if isinstance(m, PushPull)]
    other.receive(5.0, b.addr, request)
    (reply,) = [m for m in sent_messages(other.take_effects()) if isinstance(m, PushPull)]
    b.receive(77.1, other.addr, reply)
    assert b.incarnation == pushed + 1 and b.stats.incarnations_refused == 0
    (alive,) = alive_claims(b, "b")[:1]
    other.receive(5.2, b.addr, alive)
    assert other.member("b").status is Status.ALIVE and other.member("b").incarnation == pushed + 1
    other.receive(5.3, addr("x"), Suspect("b", pushed + 1, "x"))  # and it can still be accused
    assert other.member("b").status is Status.SUSPECT and other.stats.incarnations_refused == 0


def test_metadata_at_the_bound_does_not_overflow():
    core = Membership("b", addr("b"), MembershipConfig(), rng=random.Random(1), now=0.0, incarnation=MAX_INCARNATION)
    core.set_meta(1.0, b"ready")
    assert core.incarnation == MAX_INCARNATION


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web-1", "10.0.0.7:7946", "node_3.example.com", "a" * 128])
def test_ordinary_names_are_valid(name):
    assert valid_name(name)


BAD_NAMES = ["", "a\nb", "evil\x00", "a b", "x" * 129, "caf\u00e9", "a/b", "\x1b[31mred", "b\r", "tab\t"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_claims_naming_an_invalid_member_are_dropped_and_counted(name):
    core = make_core(["b"])
    core.receive(1.0, addr("b"), Alive(name, 1, addr("z")))
    core.receive(1.0, addr("b"), Suspect("b", 1, name))  # as the accuser: it would be logged
    core.receive(1.0, addr("b"), PushPull("b", True, addr("b"), (Member(name, addr("z"), 1, Status.ALIVE),)))
    core.receive(1.0, addr("b"), PushPull(name, False, addr("b"), (Member("y", addr("y"), 1, Status.ALIVE),)))
    assert {m.name for m in core.members()} == {"me", "b"}
    assert core.member("b").status is Status.ALIVE
    assert core.stats.invalid_names == 4
    assert not sent_messages(core.take_effects(), PushPull)  # an exchange from a bad name is not answered


@pytest.mark.parametrize("host", ["127.0.0.1\x00evil", "h\u00f6st", "a b", "x" * 256, "", "10.0.0.1\n", "node-0", "999.1.1.1"])
def test_claims_naming_an_address_no_socket_takes_are_malformed(host):
    # A mutated, re-signed claim with such a host once reached sendto, which raised, and the node exited.
    codec = Codec(None)
    frame = codec.encode([Alive("b", 1, (host, 7946))])
    assert type(codec.decode(frame)).__name__ == "Dropped"
    assert codec.decode(codec.encode([Alive("b", 1, ("fe80::1%eth0", 7946))]))[0].addr[0] == "fe80::1%eth0"


def test_a_core_refuses_an_invalid_own_name():
    with pytest.raises(ValueError, match="member name"):
        Membership("a\nb", ME, MembershipConfig(), rng=random.Random(1), now=0.0)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=140))
def test_a_name_is_valid_exactly_when_it_is_of_the_safe_charset(name):
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
    assert valid_name(name) == (0 < len(name) <= 128 and set(name) <= safe)


# -- learning rate -----------------------------------------------------------------------


def _alive(i: int) -> Alive:
    return Alive(f"fake-{i}", 1, (f"10.9.{i // 250}.{i % 250}", 7946))


def test_one_source_introduces_a_burst_then_members_at_the_rate():
    core = make_core(["b"], learn_burst=64, learn_rate=16.0)
    for i in range(1000):
        core.receive(1.0, addr("b"), _alive(i))
    assert len(core.members()) == 2 + 64
    assert core.stats.members_rate_limited == 1000 - 64
    for i in range(1000, 1100):
        core.receive(2.0, addr("b"), _alive(i))  # a second later: 16 more
    assert len(core.members()) == 2 + 64 + 16
    core.receive(2.0, addr("c"), _alive(2000))  # another host has its own budget
    assert core.member("fake-2000") is not None


def test_known_members_cost_nothing_and_a_bucket_table_stays_bounded():
    core = make_core(["b"], learn_burst=2, learn_rate=0.001)  # b took one
    for _ in range(10):
        core.receive(1.0, addr("b"), Suspect("b", 1, "b"))  # news about known members is never limited
    core.receive(1.0, addr("b"), _alive(0))
    core.receive(1.0, addr("b"), _alive(1))
    assert core.stats.members_rate_limited == 1
    for i in range(5000):
        core.receive(1.0, (f"10.8.{i // 250}.{i % 250}", 1), Alive("fake-0", 1, addr("x")))
    assert len(core._learning) <= 1024


def test_a_push_pull_is_charged_except_while_joining():
    table = tuple(Member(f"m{i}", addr(f"m{i}"), 1, Status.ALIVE) for i in range(500))
    joined = make_core(["b"])
    joined.receive(1.0, addr("b"), PushPull("b", False, addr("b"), table))
    assert len(joined.members()) == 2 + 64 and joined.stats.members_rate_limited == 500 - 64
    joiner = make_core()
    joiner.receive(1.0, addr("b"), PushPull("b", True, addr("b"), table))
    assert len(joiner.members()) == 1 + 500 and joiner.stats.members_rate_limited == 0


# -- replicated values -------------------------------------------------------------------

JOB = parse_job({"id": "report", "schedule": "@every 5s", "call": "myapp.tasks:report"}, where="test")
GOOD = {"spec": JOB.to_wire(), "since": WALL}


def job_pair() -> tuple[Replicator, Replicator]:
    a, b = (
        Replicator(addr_, name, ReplicationConfig(), maps=MAPS, rng=random.Random(i), now=0.0, validators=READABLE)
        for i, (addr_, name) in enumerate([(("10.0.0.1", 1), "a#1"), (("10.0.0.2", 1), "b#1")])
    )
    a.set_peers([("10.0.0.2", 1), ("10.0.0.3", 1)])  # a lone replica queues no gossip
    b.set_peers([("10.0.0.1", 1), ("10.0.0.3", 1)])
    a.put(WALL, JOBS, "report", GOOD)
    b.receive(0.0, WALL, DeltaGossip(JOBS, a.map(JOBS).state()))
    assert b.get(WALL, JOBS, "report").value == GOOD
    for node in (a, b):
        while node.take_gossip(100_000, 1, ("10.0.0.3", 1)):
            pass  # the good definition's gossip (and relay): gone
    return a, b


def _overwrite(a: Replicator, value: Any) -> DeltaGossip:
    """The delta a's next write of ``value`` makes: it replaces the good register."""
    a.put(WALL + 1000, JOBS, "report", value)
    (gossip,) = a.take_gossip(100_000, 1, ("10.0.0.2", 1))
    return gossip


@pytest.mark.parametrize(
    "mangled",
    [{"spec": {"id": "report", "schedule": 7}, "since": WALL}, "garbage", None, {"spec": JOB.to_wire(), "since": 1.5}],
)
def test_an_unreadable_definition_never_replaces_a_readable_one(mangled):
    a, b = job_pair()
    gossip = _overwrite(a, mangled)  # its context removes the good register
    b.receive(1.0, WALL + 2000, gossip)
    assert b.get(WALL, JOBS, "report").value == GOOD  # the job keeps its definition
    assert job_entry_from_wire(b.get(WALL, JOBS, "report").value).spec == JOB
    assert b.stats.values_refused == 1
    assert not b.has_gossip()  # and it is not passed on


def test_the_real_write_is_taken_after_a_mangled_copy_of_it():
    a, b = job_pair()
    newer = {"spec": JOB.to_wire(), "since": WALL + 1000}
    gossip = _overwrite(a, newer)
    (key, registers), = gossip.delta.entries.items()
    ((dot, register),) = registers.items()
    mangled = DeltaGossip(JOBS, Delta({key: {dot: register._replace(value={"spec": 1})}}, gossip.delta.context))
    b.receive(1.0, WALL + 2000, mangled)
    assert b.get(WALL, JOBS, "report").value == GOOD
    b.receive(1.0, WALL + 2000, gossip)  # its dot was not recorded as seen
    assert b.get(WALL, JOBS, "report").value == newer


def test_an_unreadable_value_in_a_sync_removes_nothing_and_the_rest_is_taken():
    a, b = job_pair()
    a.put(WALL, RUNS, "report@x", {"id": "report@x", "job": "report", "state": "pending"})
    a.put(WALL + 1000, JOBS, "report", ["not", "a", "job"])
    a.put(WALL, JOBS, "other", {"spec": attrs.evolve(JOB, id="other").to_wire(), "since": WALL})
    for name in (JOBS, RUNS):
        replica_map = a.map(name)
        entries = replica_map.scope_state([ROOT])
        b.receive(1.0, WALL + 2000, SyncEntries(name, ("10.0.0.1", 1), (ROOT,), entries, replica_map.context.copy()))
    assert b.get(WALL, JOBS, "report").value == GOOD
    assert b.get(WALL, JOBS, "other") is not None and b.get(WALL, RUNS, "report@x") is not None
    assert b.stats.values_refused == 1 and b.stats.malformed == 0


def test_removals_still_remove():
    a, b = job_pair()
    a.remove(WALL + 1000, JOBS, "report")
    (gossip,) = a.take_gossip(100_000, 1, ("10.0.0.2", 1))
    b.receive(1.0, WALL + 2000, gossip)
    assert b.get(WALL, JOBS, "report") is None and b.stats.values_refused == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (RUNS, {"id": "r", "job": "j", "state": "no-such-state"}),
        (RUNS, {"id": "r", "job": "j", "state": "pending", "attempt": 0}),
        (RUNS, {"id": "r", "job": "j", "state": "running", "owner": "n1\nFAKE log line"}),
        (RUNS, {"id": "r\x00", "job": "j", "state": "pending"}),
        (LEASES, {"holder": "a", "life": "x", "cursor": None, "how": "acquire"}),
        (LEASES, {"holder": "a\rb", "life": 1, "cursor": None, "how": "acquire"}),
        (UPDATES, 42),
    ],
)
def test_unreadable_runs_leases_and_updates_are_refused(name, value):
    a, b = job_pair()
    a.put(WALL, name, "k", value)
    (gossip,) = a.take_gossip(100_000, 1, ("10.0.0.2", 1))
    b.receive(1.0, WALL + 2000, gossip)
    assert b.get(WALL, name, "k") is None and b.stats.values_refused == 1


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_byte_mutated_definition_delta_leaves_the_original_or_a_readable_spec(data):
    """Signed frames with mutated bodies (issue 13, item 7): whatever a
    mutated overwrite of the job does, the job still has a readable
    definition, never an unreadable one."""
    a, b = job_pair()
    gossip = _overwrite(a, {"spec": attrs.evolve(JOB, timeout=7.0).to_wire(), "since": WALL + 1000})
    body = bytearray(msgpack.packb(gossip.to_wire()))
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    try:
        message = decode_message(msgpack.unpackb(bytes(body), raw=False, strict_map_key=False))
    except Exception:
        return  # the codec drops it (and counts it)
    if not isinstance(message, DeltaGossip) or message.map not in MAPS:
        return
    b.receive(1.0, WALL + 2000, message)
    register = b.get(WALL + 2000, JOBS, "report")
    if register is not None:
        assert readable_job(register.value)


# -- the agent's own name ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "environ", "words"),
    [
        ({"name": "web 1"}, {}, r"--name: node name 'web 1' is not 1..128 of"),
        ({}, {"PEER_NAME": "a\nb"}, r"PEER_NAME: node name 'a\\nb' is not"),
        ({"name": "x" * 129}, {}, r"--name: node name 'x+' is not 1..128"),
    ],
)
def test_the_agent_refuses_an_invalid_own_name_naming_the_setting(flags, environ, words):
    with pytest.raises(ConfigError, match=words):
        load(flags, environ=environ)


def test_an_invalid_host_name_as_default_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "bad host")
    with pytest.raises(ConfigError, match=r"the host name, by default; set --name or PEER_NAME"):
        load({}, environ={})
    assert load({"name": "ok-name"}, environ={}).name == "ok-name"


INCARNATIONS = st.one_of(
    st.integers(0, 20).map(lambda i: ("abs", i)),
    st.tuples(st.sampled_from(["held", "accuse", "alive"]), st.integers(-1, 2)),
    st.sampled_from([MAX_INCARNATION - 1, MAX_INCARNATION, MAX_INCARNATION + 1, UINT63]).map(lambda i: ("abs", i)),
)


def _resolve(core: Membership, now: float, name: str, choice: tuple[str, int]) -> int:
    kind, value = choice
    if kind == "abs":
        return value
    if kind == "held":
        held = core.member(name)
        return max(0, (held.incarnation if held is not None else 1) + value)
    return core.incarnation_limit(now, alive=kind == "alive") + value


@settings(max_examples=300, deadline=None)
@given(
    claims=st.lists(
        st.tuples(
            st.sampled_from([Alive, Suspect, Dead, Left]),
            st.sampled_from(["me", "b", "c", "bad\nname"]),
            INCARNATIONS,
            st.sampled_from([0.0, 0.0, 0.001, 2.0, 3600.0]),
        ),
        max_size=10,
    )
)
def test_after_any_sequence_of_claims_every_member_can_be_accused_and_can_refute(claims):
    core = make_core(["b"])
    now = 1.0
    for step, (kind, name, choice, elapsed) in enumerate(claims, 1):
        now += elapsed
        claim = _claim(kind, name, _resolve(core, now, name, choice))
        if isinstance(claim, (Suspect, Dead)):
            claim = attrs.evolve(claim, accuser="b")
        core.receive(now, addr("b"), claim)
        assert core.member("me").status is Status.ALIVE  # we always refute
        # Nothing jumps past the time bound; refutation steps go one at a time.
        assert all(m.incarnation <= core.incarnation_limit(now, alive=True) + step for m in core.members())
        assert all(valid_name(m.name) for m in core.members())
    codec = Codec()
    for effect in core.take_effects():
        if hasattr(effect, "messages"):
            assert codec.decode(codec.encode(list(effect.messages), stream=effect.reliable), stream=effect.reliable)
    for member in core.members():
        held = member.incarnation
        accused = copy.deepcopy(core)
        accused.receive(now, addr("b"), Suspect(member.name, held, "b"))
        refuted = copy.deepcopy(core)
        refuted.receive(now, addr("b"), Alive(member.name, held + 1, member.addr))
        for each in (accused, refuted):
            assert each.stats.incarnations_refused == core.stats.incarnations_refused
        if member.name == "me":
            assert accused.incarnation == held + 1 and accused.member("me").status is Status.ALIVE
        else:
            assert accused.member(member.name).status is not Status.ALIVE
            assert refuted.member(member.name) == attrs.evolve(member, incarnation=held + 1, status=Status.ALIVE)
