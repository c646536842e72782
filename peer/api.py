"""The control API: local HTTP/JSON, served by hypercorn's trio worker.

Routes (JSON unless said otherwise; documented in README.md):

    GET  /health         200 {"status": "ok", "ready": bool}: the process serves (liveness)
    GET  /health/ready   200 when part of a cluster and not leaving, else 503 (readiness)
    GET  /metrics        Prometheus text format
    GET  /members        this node's view: every member with address, status, incarnation
    GET  /status         the node itself, member counts, counters
    POST /leave          leave gracefully; answers once the leave has been gossiped

The API binds 127.0.0.1 by default: it can make the node leave, so expose it
only where that is wanted. The socket is bound before the node starts
(``bind_api_socket``), so a port in use is a clear error at start, not a log
line later.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from membership.core import MembershipStats
from peer.replication import ReplicationStats
from membership.state import Address
from peer.addresses import format_address, is_ipv6
from peer.transport import BindError, TransportStats, bind_error_message

if TYPE_CHECKING:
    from peer.runtime import Agent

log = logging.getLogger("peer.api")

JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"

Response = tuple[int, bytes, bytes]  # status, content type, body


def peer_version() -> str:
    try:
        return version("peer")
    except PackageNotFoundError:
        return "unknown"


def bind_api_socket(addr: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if is_ipv6(addr[0]) else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise BindError(bind_error_message("api", addr, error, "--api")) from None
    return sock


async def serve_api(agent: Agent, sock: socket.socket, *, task_status: trio.TaskStatus[None]) -> None:
    config = HypercornConfig()
    # The server owns the descriptor from now on and closes it when it stops;
    # detached, our socket object will not close it (or a reused number) again.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    app = ControlApi(agent)
    try:
        await serve(app, config, shutdown_trigger=agent.stopping.wait, task_status=task_status)  # type: ignore[arg-type]
    finally:
        agent.api_drained()


class ControlApi:
    """A minimal ASGI application: a table of routes, JSON answers."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self.registry.register(ProcessCollector(registry=None))
        self.routes: dict[str, tuple[str, Callable[[], Awaitable[Response]]]] = {
            "/health": ("GET", self.health),
            "/health/ready": ("GET", self.ready),
            "/metrics": ("GET", self.metrics),
            "/members": ("GET", self.members),
            "/status": ("GET", self.status),
            "/leave": ("POST", self.leave),
        }

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        route = self.routes.get(scope["path"].rstrip("/") or "/")
        headers: list[tuple[bytes, bytes]] = []
        if route is None:
            status, content_type, body = _json(404, {"error": f"no such resource: {scope['path']}"})
        elif scope["method"] != route[0] and not (scope["method"] == "HEAD" and route[0] == "GET"):
            status, content_type, body = _json(405, {"error": f"use {route[0]} for {scope['path']}"})
            headers.append((b"allow", route[0].encode()))
        else:
            try:
                status, content_type, body = await route[1]()
            except Exception:  # a bug in a handler must not take the node down
                log.exception("control API handler failed for %s", scope["path"])
                status, content_type, body = _json(500, {"error": "internal error; see the agent's log"})
        headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def health(self) -> Response:
        return _json(200, {"status": "ok", "ready": self.agent.ready})

    async def ready(self) -> Response:
        ready = self.agent.ready
        return _json(200 if ready else 503, {"ready": ready, "leaving": self.agent.leaving})

    async def metrics(self) -> Response:
        return 200, PROMETHEUS, generate_latest(self.registry)

    async def members(self) -> Response:
        return _json(200, members_document(self.agent))

    async def status(self) -> Response:
        return _json(200, status_document(self.agent))

    async def leave(self) -> Response:
        await self.agent.leave()
        return _json(200, {"left": True, "name": self.agent.name})


def _json(status: int, document: dict[str, Any]) -> Response:
    return status, JSON, json.dumps(document, indent=1).encode() + b"\n"


def members_document(agent: Agent) -> dict[str, Any]:
    members = sorted(agent.membership.members(), key=lambda member: member.name)
    return {
        "node": agent.name,
        "members": [
            {
                "name": member.name,
                "addr": format_address(member.addr),
                "status": member.status.name.lower(),
                "incarnation": member.incarnation,
                "meta": member.meta.decode("utf-8", "backslashreplace"),
            }
            for member in members
        ],
    }


def status_document(agent: Agent) -> dict[str, Any]:
    core = agent.core
    return {
        "name": agent.name,
        "addr": format_address(agent.advertise),
        "bind": format_address(agent.settings.bind),
        "incarnation": core.incarnation,
        "state": "leaving" if core.leaving else "alive",
        "ready": agent.ready,
        "version": peer_version(),
        "profile": agent.settings.profile,
        "cluster_key": agent.keyed,
        "uptime_seconds": round(time.time() - agent.started_at, 3),
        "seeds": [format_address(addr) for addr in agent.seed_addresses],
        "members": agent.member_counts(),
        "checksum": core.checksum,
        "health_score": agent.membership.awareness,
        **agent.stats(),
    }


# What each counter means, for the metrics' HELP lines.
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
    "corrections": "Newer claims re-gossiped over older ones heard",
    "misdirected_pings": "Pings naming another node (a stale address)",
    "name_conflicts": "Claims by another process to this node's name",
    "reaped": "Dead or left members forgotten after their timeout",
}
_TRANSPORT_HELP = {
    "datagrams_in": "Datagrams received",
    "datagrams_out": "Datagrams sent",
    "streams_in": "Stream frames received",
    "streams_out": "Stream frames sent",
    "bytes_in": "Bytes received",
    "bytes_out": "Bytes sent",
    "send_errors": "Datagrams the kernel refused and stream frames that failed",
    "streams_refused": "Inbound streams refused: over the limit, or a bad frame length",
    "streams_dropped": "Outbound stream frames dropped: too many in flight",
}
_REPLICATION_HELP = {
    "writes": "Writes made on this node",
    "deltas_gossiped": "Local deltas queued for gossip",
    "deltas_too_big": "Local deltas too big to gossip, left to digest sync",
    "deltas_relayed": "Received deltas passed on",
    "deltas_received": "Deltas received (gossip and sync answers)",
    "keys_changed": "Keys changed by merging what was received",
    "syncs_started": "Digest syncs started",
    "syncs_in_sync": "Digest probes whose roots matched",
    "probes_sent": "Digest probes sent while descending",
    "entries_sent": "Entries sent by digest sync",
    "entries_received": "Entries received by digest sync",
    "registers_refused": "Registers refused for a timestamp too far ahead",
    "malformed": "Replication messages that made no sense here",
    "expired": "Entries dropped by expiry",
}
assert set(_MEMBERSHIP_HELP) == {field.name for field in attrs.fields(MembershipStats)}
assert set(_REPLICATION_HELP) == {field.name for field in attrs.fields(ReplicationStats)}
assert set(_TRANSPORT_HELP) == {field.name for field in attrs.fields(TransportStats)}


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
        yield GaugeMetricFamily("peer_ready", "1 when part of a cluster and not leaving", value=int(agent.ready))
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
            yield CounterMetricFamily(f"peer_transport_{name}", _TRANSPORT_HELP[name], value=value)
        drops = CounterMetricFamily(
            "peer_frames_dropped", "Frames dropped unread (bad_mac: a wrong or missing key)", labels=["reason"]
        )
        for reason, count in stats["drops"].items():
            drops.add_metric([reason], count)
        yield drops
        events = CounterMetricFamily("peer_member_events", "Membership changes seen, by kind", labels=["event"])
        for kind, count in stats["events"].items():
            events.add_metric([kind], count)
        yield events
