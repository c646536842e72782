"""Sockets: a UDP socket for datagrams and a TCP listener for stream frames.

Both are bound to the same port. Datagrams carry probes and gossip; the
stream channel carries what must arrive whole and may be large (full state
exchanges, the fallback ping, anything over the datagram budget). A stream
frame travels on its own connection, prefixed by its length as a 4-byte big
endian integer: the core addresses replies explicitly (``reply_to``), so
no connection needs to outlive its frame, and a slow peer holds nothing but
one bounded task.

This module moves bytes and counts them; it knows nothing of messages.
Everything a peer can send is bounded: frame length (the codec's stream
limit), time to deliver a frame, and inbound connections at once.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

import attrs
import trio

from membership.state import Address
from peer.runtime.addresses import format_address, is_ipv6, is_wildcard

log = logging.getLogger("peer.transport")

LENGTH = struct.Struct(">I")
RECEIVE_BUFFER = 65_536
DATAGRAM_BATCH = 64  # datagrams read per wake-up at most
STREAM_TIMEOUT = 10.0  # connect + write, or read, of one stream frame
MAX_INBOUND_STREAMS = 64
MAX_OUTBOUND_STREAMS = 64  # connections open at once; more frames wait their turn
MAX_QUEUED_STREAMS = 4096  # frames waiting or in flight; beyond, new ones are dropped

# (src, frame, reliable); awaited for every frame received.
FrameHandler = Callable[[Address, bytes, bool], Awaitable[None]]


class BindError(Exception):
    """The node's address cannot be bound; the message says which and why."""


@attrs.define
class TransportStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    streams_in: int = 0
    streams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    send_errors: int = 0  # datagrams the kernel refused, streams that failed to connect or write
    streams_refused: int = 0  # inbound connections over the limit, or bad lengths
    streams_dropped: int = 0  # outbound frames dropped because too many were in flight


class Transport:
    def __init__(self, bind: Address, *, max_stream_frame: int) -> None:
        self.bind_address = bind
        self.max_stream_frame = max_stream_frame
        self.stats = TransportStats()
        self._family = socket.AF_INET6 if is_ipv6(bind[0]) else socket.AF_INET
        # The UDP socket is a plain non-blocking socket that trio only waits
        # on: a datagram then costs one system call, not a trip through
        # trio's scheduler per send and per receive.
        self._udp: socket.socket | None = None
        self._tcp: trio.socket.SocketType | None = None
        self._inbound = 0
        self._outbound = 0  # stream frames queued or in flight
        self._connections = trio.CapacityLimiter(MAX_OUTBOUND_STREAMS)

    @property
    def port(self) -> int:
        assert self._udp is not None, "bind() first"
        return int(self._udp.getsockname()[1])

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
            self._tcp = tcp
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
        if self._tcp is not None:
            self._tcp.close()

    # -- receiving ----------------------------------------------------------

    async def serve(self, handler: FrameHandler) -> None:
        """Receive datagrams and stream frames until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_datagrams, handler)
            nursery.start_soon(self._accept_streams, handler, nursery)

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

    async def _accept_streams(self, handler: FrameHandler, nursery: trio.Nursery) -> None:
        assert self._tcp is not None
        while True:
            try:
                conn, src = await self._tcp.accept()
            except OSError as error:
                log.debug("tcp accept error: %s", error)
                await trio.sleep(0.01)  # e.g. out of file descriptors: do not spin
                continue
            if self._inbound >= MAX_INBOUND_STREAMS:
                self.stats.streams_refused += 1
                conn.close()
                continue
            self._inbound += 1
            nursery.start_soon(self._read_stream, trio.SocketStream(conn), (str(src[0]), int(src[1])), handler)

    async def _read_stream(self, stream: trio.SocketStream, src: Address, handler: FrameHandler) -> None:
        try:
            with trio.move_on_after(STREAM_TIMEOUT):
                async with stream:
                    while (header := await _receive_exactly(stream, LENGTH.size)) is not None:
                        (length,) = LENGTH.unpack(header)
                        if not 0 < length <= self.max_stream_frame:
                            self.stats.streams_refused += 1
                            return
                        frame = await _receive_exactly(stream, length)
                        if frame is None:
                            return
                        self.stats.streams_in += 1
                        self.stats.bytes_in += len(frame) + LENGTH.size
                        await handler(src, frame, True)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            log.debug("stream from %s broke: %s", format_address(src), error)
        finally:
            self._inbound -= 1

    # -- sending ------------------------------------------------------------

    async def send_datagram(self, dst: Address, frame: bytes) -> None:
        udp = self._udp
        assert udp is not None
        route = self._route(dst)
        try:
            try:
                udp.sendto(frame, route)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(udp)  # the send buffer is full: wait for room, once
                udp.sendto(frame, route)
        except OSError as error:
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
            async with self._connections:
                with trio.move_on_after(STREAM_TIMEOUT) as scope:
                    host, port = self._route(dst)[:2]
                    stream = await trio.open_tcp_stream(host, port)
                    async with stream:
                        await stream.send_all(LENGTH.pack(len(frame)) + frame)
                if scope.cancelled_caught:
                    raise TimeoutError("timed out")
            self.stats.streams_out += 1
            self.stats.bytes_out += len(frame) + LENGTH.size
        except (OSError, trio.BrokenResourceError) as error:
            self.stats.send_errors += 1
            log.debug("stream to %s failed: %s", format_address(dst), error)
        finally:
            self._outbound -= 1

    def _route(self, dst: Address) -> tuple[str, int]:
        host, port = dst
        if self._family == socket.AF_INET6 and not is_ipv6(host):
            return f"::ffff:{host}", port  # an IPv4 peer, reached through our dual-stack socket
        return host, port


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    """``size`` bytes, or None at a clean end of stream before any of them."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive_some(size - len(buffer))
        if not chunk:
            if buffer:
                raise trio.BrokenResourceError("stream ended inside a frame")
            return None
        buffer += chunk
    return bytes(buffer)


def bind_error_message(what: str, addr: Address, error: OSError, flag: str = "--bind") -> str:
    where = f"{format_address(addr)} ({what})"
    if error.errno == errno.EADDRINUSE:
        return f"cannot bind {where}: the port is in use (another agent? pick another with {flag})"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind {where}: no interface of this machine has that address"
    if error.errno == errno.EACCES:
        return f"cannot bind {where}: permission denied (ports below 1024 need privileges)"
    return f"cannot bind {where}: {error.strerror}"
