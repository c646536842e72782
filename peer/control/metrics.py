"""The agent's figures in Prometheus form: what ``GET /metrics`` serves.

Each stats object of the node (membership, transport, replication,
scheduler, the API's own) is exported field by field with a help text from
the tables here; a field that is a mapping becomes a labelled counter, and
one that is None (unknown on this system) is left out. README.md's "The
control API" lists the families.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from membership.core import MembershipStats
from peer.core.replication import ReplicationStats
from peer.jobs.scheduler import Role
from peer.runtime.transport import TransportStats

if TYPE_CHECKING:
    from peer.runtime.agent import Agent

# Why a request was refused before any handler ran (and by a handler, for a
# target outside the node's allow-lists): the label of peer_api_refused_total.
REFUSAL_REASONS = (
    "unauthenticated", "forbidden_host", "forbidden_origin", "content_type", "too_many_waits",
    "too_large", "too_deep", "target_not_allowed",
)  # fmt: skip

@attrs.define
class ApiStats:
    """The API's own counters, in ``/metrics`` and ``/status``."""

    refused: Counter[str] = attrs.field(factory=Counter)  # by reason (REFUSAL_REASONS)
    connections: int = 0  # open now
    waits: int = 0  # GET /runs/ID?wait=... waiting now
    accept_paused: int = 0  # times accepting paused at the connection limit
    accept_errors: int = 0  # accepts that failed for want of file descriptors

    def refuse(self, reason: str) -> None:
        assert reason in REFUSAL_REASONS, reason
        self.refused[reason] += 1


def unowned_jobs(agent: Agent) -> int:
    """Cron jobs in mode one, not paused, that no node owns by this view."""
    scheduler = agent.scheduler
    return sum(
        1
        for job_id, entry in scheduler.jobs().items()
        if entry.spec.schedule is not None
        and entry.spec.mode == "one"
        and not entry.spec.paused
        and scheduler.job_owner(job_id) is None
    )


_MEMBERSHIP_HELP = {
    "probes": "Members probed",
    "probes_failed": "Probes that got no ack in their round",
    "ping_requests": "Indirect probes this node asked others to make",
    "relayed_pings": "Indirect probes this node made for others",
    "suspicions": "Members this node suspected",
    "declared_dead": "Suspicions of this node's that timed out into a failure",
    "refutations": "Suspicions of this node that it refuted",
    "push_pulls": "Full state exchanges started on a differing digest",
    "digests_in_sync": "View digests that matched: nothing to exchange",
    "reconnects": "Reconnect attempts to seeds, dead or left members",
    "rejoins": "State sent to members that went lately, in case they are back",
    "corrections": "Newer claims re-gossiped over older ones heard",
    "misdirected_pings": "Pings naming another node (a stale address)",
    "name_conflicts": "Claims by another process to this node's name",
    "reaped": "Dead or left members forgotten after their timeout",
    "invalid_names": "Claims or exchanges refused for naming a member outside the safe charset (A-Z a-z 0-9 . _ : -, 1-128)",
    "incarnations_refused": "Claims refused for an incarnation further ahead of the wall clock than the slack allows",
    "members_rate_limited": "Unknown members not learned: their source host's learning budget was spent",
}
_TRANSPORT_HELP = {
    "datagrams_in": "Datagrams received",
    "datagrams_out": "Datagrams sent",
    "streams_in": "Stream frames received",
    "streams_out": "Stream frames sent",
    "bytes_in": "Bytes received",
    "bytes_out": "Bytes sent",
    "send_errors": "Datagrams the kernel refused and stream frames that failed",
    "streams_refused": "Inbound streams refused or closed before their frame, by reason: per_source and total (connection limits), "
    "idle_closed (no preamble in time), slow_closed (below the minimum rate), bad_preamble, bad_mac, stale, replayed "
    "(the preamble), budget (bytes buffered), truncated, no_fd (out of file descriptors)",
    "streams_dropped": "Outbound stream frames dropped: too many in flight",
    "udp_kernel_drops": "Datagrams the kernel dropped on the node's UDP socket (receive buffer full); absent where unknown",
}
_REPLICATION_HELP = {
    "writes": "Writes made on this node",
    "deltas_gossiped": "Local deltas queued for gossip",
    "deltas_too_big": "Local deltas too big to gossip, left to digest sync",
    "deltas_relayed": "Received deltas passed on",
    "backlog_pushes": "Batches of unsent deltas pushed to a few members over the reliable channel",
    "direct_pushes": "Entries handed to chosen members directly (a run to its assignee, a lease to its new holder)",
    "deltas_received": "Deltas received (gossip and sync answers)",
    "keys_changed": "Keys changed by merging what was received",
    "syncs_started": "Digest syncs started",
    "syncs_in_sync": "Digest probes whose roots matched",
    "probes_sent": "Digest probes sent while descending",
    "entries_sent": "Entries sent by digest sync",
    "entries_received": "Entries received by digest sync",
    "registers_refused": "Registers refused for a timestamp too far ahead",
    "values_refused": "Received values refused because this node cannot read them (e.g. a mangled job definition)",
    "malformed": "Replication messages that made no sense here",
    "expired": "Entries dropped by expiry",
}
_SCHEDULER_HELP = {
    "ticks_run": "Cron ticks this node started",
    "ticks_late": "Cron ticks started later than their grace",
    "ticks_missed": "Cron ticks recorded missed (misfire policy)",
    "ticks_skipped": "Cron ticks recorded skipped (overlap policy)",
    "runs_started": "Runs (attempts) this node started",
    "runs_succeeded": "Runs this node finished successfully",
    "runs_failed": "Runs this node finished failed, after their last attempt",
    "retries": "Failed attempts queued again for a retry",
    "failovers": "Runs re-run after their owner failed",
    "claims_lost": "Runs cancelled here because another claim won",
    "lost_refuted": "Runs of ours others recorded lost, taking us for failed, that ran on",
    "thaws": "Times this node found it had been frozen (or its clock jumped) and read before claiming",
    "handed_back": "Runs handed back to their next owner when leaving",
    "lost": "Runs recorded lost",
    "bad_records": "Job definitions or run records from peers that did not parse",
    "runs_queued": "Due runs that found this node at max_running_runs and waited for a slot",
    "submits_refused": "Submits refused (429): the cluster's pending backlog was at max_pending_runs",
    "declarations_applied": "Definitions of jobs declared in code (@node.cron, @node.job) this node wrote",
}
assert set(_MEMBERSHIP_HELP) == {field.name for field in attrs.fields(MembershipStats)}
assert set(_REPLICATION_HELP) == {field.name for field in attrs.fields(ReplicationStats)}
assert set(_TRANSPORT_HELP) == {field.name for field in attrs.fields(TransportStats)}


_API_HELP = {
    "connections": "Control API connections open",
    "waits": "Control API requests waiting on a run (?wait=)",
    "accept_paused": "Times the control API stopped accepting at its connection limit (api_max_connections)",
    "accept_errors": "Control API accepts that failed for want of file descriptors",
}


class ApiCollector(Collector):
    """The control API's own counters."""

    def __init__(self, stats: ApiStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "peer_api_refused", "Control API requests refused, by reason (see README: The control API)", labels=["reason"]
        )
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], self.stats.refused[reason])
        yield refused
        yield GaugeMetricFamily("peer_api_connections", _API_HELP["connections"], value=self.stats.connections)
        yield GaugeMetricFamily("peer_api_waits", _API_HELP["waits"], value=self.stats.waits)
        yield CounterMetricFamily("peer_api_accept_paused", _API_HELP["accept_paused"], value=self.stats.accept_paused)
        yield CounterMetricFamily("peer_api_accept_errors", _API_HELP["accept_errors"], value=self.stats.accept_errors)


class AgentCollector(Collector):
    """Reads the agent's counters when scraped: nothing to keep in sync."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        members = GaugeMetricFamily("peer_members", "Members in this node's view, by status", labels=["status"])
        for status, count in agent.member_counts().items():
            members.add_metric([status], count)
        yield members
        yield GaugeMetricFamily(
            "peer_ready", "1 when part of a cluster, not leaving, and the scheduler ready (caught up)", value=int(agent.ready)
        )
        yield GaugeMetricFamily("peer_leaving", "1 while leaving gracefully", value=int(agent.leaving))
        yield GaugeMetricFamily("peer_cluster_key", "1 when frames are authenticated with a key", value=int(agent.keyed))
        yield GaugeMetricFamily(
            "peer_health_score", "Lifeguard local health: 0 is healthy, higher probes slower", value=agent.membership.awareness
        )
        stats = agent.stats()
        for name, value in stats["membership"].items():
            yield CounterMetricFamily(f"peer_membership_{name}", _MEMBERSHIP_HELP[name], value=value)
        for name, value in stats["replication"].items():
            yield CounterMetricFamily(f"peer_replication_{name}", _REPLICATION_HELP[name], value=value)
        for name, value in stats["transport"].items():
            if isinstance(value, dict):  # counts by reason
                family = CounterMetricFamily(f"peer_transport_{name}", _TRANSPORT_HELP[name], labels=["reason"])
                for reason, count in value.items():
                    family.add_metric([reason], count)
                yield family
            elif value is not None:
                yield CounterMetricFamily(f"peer_transport_{name}", _TRANSPORT_HELP[name], value=value)
        drops = CounterMetricFamily(
            "peer_frames_dropped",
            "Frames dropped unread (bad_mac: a wrong or missing key; stale: stamped outside the replay window, "
            "clocks apart?; replayed: seen before; plaintext: not encrypted where encryption is on)",
            labels=["reason"],
        )
        for reason, count in stats["drops"].items():
            drops.add_metric([reason], count)
        yield drops
        events = CounterMetricFamily("peer_member_events", "Membership changes seen, by kind", labels=["event"])
        for kind, count in stats["events"].items():
            events.add_metric([kind], count)
        yield events
        yield from scheduler_metrics(agent)
        footprint = GaugeMetricFamily(
            "peer_footprint", "Entries held in each of this node's tables, by part: none grows but with live data", labels=["part", "table"]
        )
        for part, tables in agent.footprint().items():
            for table, size in tables.items():
                footprint.add_metric([part, table], size)
        yield footprint


def scheduler_metrics(agent: Agent) -> Iterator[Metric]:
    scheduler = agent.scheduler
    for name, value in attrs.asdict(scheduler.stats).items():
        # A counter added to the scheduler shows up before it has its help line.
        text = _SCHEDULER_HELP.get(name, name.replace("_", " ").capitalize())
        yield CounterMetricFamily(f"peer_scheduler_{name}", text, value=value)
    yield GaugeMetricFamily("peer_scheduler_jobs", "Jobs defined", value=len(scheduler.jobs()))
    yield GaugeMetricFamily("peer_scheduler_running_runs", "Runs this node is running", value=len(scheduler.running()))
    config = scheduler.config
    yield GaugeMetricFamily("peer_scheduler_max_running_runs", "Runs this node runs at most at once", value=config.max_running_runs)
    yield GaugeMetricFamily("peer_scheduler_queued_runs", "Due runs of this node's waiting for a slot", value=scheduler.queued())
    yield GaugeMetricFamily(
        "peer_scheduler_pending_runs", "Pending runs in the cluster, as this node sees them: the submit backlog", value=scheduler.backlog()
    )
    yield GaugeMetricFamily(
        "peer_scheduler_late_jobs", "Jobs whose latest tick is overdue beyond its grace with no record", value=len(scheduler.late_jobs())
    )
    yield GaugeMetricFamily(
        "peer_scheduler_unowned_jobs", "Cron jobs in mode one, not paused, that no node owns", value=unowned_jobs(agent)
    )
    yield GaugeMetricFamily("peer_scheduler_eligible_nodes", "Nodes that may own work, by this view", value=len(scheduler.eligible()))
    role = GaugeMetricFamily("peer_scheduler_role", "1 for this node's scheduler role: starting, ready or draining", labels=["role"])
    for each in Role:
        role.add_metric([each.value], int(scheduler.role is each))
    yield role


def api_document(stats: ApiStats) -> dict[str, Any]:
    return {
        "refused": {reason: stats.refused[reason] for reason in REFUSAL_REASONS},
        **{name: getattr(stats, name) for name in _API_HELP},
    }
