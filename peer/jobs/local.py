"""What the parts of the scheduler share: this node as they all see it, and
the words they speak.

Theory of operation
-------------------
The scheduler (``peer.jobs.scheduler``) is one face over parts, each in its
own module: the view of the members (``view``), the records as this node
holds them (``records``), the walk of schedules (``ticks``), the ring and
the leases (``placement``), and the claims (``claims``). Each part keeps
its own tables; what they all read is here, in ``Local``: who this node is
(name, life), its configuration, its role, its counters, the store of the
replicated maps, the times it started and turns ready, whether it holds the
cluster's older records yet, and the effects it owes the driver. The
scheduler changes the role and ``history_held``; the parts only read them.
The parts log through the scheduler's logger: one name for operators to
filter (README's logging section names it).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import attrs

from crdt.hlc import Timestamp
from crdt.ormap import Register
from peer.jobs.definition import JobSpec

log = logging.getLogger("peer.jobs.scheduler")

JOBS, RUNS, UPDATES, LEASES = "jobs", "runs", "updates", "leases"
MAPS = (JOBS, RUNS, UPDATES, LEASES)


class Role(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"

    @property
    def meta(self) -> bytes:
        """How the role travels in membership metadata."""
        return self.value.encode()


@attrs.frozen
class SchedulerConfig:
    settle: float = 2.0  # seconds a new node catches up before owning work...
    settle_max: float = 10.0  # ...and at most this long while its jobs map matches no member's
    drain_timeout: float = 30.0  # seconds a leaving node lets its runs finish
    scan_interval: float = 1.0  # seconds between looks for orphaned and pending runs
    progress_interval: float = 0.5  # at most one progress write per run this often
    max_failovers: int = 3  # re-runs after owner failures, beyond the job's retries
    catch_up_limit: int = 1000  # ticks per job handled in one go
    update_ttl: float = 3600.0  # seconds an update sent to a run is kept
    unfinished_ttl: float = 86400.0  # seconds an unfinished record lives past its timeout
    load_factor: float | None = None  # bounded loads (e.g. 1.1): no node above this x the mean
    handover: float = 1.5  # seconds a job's new owner waits for its old owner's last claims
    late_check_interval: float = 5.0  # seconds between looks for late jobs
    catch_up_window: float = 30.0  # at most this long a new node waits to hold older records before judging older ticks
    left_grace: float = 5.0  # seconds a left owner's last records get to arrive before its runs are re-run
    forward_delay: float = 0.25  # seconds a node holds a lease it was given but will not run before passing it on
    lease_ttl: float = 86400.0  # seconds a lease lives unless renewed (it is, at every transfer and acquisition)
    gossip_hold: float = 1.0  # seconds an unfinished record waits before it is gossiped (the outcome may replace it first)
    # Back-pressure (``peer.jobs.claims``): runs this node runs at once; due runs of its own that wait
    # here for a slot (beyond, they wait in the runs map, found by the scan); pending runs in the
    # cluster (this node's view) past which a submit is refused (``BacklogFull``).
    max_running_runs: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    max_queued_runs: int = attrs.field(default=1024, validator=attrs.validators.ge(1))
    max_pending_runs: int = attrs.field(default=5000, validator=attrs.validators.ge(1))


# -- effects: what the driver must do ------------------------------------------------


@attrs.frozen
class StartRun:
    run_id: str
    attempt: int
    spec: JobSpec
    tick: int | None


@attrs.frozen
class CancelRun:
    run_id: str
    attempt: int
    reason: str


@attrs.frozen
class DeliverUpdate:
    run_id: str
    attempt: int
    data: Any


SchedulerEffect = StartRun | CancelRun | DeliverUpdate


class Store(Protocol):
    """The replicated maps, as the node offers them."""

    def put(self, map_name: str, key: str, value: Any, *, ttl: float | None = None, hold: float = 0.0) -> Timestamp:
        """Write; with ``hold``, gossip it only that many seconds later unless written again."""

    def remove(self, map_name: str, key: str) -> bool: ...

    def push(self, map_name: str, key: str, members: Sequence[str], *, reliable: bool = False) -> None:
        """Send the key's entry to these members directly, now (it is gossiped too); by
        datagram, or with ``reliable`` over the stream channel (loss cannot drop it)."""

    def get(self, map_name: str, key: str, *, expired: bool = False) -> Register | None:
        """A key's value; with ``expired``, also one that expired but is still held."""

    def items(self, map_name: str) -> Iterator[tuple[str, Register]]: ...


@attrs.define
class SchedulerStats:
    ticks_run: int = 0  # ticks this node started
    ticks_late: int = 0  # of which started later than their grace
    ticks_missed: int = 0  # recorded missed (misfire policy)
    ticks_skipped: int = 0  # recorded skipped (overlap policy)
    runs_started: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0  # finished failed, after their last attempt
    retries: int = 0
    failovers: int = 0  # runs re-run after their owner failed
    claims_lost: int = 0  # runs cancelled because another claim won
    lost_refuted: int = 0  # our runs others recorded lost, taking us for failed: we ran on
    thaws: int = 0  # times we found we had been frozen (or our clock jumped), and read before claiming
    handed_back: int = 0
    lost: int = 0
    bad_records: int = 0  # records or definitions from peers that did not parse
    runs_queued: int = 0  # due runs that found this node at its limit and waited for a slot
    submits_refused: int = 0  # submits refused: the cluster's pending backlog was at its bound
    declarations_applied: int = 0  # definitions of jobs declared in code this node wrote (peer.jobs.declared)


class BacklogFull(Exception):
    """A submit refused: the cluster's backlog of pending runs (as this
    node sees the runs map) is at its bound (``max_pending_runs``). Nothing
    was written; submit again later."""

    def __init__(self, backlog: int, bound: int) -> None:
        self.backlog = backlog
        self.bound = bound
        super().__init__(
            f"the cluster's backlog of pending runs is {backlog}, at its bound of {bound} (max_pending_runs): "
            "nothing was submitted; try again later"
        )


@attrs.define(eq=False)
class Local:
    """This node, as every part of the scheduler sees it."""

    name: str
    life: int  # our incarnation at boot: names this life in the leases we hold
    config: SchedulerConfig
    store: Store
    started_at: int
    ready_at: int
    stats: SchedulerStats = attrs.Factory(SchedulerStats)
    role: Role = Role.STARTING
    # Until we can vouch we hold the run records made before we started
    # (our runs map matched a member's, or the catch-up window passed),
    # ticks from before our start wait: one without a record may have run.
    history_held: bool = False
    effects: list[SchedulerEffect] = attrs.Factory(list)
