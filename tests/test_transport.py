"""The gossip port under abuse: the stream preamble, connection limits,
deadlines, the byte budget, running out of file descriptors, kernel drops.

Transports run in-process on 127.0.0.1; other loopback addresses
(127.0.0.2, ...) stand for other sources. Behaviour is asserted on the
transport's counters, never on how long anything took."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import attrs
import pytest
import trio

from membership.state import Address
from peer.runtime.stream_auth import (
    MAX_SEEN,
    NONCE_SIZE,
    PREAMBLE_SIZE,
    PreambleChecker,
    PreambleRefusal,
    PreambleSealer,
)
from peer.runtime.transport import InboundLimits, Transport, source_of, udp_kernel_drops
from peer.runtime.wire import MAX_STREAM_FRAME, REPLAY_WINDOW, Keyring

K1, K2 = b"1" * 32, b"2" * 32
NOW = 1_700_000_000_000
WINDOW_MS = round(REPLAY_WINDOW * 1000)  # the codec's, and the preamble's
FRAME = b"\x01\x00a frame"  # the transport does not look inside a frame


def nonce(n: int) -> bytes:
    return n.to_bytes(NONCE_SIZE, "big")


# -- the preamble, pure -------------------------------------------------------------------


def test_a_keyed_preamble_verifies_under_any_ring_key_once() -> None:
    sealed = PreambleSealer(Keyring([K2, K1])).seal(1234, now_ms=NOW, nonce=nonce(1))
    assert len(sealed) == PREAMBLE_SIZE
    checker = PreambleChecker(Keyring([K1, K2]), max_length=MAX_STREAM_FRAME)
    preamble = checker.check(sealed, now_ms=NOW + 500)
    assert not isinstance(preamble, PreambleRefusal) and preamble.length == 1234
    assert checker.check(sealed, now_ms=NOW + 600) is PreambleRefusal.REPLAYED


def test_preambles_refused_by_reason() -> None:
    keyed = PreambleChecker(Keyring([K1]), max_length=1000)
    seal = PreambleSealer(Keyring([K1])).seal
    assert keyed.check(PreambleSealer(Keyring([K2])).seal(10, now_ms=NOW, nonce=nonce(1)), now_ms=NOW) is PreambleRefusal.BAD_MAC
    assert keyed.check(PreambleSealer(None).seal(10, now_ms=NOW, nonce=nonce(2)), now_ms=NOW) is PreambleRefusal.BAD_MAC
    assert keyed.check(seal(1001, now_ms=NOW, nonce=nonce(3)), now_ms=NOW) is PreambleRefusal.BAD_PREAMBLE  # over the limit
    assert keyed.check(seal(0, now_ms=NOW, nonce=nonce(4)), now_ms=NOW) is PreambleRefusal.BAD_PREAMBLE
    legacy = (100).to_bytes(4, "big") + bytes(PREAMBLE_SIZE - 4)  # an older peer's length prefix and frame
    assert keyed.check(legacy, now_ms=NOW) is PreambleRefusal.BAD_PREAMBLE
    assert keyed.check(seal(10, now_ms=NOW - WINDOW_MS - 1, nonce=nonce(5)), now_ms=NOW) is PreambleRefusal.STALE
    assert keyed.check(seal(10, now_ms=NOW + WINDOW_MS + 1, nonce=nonce(6)), now_ms=NOW) is PreambleRefusal.STALE
    tampered = bytearray(seal(10, now_ms=NOW, nonce=nonce(7)))
    tampered[-40] ^= 1  # the length's last byte: 10 becomes 11
    assert keyed.check(bytes(tampered), now_ms=NOW) is PreambleRefusal.BAD_MAC
    open_cluster = PreambleChecker(None, max_length=1000)
    assert open_cluster.check(seal(10, now_ms=NOW, nonce=nonce(8)), now_ms=NOW) is PreambleRefusal.BAD_MAC
    assert not isinstance(open_cluster.check(PreambleSealer(None).seal(10, now_ms=0, nonce=nonce(0)), now_ms=NOW), PreambleRefusal)


def test_the_nonce_set_stays_bounded_and_lets_no_replay_through() -> None:
    seal = PreambleSealer(Keyring([K1])).seal
    checker = PreambleChecker(Keyring([K1]), max_length=1000, max_seen=4)
    sealed = [seal(10, now_ms=NOW - (6 - i) * 1000, nonce=nonce(i)) for i in range(6)]  # one a second, all past
    assert all(not isinstance(checker.check(each, now_ms=NOW), PreambleRefusal) for each in sealed)
    assert len(checker.seen) == 4
    # The two forgotten ones may not come again: they are no newer than what was forgotten.
    assert [checker.check(each, now_ms=NOW) for each in sealed] == [PreambleRefusal.STALE] * 2 + [PreambleRefusal.REPLAYED] * 4
    # Out of the window, preambles are stale.
    assert checker.check(sealed[5], now_ms=NOW + 2 * WINDOW_MS) is PreambleRefusal.STALE
    assert MAX_SEEN >= 4096


def test_sources_are_addresses_and_ipv6_prefixes() -> None:
    assert source_of("10.0.0.7") == "10.0.0.7"
    assert source_of("::ffff:10.0.0.7") == "10.0.0.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_of("fe80::1%eth0") == "fe80::/64"


# -- transports on loopback ---------------------------------------------------------------

FAST = InboundLimits(
    connections=24, shared_from=8, per_source=4, preamble_timeout=30.0, body_grace=30.0, budget=2500, budget_per_source=2000
)


@attrs.define
class Receiver:
    transport: Transport
    frames: list[tuple[Address, bytes]]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.transport.port)

    def refused(self) -> dict[str, int]:
        return {reason: count for reason, count in self.transport.stats.streams_refused.items() if count}


async def receiver(nursery: trio.Nursery, keyring: Keyring | None = None, limits: InboundLimits = FAST, max_frame: int = 1000) -> Receiver:
    transport = Transport(("127.0.0.1", 0), max_stream_frame=max_frame, keyring=keyring, limits=limits)
    await transport.bind()
    frames: list[tuple[Address, bytes]] = []

    async def handle(src: Address, frame: bytes, reliable: bool) -> None:
        assert reliable
        frames.append((src, frame))

    nursery.start_soon(transport.serve, handle)
    nursery.cancel_scope.deadline = trio.current_time() + 60  # whatever goes wrong, the test ends
    return Receiver(transport, frames)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def connect(target: tuple[str, int], source: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(target)
    return sock


async def send_frame(target: tuple[str, int], frame: bytes, keyring: Keyring | None = None, source: str = "127.0.0.1") -> None:
    sock = await connect(target, source)
    with sock:
        preamble = PreambleSealer(keyring).seal(len(frame), now_ms=_wall_ms(), nonce=os.urandom(NONCE_SIZE))
        await sock.send(preamble + frame)
        await closed_by_peer(sock)


def _wall_ms() -> int:
    return int(time.time() * 1000)


async def closed_by_peer(sock: trio.socket.SocketType) -> None:
    """Until the other side closes the connection (it read what it wanted)."""
    try:
        while await sock.recv(4096):
            pass
    except OSError:
        pass


async def wait_until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_frames_between_transports_keyed_and_a_wrong_key_refused(nursery: trio.Nursery) -> None:
    target = await receiver(nursery, Keyring([K1]))
    sender = Transport(("127.0.0.1", 0), max_stream_frame=1000, keyring=Keyring([K1]))
    stranger = Transport(("127.0.0.1", 0), max_stream_frame=1000, keyring=Keyring([K2]))
    for each in (sender, stranger):
        await each.bind()
    sender.start_stream(nursery, target.address, FRAME)
    stranger.start_stream(nursery, target.address, b"\x01\x00from a stranger")
    await wait_until(lambda: target.frames and target.refused() == {"bad_mac": 1})
    assert [frame for _, frame in target.frames] == [FRAME]
    assert target.transport.stats.streams_in == 1 and target.transport.inbound_streams == 0


async def test_a_bad_mac_is_refused_before_the_frame_is_read(nursery: trio.Nursery) -> None:
    target = await receiver(nursery, Keyring([K1]), max_frame=MAX_STREAM_FRAME, limits=InboundLimits())
    sock = await connect(target.address)
    with sock:
        await sock.send(PreambleSealer(Keyring([K2])).seal(MAX_STREAM_FRAME, now_ms=_wall_ms(), nonce=os.urandom(NONCE_SIZE)))
        await closed_by_peer(sock)  # closed after the preamble: the 8 MiB it announced are never asked for
    assert target.refused() == {"bad_mac": 1}
    assert target.transport.budget.used == 0 and target.transport.stats.bytes_in == 0 and not target.frames


async def test_a_replayed_preamble_and_frame_are_refused(nursery: trio.Nursery) -> None:
    target = await receiver(nursery, Keyring([K1]))
    captured = PreambleSealer(Keyring([K1])).seal(len(FRAME), now_ms=_wall_ms(), nonce=os.urandom(NONCE_SIZE)) + FRAME
    for _ in range(3):
        sock = await connect(target.address)
        with sock:
            await sock.send(captured)
            await closed_by_peer(sock)
    assert len(target.frames) == 1 and target.refused() == {"replayed": 2}


async def test_idle_connections_from_one_source_do_not_stop_frames_from_it_or_others(nursery: trio.Nursery) -> None:
    target = await receiver(nursery, Keyring([K1]))
    idle = [await connect(target.address) for _ in range(FAST.connections * 2)]  # twice every slot there is
    await wait_until(lambda: target.transport.stats.streams_refused["per_source"] >= FAST.connections * 2 - FAST.shared_from)
    assert target.transport.inbound_streams <= FAST.shared_from
    # Each new connection from the flooding address pushes out its oldest idle one.
    await send_frame(target.address, b"\x01\x00same address", Keyring([K1]))
    await send_frame(target.address, b"\x01\x00another address", Keyring([K1]), source="127.0.0.2")
    await wait_until(lambda: len(target.frames) == 2)
    assert sorted(src[0] for src, _ in target.frames) == ["127.0.0.1", "127.0.0.2"]
    for sock in idle:
        sock.close()


async def test_a_full_house_makes_room_for_a_fresh_source(nursery: trio.Nursery) -> None:
    target = await receiver(nursery, Keyring([K1]))
    # Idle connections from six addresses, as many as each may hold: every slot taken.
    idle = [await connect(target.address, f"127.0.0.{10 + i // FAST.per_source}") for i in range(FAST.connections)]
    await wait_until(lambda: target.transport.inbound_streams == FAST.connections)
    await send_frame(target.address, FRAME, Keyring([K1]), source="127.0.0.2")
    await wait_until(lambda: len(target.frames) == 1)
    assert target.refused() == {"total": 1}  # one idle connection gave way
    for sock in idle:
        sock.close()


async def test_silent_and_slow_connections_are_closed_and_counted(nursery: trio.Nursery) -> None:
    target = await receiver(nursery, Keyring([K1]), limits=attrs.evolve(FAST, preamble_timeout=0.2, body_grace=0.2, min_body_rate=100))
    silent = await connect(target.address)
    slow = await connect(target.address)
    await slow.send(PreambleSealer(Keyring([K1])).seal(1000, now_ms=_wall_ms(), nonce=os.urandom(NONCE_SIZE)) + b"x" * 10)
    with silent, slow:
        await closed_by_peer(silent)
        await closed_by_peer(slow)
    assert target.refused() == {"idle_closed": 1, "slow_closed": 1}
    await wait_until(lambda: target.transport.inbound_streams == 0 and target.transport.budget.used == 0)


async def test_an_open_cluster_buffers_within_its_budget_and_still_takes_small_frames(nursery: trio.Nursery) -> None:
    target = await receiver(nursery, None)
    big = []
    for _ in range(6):  # each announces 1000 bytes and sends a part: 2000 may be held per source
        sock = await connect(target.address)
        await sock.send(PreambleSealer(None).seal(1000, now_ms=0, nonce=bytes(NONCE_SIZE)) + b"x" * 100)
        big.append(sock)
    await wait_until(lambda: target.transport.stats.streams_refused["budget"] == 4)
    assert target.transport.budget.used == 2000
    await send_frame(target.address, FRAME, source="127.0.0.2")
    await wait_until(lambda: len(target.frames) == 1)
    # A third source may have what is left of the budget, and no more.
    await send_frame(target.address, b"\x01\x00" + b"y" * 998, source="127.0.0.3")
    assert target.refused() == {"budget": 5} and len(target.frames) == 1
    for sock in big:
        sock.close()
    await wait_until(lambda: target.transport.budget.used == 0)


def test_kernel_drops_are_read_for_our_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        if not sys.platform.startswith("linux"):
            assert udp_kernel_drops(udp) is None
            return
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        udp.bind(("127.0.0.1", 0))
        assert udp_kernel_drops(udp) == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):  # nobody reads: the small buffer overflows
                sender.sendto(b"x" * 1000, udp.getsockname())
        assert udp_kernel_drops(udp) > 0  # type: ignore[operator]


async def test_the_transport_reports_kernel_drops(nursery: trio.Nursery) -> None:
    target = await receiver(nursery)
    drops = target.transport.stats.udp_kernel_drops
    assert drops == 0 if sys.platform.startswith("linux") else drops is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_NOFILE and /proc")
def test_out_of_file_descriptors_the_listener_refuses_and_recovers(tmp_path: object) -> None:
    """In a child process with few descriptors: connections beyond them are
    taken with the spare descriptor and closed, counted, and once
    descriptors are free again frames arrive."""
    script = textwrap.dedent(
        """
        import json, os, resource, socket, sys, trio
        from peer.runtime.transport import Transport

        async def main():
            transport = Transport(("127.0.0.1", 0), max_stream_frame=1000)
            await transport.bind()
            frames = []
            async def handle(src, frame, reliable):
                frames.append(frame)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.serve, handle)
                clients = []
                for _ in range(5):
                    client = socket.socket()
                    client.setblocking(False)
                    clients.append(client)
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
                hog = []
                try:
                    while True:
                        hog.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    pass
                # Out of descriptors: clients connect (the kernel completes the handshake) and are refused.
                for client in clients:
                    client.connect_ex(("127.0.0.1", transport.port))
                with trio.move_on_after(20):
                    while transport.stats.streams_refused["no_fd"] < 5:
                        await trio.sleep(0.01)
                for fd in hog:
                    os.close(fd)
                for client in clients:
                    client.close()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                transport.start_stream(nursery, ("127.0.0.1", transport.port), b"after")
                with trio.move_on_after(20):
                    while not frames:
                        await trio.sleep(0.01)
                print(json.dumps({"refused": transport.stats.streams_refused, "frames": [f.decode() for f in frames]}))
                nursery.cancel_scope.cancel()

        trio.run(main)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["refused"]["no_fd"] >= 5 and report["frames"] == ["after"]
    assert done.stderr.count("out of file descriptors") == 1  # logged once for the episode


@pytest.mark.parametrize("host", ["127.0.0.1\x00evil", "h\udcffst", "x" * 300, "slow.example"])
async def test_a_send_to_an_address_no_socket_takes_is_counted_not_raised(nursery: trio.Nursery, host: str) -> None:
    # A mutated claim once named such a host and the agent exited on sendto's TypeError.
    sender = Transport(("127.0.0.1", 0), max_stream_frame=1000, keyring=Keyring([K1]))
    await sender.bind()
    await sender.send_datagram((host, 7946), FRAME)
    await sender.send_datagram(("127.0.0.1", 70000), FRAME)
    sender.start_stream(nursery, (host, 7946), FRAME)
    await wait_until(lambda: sender.stats.send_errors == 3)
    sender.close()
