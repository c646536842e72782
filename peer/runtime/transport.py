"""Sockets: a UDP socket for datagrams and a TCP listener for stream frames.

Both are bound to the same port. Datagrams carry probes and gossip; the
stream channel carries what must arrive whole and may be large (full state
exchanges, the fallback ping, anything over the datagram budget). A stream
frame travels on its own connection, after a preamble
(``peer.runtime.stream_auth``: magic, version, sender time, nonce, the
frame's length, and in a keyed cluster a MAC)::

    preamble (66 bytes) | frame (length bytes)

The core addresses replies explicitly (``reply_to``), so no connection needs
to outlive its frame, and a slow peer holds nothing but one bounded task.
(Version 1 of the stream format was a bare 4-byte length; an older peer and
this one refuse each other's streams at once, see ``stream_auth``.)

This module moves bytes and counts them; it knows nothing of messages. What
the gossip port accepts from a peer that has shown nothing is bounded, and
every refusal is counted by reason (``TransportStats.streams_refused``):

- connections (``InboundLimits``): ``connections`` at once in all (128).
  Once the node is busy (``shared_from``, 32, open), a source (an IPv4
  address, an IPv6 /64) holds at most ``per_source`` (8) connections that
  have not proven the key (every connection, in an open cluster): past it,
  its oldest connection still owing its preamble gives way to the new one,
  or the new one is refused (``per_source``). When all slots are taken, a
  connection still owing its preamble from the source holding the most
  gives way to one from a source holding fewer; else the new one is refused
  (``total``). An idle flood from one address thus cycles through its own
  slots, and a frame from anyone else, or from a real peer at that address,
  still gets in. Outbound, a node opens at most
  ``MAX_OUTBOUND_PER_DESTINATION`` (4) connections to one member at once;
- time: the preamble within ``preamble_timeout`` (3 s, else
  ``idle_closed``), then the frame at ``min_body_rate`` (64 KiB/s) after a
  grace of 3 s (else ``slow_closed``);
- memory: nothing large is allocated before the preamble is accepted, which
  in a keyed cluster means its MAC verified (a stranger costs one 66-byte
  read). Frames are read in chunks into a buffer that grows as bytes
  arrive, and their declared lengths are reserved against a byte budget, in
  all (16 MiB) and per source (8 MiB; else ``budget``), so strangers in an
  open cluster, too, can make a node buffer only so much;
- file descriptors: a spare one is kept, so that when accept() fails for
  lack of them the pending connection is taken and closed (``no_fd``)
  rather than left to wake the accept loop again and again; logged once per
  episode.

The kernel's count of datagrams it dropped for a full receive buffer is read
for our UDP socket (Linux: ``/proc/net/udp``; elsewhere unknown, None).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import trio

from membership.state import Address
from peer.runtime.addresses import format_address, is_ip, is_ipv6, is_wildcard
from peer.runtime.stream_auth import NONCE_SIZE, PREAMBLE_SIZE, PreambleChecker, PreambleRefusal, PreambleSealer
from peer.runtime.wire import Keyring

log = logging.getLogger("peer.transport")

RECEIVE_BUFFER = 65_536
DATAGRAM_BATCH = 64  # datagrams read per wake-up at most
STREAM_TIMEOUT = 10.0  # connect + write of one outbound stream frame
ACCEPT_BATCH = 64  # connections accepted per wake-up at most
READ_CHUNK = 65_536  # bytes asked of the kernel at once: buffers grow as bytes arrive
MAX_OUTBOUND_STREAMS = 64  # connections open at once; more frames wait their turn
MAX_OUTBOUND_PER_DESTINATION = 4  # connections to one member at once (below its per-source limit)
MAX_QUEUED_STREAMS = 4096  # frames waiting or in flight; beyond, new ones are dropped
KERNEL_DROPS_INTERVAL = 2.0  # seconds between reads of the kernel's drop count
_SMALL_FRAME = 65_536  # sent in one write with its preamble; larger ones after it, uncopied
_FD_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

# (src, frame, reliable); awaited for every frame received.
FrameHandler = Callable[[Address, bytes, bool], Awaitable[None]]


class BindError(Exception):
    """The node's address cannot be bound; the message says which and why."""


class StreamRefusal(enum.Enum):
    """Why an inbound stream was refused or closed before its frame was delivered."""

    PER_SOURCE = "per_source"  # its source held too many connections
    TOTAL = "total"  # all connection slots taken
    IDLE_CLOSED = "idle_closed"  # no preamble in time
    SLOW_CLOSED = "slow_closed"  # the frame came slower than the minimum rate
    BAD_PREAMBLE = PreambleRefusal.BAD_PREAMBLE.value
    BAD_MAC = PreambleRefusal.BAD_MAC.value
    STALE = PreambleRefusal.STALE.value
    REPLAYED = PreambleRefusal.REPLAYED.value
    BUDGET = "budget"  # the frame's length did not fit the byte budget
    TRUNCATED = "truncated"  # the connection ended inside the preamble or the frame
    NO_FD = "no_fd"  # accepted with the spare descriptor and closed: out of file descriptors


def _refusal_counts() -> dict[str, int]:
    return {reason.value: 0 for reason in StreamRefusal}


@attrs.define
class TransportStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    streams_in: int = 0
    streams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    send_errors: int = 0  # datagrams the kernel refused, streams that failed to connect or write
    streams_refused: dict[str, int] = attrs.field(factory=_refusal_counts)  # inbound, by StreamRefusal
    streams_dropped: int = 0  # outbound frames dropped because too many were in flight
    udp_kernel_drops: int | None = None  # datagrams the kernel dropped on our socket (None: cannot tell here)


def source_of(host: str) -> str:
    """The source a connection is counted against: its IPv4 address, or its
    IPv6 /64 (one host usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@attrs.define(eq=False)
class _Inbound:
    """An inbound connection, from accept() until its frame is read."""

    source: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    pending: bool = True  # its preamble has not been accepted yet
    proven: bool = False  # it showed the cluster key
    evicted: bool = False  # closed to make room (counted when it was)
    reserved: int = 0  # bytes of the budget held for its frame


@attrs.frozen
class InboundLimits:
    """What the gossip port grants peers before they have shown anything (see the module's docstring)."""

    connections: int = 128  # inbound connections at once, all sources
    shared_from: int = 32  # from this many inbound connections on, the per-source limit applies
    per_source: int = 8  # connections a source may hold without having proven the key, once busy
    preamble_timeout: float = 3.0  # an inbound connection's preamble must arrive within this,
    body_grace: float = 3.0  # then its frame's first bytes within this,
    min_body_rate: float = 64 * 1024  # and the rest at this many bytes a second at least
    # Bytes of inbound frames buffered at once, all sources, and from one source
    # (at least the largest frame). A frame costs about twice its size more
    # while it is handed over and decoded: 16 MiB buffered is ~+40 MB at worst.
    budget: int = 16 * 1024 * 1024
    budget_per_source: int = 8 * 1024 * 1024


class ByteBudget:
    """Bytes reserved for inbound frames, in all and per source."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self.used = 0
        self._by_source: dict[str, int] = {}

    def reserve(self, source: str, size: int) -> bool:
        held = self._by_source.get(source, 0)
        if self.used + size > self.total or held + size > self.per_source:
            return False
        self.used += size
        self._by_source[source] = held + size
        return True

    def release(self, source: str, size: int) -> None:
        self.used -= size
        left = self._by_source[source] - size
        if left:
            self._by_source[source] = left
        else:
            del self._by_source[source]


def _wall_ms() -> int:
    return int(time.time() * 1000)


class Transport:
    def __init__(
        self,
        bind: Address,
        *,
        max_stream_frame: int,
        keyring: Keyring | None = None,
        wall_ms: Callable[[], int] = _wall_ms,
        nonce: Callable[[int], bytes] = os.urandom,
        limits: InboundLimits = InboundLimits(),
        on_refused: Callable[[Address, StreamRefusal], None] | None = None,
    ) -> None:
        self.bind_address = bind
        self.max_stream_frame = max_stream_frame
        self.stats = TransportStats()
        self._family = socket.AF_INET6 if is_ipv6(bind[0]) else socket.AF_INET
        # The UDP socket is a plain non-blocking socket that trio only waits
        # on: a datagram then costs one system call, not a trip through
        # trio's scheduler per send and per receive.
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None  # likewise: accept() is ours to call, also when it fails
        self._sealer = PreambleSealer(keyring)
        self._checker = PreambleChecker(keyring, max_length=max_stream_frame)
        self._wall_ms = wall_ms
        self._nonce = nonce
        if limits.budget_per_source < max_stream_frame or limits.budget < limits.budget_per_source:
            raise ValueError("the byte budget, and its share per source, must each hold a frame of the largest size")
        self.limits = limits
        self._on_refused = on_refused  # told of refusals after the preamble was read (a wrong key, say)
        self.budget = ByteBudget(limits.budget, limits.budget_per_source)
        self._inbound: dict[str, dict[_Inbound, None]] = {}  # by source, oldest first
        self._inbound_count = 0
        self._spare_fd: int | None = None  # given up to accept, and close, a connection when out of descriptors
        self._out_of_fds = False  # within an episode of accept() failing for lack of descriptors
        self._outbound = 0  # stream frames queued or in flight
        self._connections = trio.CapacityLimiter(MAX_OUTBOUND_STREAMS)
        self._destinations: dict[Address, trio.CapacityLimiter] = {}

    @property
    def port(self) -> int:
        assert self._udp is not None, "bind() first"
        return int(self._udp.getsockname()[1])

    @property
    def inbound_streams(self) -> int:
        return self._inbound_count

    async def bind(self) -> None:
        """Bind UDP and TCP on the same port (port 0: any free one)."""
        host, port = self.bind_address
        for _attempt in range(20 if port == 0 else 1):
            udp = self._socket(socket.SOCK_DGRAM)
            try:
                await udp.bind((host, port))
            except OSError as error:
                udp.close()
                raise BindError(bind_error_message("udp", self.bind_address, error)) from None
            chosen = udp.getsockname()[1]
            tcp = self._socket(socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                await tcp.bind((host, chosen))
                tcp.listen(128)
            except OSError as error:
                udp.close()
                tcp.close()
                if port == 0 and error.errno == errno.EADDRINUSE:
                    continue  # the UDP port's TCP twin is taken: try another
                raise BindError(bind_error_message("tcp", (host, chosen), error)) from None
            self._udp = socket.socket(self._family, socket.SOCK_DGRAM, fileno=udp.detach())
            self._udp.setblocking(False)
            self._tcp = socket.socket(self._family, socket.SOCK_STREAM, fileno=tcp.detach())
            self._tcp.setblocking(False)
            self._spare_fd = _open_spare()
            self.refresh_kernel_drops()
            return
        raise BindError(f"cannot find a port free for both UDP and TCP on {host}")

    def _socket(self, kind: int) -> trio.socket.SocketType:
        sock = trio.socket.socket(self._family, kind)
        if self._family == socket.AF_INET6 and is_wildcard(self.bind_address[0]):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        return sock

    def close(self) -> None:
        if self._udp is not None and self._udp.fileno() != -1:
            trio.lowlevel.notify_closing(self._udp)
            self._udp.close()
        if self._tcp is not None and self._tcp.fileno() != -1:
            trio.lowlevel.notify_closing(self._tcp)
            self._tcp.close()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None

    def refresh_kernel_drops(self) -> None:
        """Read the kernel's drop count for our UDP socket into the stats."""
        if self._udp is not None and self._udp.fileno() != -1:
            self.stats.udp_kernel_drops = udp_kernel_drops(self._udp)

    # -- receiving ----------------------------------------------------------

    async def serve(self, handler: FrameHandler) -> None:
        """Receive datagrams and stream frames until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_datagrams, handler)
            nursery.start_soon(self._accept_streams, handler, nursery)
            nursery.start_soon(self._watch_kernel_drops)

    async def _watch_kernel_drops(self) -> None:
        if self.stats.udp_kernel_drops is None:
            return  # not on this system, or not for this socket
        while True:
            await trio.sleep(KERNEL_DROPS_INTERVAL)
            self.refresh_kernel_drops()

    async def _receive_datagrams(self, handler: FrameHandler) -> None:
        udp = self._udp
        assert udp is not None
        while True:
            await trio.lowlevel.wait_readable(udp)
            # What arrived together is read together, a batch at most, so
            # a flood still lets the other tasks run between batches.
            for _ in range(DATAGRAM_BATCH):
                try:
                    data, src = udp.recvfrom(RECEIVE_BUFFER)
                except BlockingIOError:
                    break
                except OSError as error:
                    # ICMP errors for earlier sends surface here on some systems.
                    log.debug("udp receive error: %s", error)
                    continue
                self.stats.datagrams_in += 1
                self.stats.bytes_in += len(data)
                await handler((str(src[0]), int(src[1])), data, False)

    def _refuse(self, reason: StreamRefusal) -> None:
        self.stats.streams_refused[reason.value] += 1

    async def _accept_streams(self, handler: FrameHandler, nursery: trio.Nursery) -> None:
        tcp = self._tcp
        assert tcp is not None
        while True:
            await trio.lowlevel.wait_readable(tcp)
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, src = tcp.accept()
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno in _FD_ERRORS:
                        await self._out_of_descriptors(tcp, error)
                        break
                    log.debug("tcp accept error: %s", error)  # e.g. the peer reset it while queued
                    continue
                if self._out_of_fds:
                    self._out_of_fds = False
                    log.warning(
                        "accepting stream connections again (refused for lack of file descriptors: %d so far)",
                        self.stats.streams_refused[StreamRefusal.NO_FD.value],
                    )
                address = (str(src[0]), int(src[1]))
                connection = self._admit(source_of(address[0]))
                if connection is None:
                    sock.close()
                    continue
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                nursery.start_soon(self._read_stream, stream, address, connection, handler)
            await trio.lowlevel.checkpoint()  # a flood of connections still lets the other tasks run

    async def _out_of_descriptors(self, tcp: socket.socket, error: OSError) -> None:
        """accept() failed for lack of file descriptors: the pending connection
        would wake us again at once. Give up the spare descriptor, take the
        connection and close it, and keep a spare again."""
        if not self._out_of_fds:
            self._out_of_fds = True
            log.warning("out of file descriptors (%s): refusing stream connections until some are free", error.strerror)
        self._refuse(StreamRefusal.NO_FD)
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                tcp.accept()[0].close()
            except OSError:
                pass  # nothing pending after all, or another thread took the descriptor
            self._spare_fd = _open_spare()
        if self._spare_fd is None:
            await trio.sleep(0.1)  # no spare to be had either: wait rather than spin

    def _admit(self, source: str) -> _Inbound | None:
        """A slot for a new connection from ``source``, or None (refused and counted);
        may close an older connection still owing its preamble to make room."""
        held = self._unproven(source)
        limits = self.limits
        if self._inbound_count >= limits.shared_from and held >= limits.per_source:
            victim = self._oldest_pending(source)
            if victim is None:
                self._refuse(StreamRefusal.PER_SOURCE)
                return None
            self._evict(victim, StreamRefusal.PER_SOURCE)
        elif self._inbound_count >= limits.connections:
            victim = self._pending_of_heaviest(more_than=held)
            if victim is None:
                self._refuse(StreamRefusal.TOTAL)
                return None
            self._evict(victim, StreamRefusal.TOTAL)
        connection = _Inbound(source)
        connection.scope.deadline = trio.current_time() + limits.preamble_timeout
        self._inbound.setdefault(source, {})[connection] = None
        self._inbound_count += 1
        return connection

    def _unproven(self, source: str) -> int:
        return sum(1 for connection in self._inbound.get(source, ()) if not connection.proven)

    def _oldest_pending(self, source: str) -> _Inbound | None:
        return next((connection for connection in self._inbound.get(source, ()) if connection.pending), None)

    def _pending_of_heaviest(self, *, more_than: int) -> _Inbound | None:
        best: _Inbound | None = None
        most = more_than
        for source in self._inbound:
            held = self._unproven(source)
            if held > most and (candidate := self._oldest_pending(source)) is not None:
                best, most = candidate, held
        return best

    def _evict(self, connection: _Inbound, reason: StreamRefusal) -> None:
        self._refuse(reason)
        connection.evicted = True
        connection.scope.cancel()
        self._release_slot(connection)  # at once: its task closes the socket when it next runs

    def _release_slot(self, connection: _Inbound) -> None:
        held = self._inbound.get(connection.source)
        if held is None or connection not in held:
            return
        del held[connection]
        if not held:
            del self._inbound[connection.source]
        self._inbound_count -= 1

    async def _read_stream(self, stream: trio.SocketStream, src: Address, connection: _Inbound, handler: FrameHandler) -> None:
        frame: bytes | None = None
        try:
            try:
                async with stream:
                    with connection.scope:
                        frame = await self._receive_frame(stream, src, connection)
                    if connection.scope.cancelled_caught and not connection.evicted:  # evictions are counted when made
                        self._refuse(StreamRefusal.IDLE_CLOSED if connection.pending else StreamRefusal.SLOW_CLOSED)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                self._refuse(StreamRefusal.TRUNCATED)
                log.debug("stream from %s broke: %s", format_address(src), error)
                return
            self._release_slot(connection)  # the connection is closed: free its slot before the frame is handled
            if frame is not None:
                self.stats.streams_in += 1
                self.stats.bytes_in += len(frame) + PREAMBLE_SIZE
                await handler(src, frame, True)
        finally:
            del frame  # the budget covers it until here
            self._release_slot(connection)
            if connection.reserved:
                self.budget.release(connection.source, connection.reserved)
                connection.reserved = 0

    async def _receive_frame(self, stream: trio.SocketStream, src: Address, connection: _Inbound) -> bytes | None:
        """The frame, or None if refused (and counted); its length stays
        reserved in the budget (``connection.reserved``) until it is handled."""
        head = await _receive_exactly(stream, PREAMBLE_SIZE)
        if head is None:
            return None  # closed before a byte: a port check, not a peer
        preamble = self._checker.check(head, now_ms=self._wall_ms())
        if isinstance(preamble, PreambleRefusal):
            self._refuse(StreamRefusal(preamble.value))
            if self._on_refused is not None:
                self._on_refused(src, StreamRefusal(preamble.value))
            return None
        connection.pending = False
        connection.proven = self._checker.keyed
        if not self.budget.reserve(connection.source, preamble.length):
            self._refuse(StreamRefusal.BUDGET)
            return None
        connection.reserved = preamble.length
        # Each byte received buys 1/min_body_rate s more: a peer sending
        # slower than that is cut off, however long its frame.
        start, grace, rate = trio.current_time(), self.limits.body_grace, self.limits.min_body_rate
        buffer = bytearray()
        while len(buffer) < preamble.length:
            connection.scope.deadline = start + grace + len(buffer) / rate
            chunk = await stream.receive_some(min(preamble.length - len(buffer), READ_CHUNK))
            if not chunk:
                raise trio.BrokenResourceError("stream ended inside a frame")
            buffer += chunk
        return bytes(buffer)

    # -- sending ------------------------------------------------------------

    async def send_datagram(self, dst: Address, frame: bytes) -> None:
        udp = self._udp
        assert udp is not None
        try:
            route = self._route(dst)
            try:
                udp.sendto(frame, route)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(udp)  # the send buffer is full: wait for room, once
                udp.sendto(frame, route)
        except _SEND_ERRORS as error:
            self.stats.send_errors += 1
            log.debug("datagram to %s failed: %s", format_address(dst), error)
            return
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(frame)

    def start_stream(self, nursery: trio.Nursery, dst: Address, frame: bytes) -> None:
        """Deliver ``frame`` on a new connection, in the background; at most
        MAX_OUTBOUND_STREAMS connect at once (a digest sync's chunks queue
        for their turn rather than being dropped)."""
        if self._outbound >= MAX_QUEUED_STREAMS:
            self.stats.streams_dropped += 1
            return
        self._outbound += 1
        nursery.start_soon(self._send_stream, dst, frame)

    async def _send_stream(self, dst: Address, frame: bytes) -> None:
        try:
            # A few connections to one member at once, fewer than it lets one
            # source hold, and the rest of a burst waits here for its turn.
            async with self._destination(dst), self._connections:
                with trio.move_on_after(STREAM_TIMEOUT) as scope:
                    host, port = self._route(dst)[:2]
                    stream = await trio.open_tcp_stream(host, port)
                    async with stream:
                        # Sealed once connected: a frame that waited its turn is not sent stale.
                        preamble = self._sealer.seal(len(frame), now_ms=self._wall_ms(), nonce=self._nonce(NONCE_SIZE))
                        if len(frame) <= _SMALL_FRAME:
                            await stream.send_all(preamble + frame)
                        else:
                            await stream.send_all(preamble)
                            await stream.send_all(frame)
                if scope.cancelled_caught:
                    raise TimeoutError("timed out")
            self.stats.streams_out += 1
            self.stats.bytes_out += len(frame) + PREAMBLE_SIZE
        except (*_SEND_ERRORS, trio.BrokenResourceError) as error:
            self.stats.send_errors += 1
            log.debug("stream to %s failed: %s", format_address(dst), error)
        finally:
            self._outbound -= 1

    @contextlib.asynccontextmanager
    async def _destination(self, dst: Address) -> AsyncIterator[None]:
        limiter = self._destinations.get(dst)
        if limiter is None:
            limiter = self._destinations[dst] = trio.CapacityLimiter(MAX_OUTBOUND_PER_DESTINATION)
        try:
            async with limiter:
                yield
        finally:
            statistics = limiter.statistics()
            if not statistics.borrowed_tokens and not statistics.tasks_waiting and self._destinations.get(dst) is limiter:
                del self._destinations[dst]

    def _route(self, dst: Address) -> tuple[str, int]:
        host, port = dst
        if not _known_ip(host):
            # Names are resolved at the edge (seeds, --advertise); a name here came
            # from a peer, and sendto would resolve it, blocking the event loop.
            raise ValueError(f"not an IP address: {host!r:.80}")
        if self._family == socket.AF_INET6 and not is_ipv6(host):
            return f"::ffff:{host}", port  # an IPv4 peer, reached through our dual-stack socket
        return host, port


# What a send may raise besides the network's errors: an address no socket
# can take (a NUL or a non-encodable host, a port out of range) is a failed
# send, counted, not the end of the node; peers' claims are checked before
# they name an address, and this is the last line behind those checks.
_SEND_ERRORS = (OSError, ValueError, TypeError, OverflowError)
_known_ip = functools.lru_cache(maxsize=4096)(is_ip)  # the same few hosts, on every send


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    """``size`` bytes (a small size: one buffer), or None at a clean end of stream before any of them."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive_some(size - len(buffer))
        if not chunk:
            if buffer:
                raise trio.BrokenResourceError("stream ended inside a preamble")
            return None
        buffer += chunk
    return bytes(buffer)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def udp_kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for ``sock`` (its receive buffer full, or
    a bad checksum): the ``drops`` column of its line in /proc/net/udp[6],
    found by the socket's inode. None where that cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    inode = str(os.fstat(sock.fileno()).st_ino)
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as table:
                next(table, None)  # the header
                for line in table:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == inode:
                        return int(fields[12])
        except (OSError, ValueError):
            continue
    return None


def bind_error_message(what: str, addr: Address, error: OSError, flag: str = "--bind") -> str:
    where = f"{format_address(addr)} ({what})"
    if error.errno == errno.EADDRINUSE:
        return f"cannot bind {where}: the port is in use (another agent? pick another with {flag})"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind {where}: no interface of this machine has that address"
    if error.errno == errno.EACCES:
        return f"cannot bind {where}: permission denied (ports below 1024 need privileges)"
    return f"cannot bind {where}: {error.strerror}"
