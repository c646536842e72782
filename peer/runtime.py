"""The trio runtime: one node's protocol cores on real sockets.

``Agent`` is a thin driver, the counterpart of the simulator's ``SimNode``:
it decodes frames with ``peer.wire.Codec`` and hands the messages to the
node's core (``peer.core.NodeCore``: membership, and replication of the maps
the agent declares) with trio's clock as ``now``; it wakes the core at
``next_deadline()``; after every call into the core it carries out the
effects (``Send`` as a datagram, or as a stream frame when reliable or too
big for a datagram; ``Event`` to the log and the counters). No protocol
decision is made here.

Around the core, the agent does what a process must: resolve seeds (again
every ``dns_interval`` while any is a name, and join whatever new addresses
appear), give up with a clear error when no seed answers within
``join_timeout``, leave gracefully on request, and serve the control API
(``peer.api``). Its incarnation is its boot time in milliseconds, so a node
restarted under the same name rejoins as itself and outranks every claim
about its previous life.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from membership.core import Membership
from peer.core import NodeCore
from peer.replication import ReplicationConfig
from membership.effects import Event, Send
from membership.state import Address, EventKind, Status
from peer.addresses import format_address, is_ip, is_ipv6, is_wildcard
from peer.api import bind_api_socket, serve_api
from peer.seeds import Lookup, SeedResolver, parse_seed, system_lookup
from peer.settings import Settings
from peer.transport import BindError, Transport
from peer.wire import Codec, DropReason, Dropped, FrameTooLarge, Keyring

log = logging.getLogger("peer.agent")

# How long, after leaving, in-flight API requests (a `peer leave` waiting for
# its answer) get before the process stops.
API_DRAIN_SECONDS = 2.0

# At most one warning per interval about frames signed with another key.
KEY_WARNING_INTERVAL = 60.0

_EVENT_LEVEL = {EventKind.FAILED: logging.WARNING}


class AgentError(Exception):
    """The agent cannot go on; the message is one line a person can act on."""


class JoinFailed(AgentError):
    pass


class Agent:
    def __init__(
        self,
        settings: Settings,
        keyring: Keyring | None,
        *,
        lookup: Lookup = system_lookup,
        rng: random.Random | None = None,
        maps: Sequence[str] = (),
        replication: ReplicationConfig | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.config = settings.membership_config()
        self.codec = Codec(keyring)
        self.transport = Transport(settings.bind, max_stream_frame=self.codec.max_stream)
        self.resolver = SeedResolver(
            [parse_seed(seed) for seed in settings.seeds], hosts_file=settings.hosts_file, lookup=lookup
        )
        self.rng = rng or random.Random()
        self.advertise: Address = settings.bind
        self.started_at = time.time()
        self.seed_addresses: list[Address] = []
        self.handler_errors = 0  # messages the core refused with an exception (a bug, counted)
        self.events: Counter[str] = Counter()
        self.maps = tuple(maps)
        self.replication_config = replication or ReplicationConfig()
        self._core: NodeCore | None = None
        self._api_socket: socket.socket | None = None  # handed to the API server by run()
        self.api_address: Address = settings.api
        self._nursery: trio.Nursery | None = None
        self._armed_deadline = math.inf
        self._next_key_warning = -math.inf
        self._rearm = trio.Event()
        self._joined = trio.Event()
        self._left = trio.Event()
        self.stopping = trio.Event()  # the API's shutdown trigger

    @property
    def core(self) -> NodeCore:
        assert self._core is not None, "bind() first"
        return self._core

    @property
    def membership(self) -> Membership:
        return self.core.membership

    @property
    def keyed(self) -> bool:
        return self.codec.keyring is not None

    @property
    def leaving(self) -> bool:
        return self.core.leaving

    @property
    def ready(self) -> bool:
        """Serving and part of a cluster (or meant to be alone: no seed to
        join); a readiness probe's answer."""
        return not self.core.leaving and (self._joined.is_set() or not self.seed_addresses)

    # -- life -----------------------------------------------------------------

    async def bind(self) -> None:
        """Bind the node's sockets and the API's; raises ``BindError``."""
        await self.transport.bind()
        try:
            self._api_socket = bind_api_socket(self.settings.api)
        except BindError:
            self.transport.close()
            raise
        host, port = self._api_socket.getsockname()[:2]
        self.api_address = (str(host), int(port))  # the bound port, if 0 was asked
        self.advertise = self._advertised_address()
        self._core = NodeCore(
            self.name,
            self.advertise,
            self.config,
            self.replication_config,
            maps=self.maps,
            rng=self.rng,
            now=trio.current_time(),
            wall_clock=time.time,
            incarnation=int(time.time() * 1000),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the node has left (``leave()``); ``bind()`` first."""
        assert self._api_socket is not None, "bind() first"
        if not self.keyed:
            log.warning(
                "no cluster key: this cluster is OPEN, anyone who can reach %s can join it and "
                "forge membership (give one with --key-file or PEER_KEY; make one with `peer keygen`)",
                format_address(self.advertise),
                extra={"node": self.name},
            )
        log.info(
            "node %s up at %s (bind %s, api http://%s, profile %s, incarnation %d)",
            self.name,
            format_address(self.advertise),
            format_address(self.settings.bind),
            format_address(self.settings.api),
            self.settings.profile,
            self.core.incarnation,
            extra={"node": self.name},
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.transport.serve, self._on_frame)
                nursery.start_soon(self._timer_loop)
                await nursery.start(serve_api, self, self._api_socket)
                await self._resolve_and_join()
                nursery.start_soon(self._seed_loop)
                if self.settings.join_timeout > 0:
                    nursery.start_soon(self._watch_join)
                task_status.started()
                await self._left.wait()
                log.info("left the cluster", extra={"node": self.name})
                self.stopping.set()
                with trio.move_on_after(API_DRAIN_SECONDS):
                    await trio.sleep_forever()  # serve_api returns once drained; then cancel
                nursery.cancel_scope.cancel()
        finally:
            self.close()

    def close(self) -> None:
        """Release the sockets (``run()`` does this when it ends)."""
        self.transport.close()
        if self._api_socket is not None:
            self._api_socket.close()

    async def leave(self) -> None:
        """Leave gracefully (others see ``left``, never ``failed``) and wait
        until the leave has been gossiped; ``run()`` then returns."""
        if not self.core.leaving:
            log.info("leaving the cluster", extra={"node": self.name})
            self.core.leave(trio.current_time())
            await self._flush()
        await self._left.wait()

    async def put(self, map_name: str, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Write to a replicated map (one the agent was created with)."""
        self.core.put(trio.current_time(), map_name, key, value, ttl=ttl)
        await self._flush()

    async def remove(self, map_name: str, key: str) -> bool:
        removed = self.core.remove(trio.current_time(), map_name, key)
        await self._flush()
        return removed

    def get(self, map_name: str, key: str) -> Any:
        """The value in a replicated map, or None."""
        register = self.core.get(map_name, key)
        return None if register is None else register.value

    def api_drained(self) -> None:
        """Called by the API server once it stopped: nothing is left to wait for."""
        if self._nursery is not None and self._left.is_set():
            self._nursery.cancel_scope.cancel()

    # -- driving the core -------------------------------------------------------

    async def _on_frame(self, src: Address, frame: bytes, reliable: bool) -> None:
        messages = self.codec.decode(frame, stream=reliable)
        if isinstance(messages, Dropped):
            self._report_drop(src, messages)
            return
        now = trio.current_time()
        for message in messages:
            try:
                self.core.receive(now, src, message, reliable)
            except Exception:  # the node never crashes on input; a bug is logged and counted
                self.handler_errors += 1
                log.exception("the node's core failed on %r from %s", message, format_address(src))
        await self._flush()

    def _report_drop(self, src: Address, dropped: Dropped) -> None:
        level = logging.DEBUG
        if dropped.reason is DropReason.BAD_MAC:
            # Someone is talking to us with another key: worth a warning, not a flood.
            now = trio.current_time()
            if now >= self._next_key_warning:
                self._next_key_warning = now + KEY_WARNING_INTERVAL
                level = logging.WARNING
        log.log(
            level,
            "dropped a frame from %s: %s (%s)",
            format_address(src),
            dropped.reason.value,
            dropped.detail,
            extra={"node": self.name},
        )

    async def _timer_loop(self) -> None:
        while True:
            self._rearm = trio.Event()
            self._armed_deadline = self.core.next_deadline()
            with trio.move_on_at(self._armed_deadline):
                await self._rearm.wait()
            self.core.tick(trio.current_time())
            await self._flush()

    async def _flush(self) -> None:
        core = self.core
        for effect in core.take_effects():
            if isinstance(effect, Send):
                await self._send(effect)
            else:
                self._on_event(effect)
        if core.membership.live_count > 1 and not self._joined.is_set():
            self._joined.set()
        if core.leaving and core.leave_complete:
            self._left.set()
        if core.next_deadline() < self._armed_deadline:
            self._rearm.set()

    async def _send(self, send: Send) -> None:
        if not send.reliable:
            try:
                frame = self.codec.encode(send.messages)
            except FrameTooLarge:
                pass  # too big for a datagram: the stream channel takes it whole
            else:
                await self.transport.send_datagram(send.dst, frame)
                return
        try:
            frame = self.codec.encode(send.messages, stream=True)
        except FrameTooLarge as error:
            log.error("cannot send to %s: %s", format_address(send.dst), error, extra={"node": self.name})
            return
        assert self._nursery is not None
        self.transport.start_stream(self._nursery, send.dst, frame)
        # Let the stream go out before encoding the next one: a catch-up's
        # chunks then reach the other side while we still encode.
        await trio.sleep(0)

    def _on_event(self, event: Event) -> None:
        member = event.member
        kind = event.kind.value
        self.events[kind] += 1
        because = f" (reported by {event.source})" if event.source and event.source != member.name else ""
        log.log(
            _EVENT_LEVEL.get(event.kind, logging.INFO),
            "member %s %s at %s, incarnation %d%s",
            member.name,
            kind,
            format_address(member.addr),
            member.incarnation,
            because,
            extra={"node": self.name, "event": kind, "member": member.name},
        )

    # -- seeds ------------------------------------------------------------------

    async def _resolve_and_join(self) -> None:
        addresses = [addr for addr in await self.resolver.resolve() if addr != self.advertise]
        if set(addresses) == set(self.seed_addresses) or self.core.leaving:
            return
        new = [addr for addr in addresses if addr not in self.seed_addresses]
        self.seed_addresses = addresses
        if new:
            log.info("joining through %s", ", ".join(map(format_address, addresses)), extra={"node": self.name})
        self.core.join(trio.current_time(), addresses)
        await self._flush()

    async def _seed_loop(self) -> None:
        names = any(not is_ip(seed.host) for seed in self.resolver.seeds)
        if not names or self.settings.dns_interval <= 0:
            return
        while True:
            await trio.sleep(self.settings.dns_interval)
            await self._resolve_and_join()

    async def _watch_join(self) -> None:
        with trio.move_on_after(self.settings.join_timeout):
            await self._joined.wait()
            return
        static = [seed for seed in self.resolver.seeds if not seed.dns]
        if not self.seed_addresses and not static:
            return  # only DNS seeds, and nobody there yet: we are the first node
        raise JoinFailed(self._join_failure())

    def _join_failure(self) -> str:
        tried = ", ".join(map(format_address, self.seed_addresses)) or "no address: the seeds did not resolve"
        rejected = self.codec.drops[DropReason.BAD_MAC]
        key = f"{rejected} frames came with a bad MAC: " if rejected else ""
        return (
            f"no seed answered within {self.settings.join_timeout:g}s (tried {tried}); {key}check --seeds, "
            "that the seeds run and that this node has the cluster's key, or raise --join-timeout (0 waits forever)"
        )

    def _advertised_address(self) -> Address:
        if self.settings.advertise is not None:
            host, port = self.settings.advertise
            return host, port or self.transport.port
        host = self.settings.bind[0]
        if is_wildcard(host):
            host = _outward_ip(is_ipv6(host))
        return host, self.transport.port

    # -- reading ------------------------------------------------------------------

    def member_counts(self) -> dict[str, int]:
        counts = {status.name.lower(): 0 for status in Status}
        for member in self.membership.members():
            counts[member.status.name.lower()] += 1
        return counts

    def drops(self) -> dict[str, int]:
        drops = {reason.value: count for reason, count in self.codec.drops.items()}
        drops["handler_error"] = self.handler_errors
        return drops

    def stats(self) -> dict[str, Any]:
        return {
            "membership": attrs.asdict(self.membership.stats),
            "replication": attrs.asdict(self.core.replicator.stats),
            "transport": attrs.asdict(self.transport.stats),
            "drops": self.drops(),
            "events": {kind.value: self.events[kind.value] for kind in EventKind},
        }


def _outward_ip(ipv6: bool) -> str:
    """The address this machine would use to reach others (no packet is sent);
    loopback when it has no route."""
    family, probe, fallback = (
        (socket.AF_INET6, "fd00::1", "::1") if ipv6 else (socket.AF_INET, "10.255.255.255", "127.0.0.1")
    )
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
            return str(sock.getsockname()[0])
        except OSError:
            log.warning("cannot tell this machine's address; advertising %s (set --advertise)", fallback)
            return fallback
