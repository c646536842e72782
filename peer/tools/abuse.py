"""Hostile input and overload against live agents: ``python -m peer.tools.abuse``.

    python -m peer.tools.abuse [--attacks a,b,...] [--quick] [--json] [--nodes N]
                               [--agent-arg=--some-option=value ...] [--api-token-file F] [--chromium PATH] [--keep DIR]

Theory of operation. A session starts ``--nodes`` (3) ``peer agent`` processes on
127.0.0.1 through ``LocalCluster`` (every PID tracked and killed on the way out,
whatever happened), all with one cluster key, each with every other as a seed, and
``CRON_JOBS`` cron jobs ``@every 1s`` in mode ``one`` that append a line per run to
a journal file (``peer.testing.samples:journal``): the journal, not what the agents
say, shows whether ticks kept running. The first agent is the target of every
attack. While the cluster starts, the gossip traffic on the loopback interface is
captured (``AF_PACKET``; when that is not permitted, frames are encoded instead
with ``peer.runtime.wire.Codec`` and the key), so the mutated frames start from
real ones, replicated job definitions and run records included.

Each attack of issue 13 runs in the same frame:

1. the cluster is at its baseline (every agent running, every view showing every
   agent alive and no other live member, each job with one agreed owner); if not,
   for instance after an attack that had an effect, a fresh cluster is started;
2. before: the /metrics of every agent, views, job owners, each log's length, the
   target's CPU time, RSS, threads and file descriptors, the kernel's drop counter
   of the target's UDP socket; two one-offs are submitted through the other agents;
3. the attack runs, bounded in count and in time, while a monitor samples every
   ~100 ms the processes (/proc), the target's ``/health`` latency (a fresh
   connection each time), and every ~0.5 s every agent's view and job owners;
4. a settle period, then after: the same figures again; the report says what was
   sent, what the target counted (the change of every refusal-like counter in its
   /metrics), what went uncounted where every item should have been, crashes
   (exit, ``Traceback`` lines in the logs), the cluster effect (members added,
   removed or seen in another state, membership events on any agent, owners that
   moved or name no agent, jobs gone, cron ticks not run, one-offs not succeeded),
   CPU, RSS, threads, fds, and ``/health`` latency (max, p99, failures).

``effects`` lists every departure from the issue's targets that was seen; an
attack that still works on this build shows effects, and the report says so.

Options the agents should run with (an API token, encryption...) are passed
through ``--agent-arg``. Features are found by trying: when ``peer agent --help``
offers an API token option, the session makes a token, gives it to the agents and
sends it on its own requests (``--api-token-file`` gives the harness a token the
agents got through ``--agent-arg`` instead).

Counts: ``--quick`` runs each attack in seconds (development, tests); the default
runs the issue's figures (1,000,000 datagrams, 100,000 re-signed frames...).
Everything goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import random
import re
import resource
import secrets
import select
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import msgpack

from membership.messages import Alive, Dead, Ping, StateDigest
from membership.state import Address
from peer.control.client import quote
from peer.runtime.keys import generate_key, parse_keys
from peer.runtime.logs import quiet_http_libraries
from peer.runtime.wire import ENCRYPTED, KEYED_HEADER_SIZE, MAX_STREAM_FRAME, SIGNED, TAG_SIZE, VERSION, Codec, FrameTooLarge, Keyring
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for
from peer.testing.processes import LOOPBACK, Ports, port_free
from peer.tools.chaos import JournalLine, read_journal, ticks_between, toml_jobs

log = logging.getLogger("peer.abuse")

CRON_JOBS = 3
EVERY_MS = 1000
TICK_SLACK_MS = 3000  # ticks due this close to the end are not owed yet
SAMPLE_EVERY = 0.1  # seconds between samples of the processes and of /health
VIEW_EVERY = 0.5  # seconds between looks at every agent's view and owners
HEALTH_TIMEOUT = 2.0
API_TIMEOUT = 5.0
START_TIMEOUT = 60.0
BASELINE_WAIT = 15.0  # how long a cluster may take to get back to its baseline
HEALTH_TARGET_MS = 100.0
RSS_TARGET_KIB = 50 * 1024
UDP_QUEUE_HIGH = 64 * 1024  # bytes waiting in the target's socket: pause sending above this
# Counters whose change is a refusal or a drop: today's names and the names the
# defences are likely to give theirs.
REFUSAL = re.compile(r"drop|refus|reject|denied|unauth|forbid|replay|limit|malformed|bad_|overload|throttl|too_|timeout|closed|error")
FRAME_DROPS = ("peer_frames_dropped", "peer_wire_dropped")
TOKEN_OPTIONS = ("--api-token-file", "--api-token")
SCHEDULER_TROUBLE = re.compile(r"peer_scheduler_(ticks_missed|lost|bad_records|failovers|claims_lost)_total")

ATTACKS = (
    "datagrams", "resigned", "replay", "idle_streams", "big_frames", "long_polls",
    "dead_incarnation", "fake_members", "runs_flood", "api", "browser", "names",
)


@attrs.frozen
class Scale:
    """How much of each attack; ``QUICK`` and ``FULL``."""

    datagrams: int
    resigned: int
    replays: int
    idle_connections: int
    join_wait: float  # seconds a new agent is given to join through the target
    big_frames: int  # concurrent connections
    big_rounds: int
    long_polls: int
    hold: float  # seconds the long-polls are left abandoned before looking
    sleepers: int
    sleep: float
    submits: int
    fake_members: int
    fake_datagrams: int
    observe: float  # seconds to watch after a one-shot attack
    api_repeats: int
    limit: float  # seconds an attack may send for at most
    settle: float


QUICK = Scale(
    datagrams=20_000, resigned=3_000, replays=2_000, idle_connections=80, join_wait=12.0, big_frames=64, big_rounds=1,
    long_polls=300, hold=4.0, sleepers=150, sleep=8.0, submits=400, fake_members=1000, fake_datagrams=50, observe=10.0,
    api_repeats=10, limit=15.0, settle=2.0,
)
FULL = Scale(
    datagrams=1_000_000, resigned=100_000, replays=100_000, idle_connections=96, join_wait=40.0, big_frames=64, big_rounds=5,
    long_polls=1100, hold=20.0, sleepers=2000, sleep=60.0, submits=10_000, fake_members=1000, fake_datagrams=50, observe=45.0,
    api_repeats=100, limit=900.0, settle=8.0,
)


# -- looking at processes and sockets -------------------------------------------------------


@attrs.frozen
class ProcFigures:
    cpu_seconds: float
    rss_kib: int
    threads: int
    fds: int


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_figures(pid: int) -> ProcFigures | None:
    """CPU time (user + system), RSS, threads and open fds of ``pid``; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
        rss = threads = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return ProcFigures(cpu, rss, threads, fds)


def udp_socket_state(port: int) -> tuple[int, int] | None:
    """(bytes queued, datagrams the kernel dropped) of the UDP socket bound to
    ``port`` on IPv4, from /proc/net/udp; None if there is none."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and int(fields[1].split(":")[1], 16) == port:
            return int(fields[4].split(":")[1], 16), int(fields[12])
    return None


def count_tracebacks(path: Path, offset: int) -> int:
    """Lines naming a traceback in the log after ``offset`` bytes."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return sum(1 for line in file if b"Traceback" in line)
    except OSError:
        return 0


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: ``name{labels}`` -> value."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples


def metric_deltas(before: Mapping[str, float], after: Mapping[str, float], keep: Callable[[str], bool]) -> dict[str, float]:
    """The counters that changed (``_total`` samples, and those ``keep`` names)."""
    deltas = {}
    for name, value in after.items():
        if name.split("{")[0].endswith(("_created",)) or not keep(name):
            continue
        delta = value - before.get(name, 0.0)
        if delta:
            deltas[name] = round(delta, 3)
    return deltas


def is_refusal(name: str) -> bool:
    base = name.split("{")[0]
    return base.endswith("_total") and base.startswith("peer_") and bool(REFUSAL.search(name))


def frame_drops(deltas: Mapping[str, float]) -> int:
    return int(sum(value for name, value in deltas.items() if name.startswith(FRAME_DROPS)))


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


# -- talking to the agents -------------------------------------------------------------------


class Api:
    """One agent's API, with the session's token when it has one. One per
    thread: httpx clients are not shared between threads here."""

    def __init__(self, addr: Address, token: str | None) -> None:
        self.addr = addr
        self.token = token
        self.base = f"http://{addr[0]}:{addr[1]}"
        self.client = httpx.Client(timeout=API_TIMEOUT)

    def close(self) -> None:
        self.client.close()

    def headers(self, token: bool = True, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if token and self.token else {}
        headers.update(extra or {})
        return headers

    def request(
        self, method: str, path: str, *, token: bool = True, headers: Mapping[str, str] | None = None,
        content: bytes | None = None, body: Any = None, timeout: float = API_TIMEOUT,
    ) -> httpx.Response:
        all_headers = self.headers(token, headers)
        if body is not None:
            content = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        return self.client.request(method, self.base + path, headers=all_headers, content=content, timeout=timeout)

    def get(self, path: str, timeout: float = API_TIMEOUT) -> Any:
        response = self.request("GET", path, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def metrics(self) -> dict[str, float]:
        response = self.request("GET", "/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    def view(self) -> dict[str, str]:
        return {m["name"]: m["status"] for m in self.get("/members")["members"]}

    def owners(self) -> dict[str, str | None]:
        return {job["id"]: job.get("owner") for job in self.get("/jobs")["jobs"]}


def health_latency(addr: Address) -> float | None:
    """Milliseconds for ``GET /health`` on a new connection, or None if it
    failed or took over ``HEALTH_TIMEOUT``."""
    start = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=HEALTH_TIMEOUT) as sock:
            sock.settimeout(max(0.05, HEALTH_TIMEOUT - (time.monotonic() - start)))
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return None
    if not answer.startswith(b"HTTP/1.1 200"):
        return None
    return (time.monotonic() - start) * 1000


# -- capturing real frames ---------------------------------------------------------------------


class Capture:
    """UDP payloads sent to the agents' gossip ports on the loopback interface,
    deduplicated, at most ``limit`` of them: the real frames the mutations
    start from. Needs CAP_NET_RAW; ``available`` says whether it got it."""

    def __init__(self, ports: Iterable[int], limit: int = 3000) -> None:
        self.ports = set(ports)
        self.limit = limit
        self.frames: dict[bytes, int] = {}  # payload -> destination port
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = False
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))  # IPv4 packets
            self._sock.bind(("lo", 0x0800))
            self._sock.settimeout(0.2)
            self.available = True
        except (OSError, AttributeError) as error:
            log.info("no capture of loopback traffic (%s): frames will be encoded instead", error)

    def start(self) -> None:
        if self.available:
            self._thread = threading.Thread(target=self._run, name="abuse-capture", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.available:
            self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.frames) < self.limit:
            try:
                packet, where = self._sock.recvfrom(70_000)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(where) > 2 and where[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows each packet twice
            if len(packet) < 28 or packet[9] != 17:  # not UDP
                continue
            header = (packet[0] & 0x0F) * 4
            port = struct.unpack(">H", packet[header + 2 : header + 4])[0]
            if port in self.ports:
                self.frames.setdefault(packet[header + 8 :], port)


class RawMessage:
    """A message as its wire list, whatever it holds, for ``Codec.encode``."""

    def __init__(self, wire: Any) -> None:
        self.wire = wire

    def to_wire(self) -> Any:
        return self.wire


def frame_messages(frame: bytes) -> list[Any] | None:
    """The wire lists inside a signed (not encrypted) frame of today's format, or None."""
    if len(frame) < KEYED_HEADER_SIZE + TAG_SIZE or frame[0] != VERSION or frame[1] != SIGNED:
        return None
    try:
        messages = msgpack.unpackb(frame[KEYED_HEADER_SIZE:-TAG_SIZE], raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - anything that is not a frame we can read
        return None
    return messages if isinstance(messages, list) else None


# -- the report -----------------------------------------------------------------------------


@attrs.define
class Outcome:
    """What an attack itself tells: how much it sent, whether every item should
    have been dropped and counted, its own findings and effects, members it added
    on purpose, and a step to run once the after-snapshot is taken."""

    sent: int
    what: str
    every_one_dropped: bool = False  # each item sent must show in the target's counters...
    may_pass: int = 0  # ...but this many (a replay's first copy)
    count_with: Callable[[Mapping[str, float]], int] | None = None  # what counts an item (default: frames dropped)
    frames: bool = False  # signed frames: say how many were decoded (not dropped)
    dirty: bool = False  # leaves load behind (runs, polls): the next attack gets a fresh cluster
    findings: dict[str, Any] = attrs.Factory(dict)
    effects: list[str] = attrs.Factory(list)
    ignore: set[str] = attrs.Factory(set)
    post: Callable[[Outcome], None] | None = None


@attrs.define
class AttackReport:
    attack: str
    target: str
    seconds: float = 0.0
    sent: int = 0
    what: str = ""
    counted: dict[str, float] = attrs.Factory(dict)  # refusal-like counters' change on the target
    frames_dropped: int = 0
    uncounted: int | None = None  # where every item should be dropped: those not counted
    kernel_drops: int | None = None
    target_alive: bool = True
    exits: list[str] = attrs.Factory(list)
    tracebacks: int = 0
    tracebacks_elsewhere: int = 0
    cluster: dict[str, Any] = attrs.Factory(dict)
    cpu_seconds: float | None = None
    rss_kib: dict[str, int | None] = attrs.Factory(dict)
    threads: dict[str, int | None] = attrs.Factory(dict)
    fds: dict[str, int | None] = attrs.Factory(dict)
    health: dict[str, Any] = attrs.Factory(dict)
    findings: dict[str, Any] = attrs.Factory(dict)
    effects: list[str] = attrs.Factory(list)
    error: str | None = None

    @property
    def verdict(self) -> str:
        return "error" if self.error else "EFFECTS" if self.effects else "skipped" if "skipped" in self.findings else "held"

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "verdict": self.verdict}


# -- the monitor ------------------------------------------------------------------------------


class Monitor:
    """Samples while an attack runs: every agent's process, the target's
    /health, every agent's view and job owners."""

    def __init__(self, session: Session, target: AgentProcess, before_views: Mapping[str, Mapping[str, str]]) -> None:
        self.session = session
        self.target = target
        self.before_views = before_views
        self.agents = list(session.agents)
        self.proc: dict[str, list[ProcFigures]] = {agent.name: [] for agent in self.agents}
        self.latencies: list[float] = []
        self.health_failures = 0
        self.deviations: set[str] = set()  # "observer: member status" never expected
        self.unknown_owners: set[str] = set()
        self.owner_changes: set[str] = set()
        self.view_failures: Counter[str] = Counter()
        self.ignore: set[str] = set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._proc_loop, daemon=True),
            threading.Thread(target=self._health_loop, daemon=True),
            threading.Thread(target=self._views_loop, daemon=True),
        ]

    def __enter__(self) -> Monitor:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _proc_loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            for agent in self.agents:
                if agent.process is not None and (figures := proc_figures(agent.pid)) is not None:
                    self.proc[agent.name].append(figures)

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            latency = health_latency(self.target.api)
            if latency is None:
                self.health_failures += 1
            else:
                self.latencies.append(latency)
            self._stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - start)))

    def _views_loop(self) -> None:
        apis = {agent.name: Api(agent.api, self.session.token) for agent in self.agents}
        before_owners = self.session.owners_before
        names = {agent.name for agent in self.session.agents}
        try:
            while not self._stop.wait(VIEW_EVERY):
                for agent in self.agents:
                    api = apis[agent.name]
                    try:
                        view = api.view()
                        owners = api.owners()
                    except (httpx.HTTPError, ValueError, KeyError):
                        self.view_failures[agent.name] += 1
                        continue
                    expected = self.before_views.get(agent.name, {})
                    for member, status in view.items():
                        if member in self.ignore or expected.get(member) == status:
                            continue
                        if member not in expected and status not in ("alive", "suspect"):
                            continue  # a member never live: not admitted into the view
                        self.deviations.add(f"{agent.name} saw {_printable(member)} {status}")
                    for job, owner in owners.items():
                        if owner is not None and owner not in names and owner not in self.ignore:
                            self.unknown_owners.add(f"{agent.name}: {job} -> {_printable(owner)}")
                        elif before_owners.get(job) not in (None, owner) and owner not in self.ignore:
                            self.owner_changes.add(f"{agent.name}: {job} {before_owners.get(job)} -> {owner}")
        finally:
            for api in apis.values():
                api.close()


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode()[:80]


# -- the session -------------------------------------------------------------------------------


class Session:
    """The cluster under attack, started again whenever an attack left it
    away from its baseline."""

    def __init__(
        self, workdir: Path, *, scale: Scale, nodes: int = 3, profile: str = "local", agent_args: Sequence[str] = (),
        token: str | None = None, seed: int = 0, chromium: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.chromium = chromium  # the browser attack's Chromium, else found on PATH
        self.scale = scale
        self.nodes = nodes
        self.profile = profile
        self.agent_args = list(agent_args)
        self.key = generate_key()
        self.keyring: Keyring = parse_keys([self.key], "the session's key")
        self.codec = Codec(self.keyring, wall_clock=time.time, random_bytes=os.urandom)
        self.rng = random.Random(seed)
        self.token = token
        self.token_option: str | None = None
        if token is None:
            self.token_option = detect_token_option()
            if self.token_option is not None:
                self.token = secrets.token_urlsafe(24)
        self.cluster: LocalCluster | None = None
        self.ports = Ports()
        self.clusters = 0
        self.agents: list[AgentProcess] = []
        self.journal = workdir / "journal.txt"
        self.captured: list[tuple[bytes, int]] = []
        self.capture_available = False
        self.owners_before: dict[str, str | None] = {}
        self.jobs = [f"abuse-cron-{index}" for index in range(CRON_JOBS)]

    @property
    def target(self) -> AgentProcess:
        return self.agents[0]

    def api(self, agent: AgentProcess) -> Api:
        return Api(agent.api, self.token)

    def extra_args(self) -> list[str]:
        args = []
        if self.token is not None and self.token_option == "--api-token-file":
            token_file = self.workdir / "api-token"
            token_file.write_text(self.token + "\n")
            token_file.chmod(0o600)
            args += ["--api-token-file", str(token_file)]
        elif self.token is not None and self.token_option == "--api-token":
            args += ["--api-token", self.token]
        return args + self.agent_args

    def start_cluster(self) -> None:
        """A fresh cluster at its baseline; a second try if the first would not start."""
        try:
            self._start_cluster()
        except (RuntimeError, TimeoutError) as error:
            log.warning("the cluster did not start (%s); trying once more", str(error).splitlines()[0])
            self._start_cluster()

    def _start_cluster(self) -> None:
        self.close()
        self.clusters += 1
        workdir = self.workdir / f"cluster-{self.clusters}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.journal = workdir / "journal.txt"
        jobs_file = workdir / "jobs.toml"
        jobs = [{
            "id": job, "schedule": "@every 1s", "mode": "one", "call": "peer.testing.samples:journal",
            "kwargs": {"path": str(self.journal)},
        } for job in self.jobs]
        jobs_file.write_text(toml_jobs(jobs))
        self.cluster = LocalCluster(workdir, profile=self.profile, key=self.key, extra_args=["--jobs", str(jobs_file)])
        # One Ports for every cluster of the session: a port of a killed cluster
        # is never handed out again (its sockets may linger).
        self.cluster.ports = self.ports
        ports = [self.cluster.ports.take() for _ in range(self.nodes)]
        capture = Capture(ports) if not self.captured else None
        if capture is not None:
            capture.start()
        try:
            addresses = [f"{LOOPBACK}:{port}" for port in ports]
            self.agents = [
                self.cluster.add(
                    f"node-{index}", port=port, extra_args=self.extra_args(),
                    seeds=[address for other, address in enumerate(addresses) if other != index],
                )
                for index, port in enumerate(ports)
            ]
            self.cluster.wait_api(self.agents, START_TIMEOUT)
            wait_for(self.at_baseline, START_TIMEOUT, "the cluster to form and agree on the jobs' owners", interval=0.5)
            if capture is not None:
                time.sleep(2.0)  # some steady-state gossip too
        finally:
            if capture is not None:
                capture.stop()
                self.capture_available = capture.available
                self.captured = list(capture.frames.items())
        log.info("cluster %d ready: %s (%d frames captured)", self.clusters, ", ".join(a.name for a in self.agents), len(self.captured))

    def at_baseline(self) -> bool:
        """Every agent runs, sees every agent alive and no other live member,
        is ready, and names the same owner (an agent) for every job."""
        names = {agent.name for agent in self.agents}
        owners = []
        for agent in self.agents:
            if not agent.running:
                return False
            api = self.api(agent)
            try:
                view = api.view()
                if {n for n, s in view.items() if s in ("alive", "suspect")} != names or any(view[n] != "alive" for n in names):
                    return False
                if not api.get("/health/ready", timeout=2.0).get("ready"):
                    return False
                owners.append(api.owners())
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            finally:
                api.close()
        return bool(owners) and all(o == owners[0] for o in owners) and set(self.jobs) <= set(owners[0]) and all(
            owners[0][job] in names for job in self.jobs
        )

    def ensure_cluster(self) -> None:
        if self.cluster is not None and all(agent.running for agent in self.agents):
            try:
                wait_for(self.at_baseline, BASELINE_WAIT, "the cluster's baseline", interval=0.5)
                return
            except TimeoutError:
                log.info("the cluster did not come back to its baseline: starting a fresh one")
        self.start_cluster()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    # -- frames -------------------------------------------------------------------------

    def udp_send(self, sock: socket.socket, frame: bytes, addr: Address, sent: int) -> None:
        """Send one datagram, pausing while the target's socket holds over
        ``UDP_QUEUE_HIGH`` bytes unread: the attack measures the agent, not the
        kernel's buffer (whose drops are reported apart)."""
        if sent % 8 == 0:
            deadline = time.monotonic() + 5.0
            while (state := udp_socket_state(addr[1])) is not None and state[0] > UDP_QUEUE_HIGH and time.monotonic() < deadline:
                time.sleep(0.002)
        try:
            sock.sendto(frame, addr)
        except OSError:
            time.sleep(0.01)

    def wait_udp_drained(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (state := udp_socket_state(port)) is not None and state[0] > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)

    def templates(self) -> list[bytes]:
        """Valid signed datagrams: captured ones sent to the target when
        there are any, else frames encoded here."""
        port = self.target.bind[1]
        frames = [frame for frame, dst in self.captured if dst == port] or [frame for frame, _ in self.captured]
        if frames:
            return frames
        me, other = self.target, self.agents[1]
        return [
            self.codec.encode([Ping(self.rng.randrange(1 << 30), me.name, other.bind)]),
            self.codec.encode([Alive(other.name, 1, other.bind, b"ready")]),
            self.codec.encode([StateDigest(other.name, other.bind, self.rng.randrange(1 << 63))]),
            self.codec.encode([Alive(a.name, 1, a.bind, b"ready") for a in self.agents]),
        ]

    def signed(self, wires: Sequence[Any]) -> bytes | None:
        """``wires`` signed as one datagram by the session's codec (whatever
        its format is on this build); None if it does not fit or pack."""
        try:
            return self.codec.encode([RawMessage(wire) for wire in wires])
        except (FrameTooLarge, ValueError, TypeError, OverflowError):
            return None


def detect_token_option() -> str | None:
    """The API token option ``peer agent`` offers on this build, if any."""
    try:
        answer = subprocess.run(
            [sys.executable, "-m", "peer", "agent", "--help"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return next((option for option in TOKEN_OPTIONS if re.search(re.escape(option) + r"\b(?!-)", answer.stdout)), None)


# -- mutations ------------------------------------------------------------------------------------

HUGE_INTS = (1 << 64) - 1, (1 << 63) - 1, 1 << 63, -1, -(1 << 63), 0, 1 << 32
NASTY_TEXT = ("\n", "\x00", "\r\nFORGED-LOG-LINE ", "\x1b[31m", "\u2028", "\ufffd")


def random_datagram(rng: random.Random) -> bytes:
    """Random bytes, of every size a datagram has; some start with a valid
    header so they reach the MAC check."""
    size = rng.choice((rng.randrange(0, 4), rng.randrange(4, 64), rng.randrange(64, 1500), rng.randrange(64, 1500),
                       rng.randrange(1500, 9000)))
    data = rng.randbytes(size)
    roll = rng.random()
    if roll < 0.25 and size >= 2:
        data = bytes((VERSION, SIGNED)) + data[2:]
    elif roll < 0.30 and size >= 2:
        data = bytes((VERSION, ENCRYPTED)) + data[2:]
    elif roll < 0.35 and size >= 2:
        data = bytes((VERSION, 0)) + data[2:]
    return data


def mutate_bytes(frame: bytes, rng: random.Random, limit: int = 65_507) -> bytes:
    """``frame`` changed in at least one byte: bits flipped, cut, grown, a
    slice overwritten, repeated or removed, the header changed."""
    data = bytearray(frame)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(7)
        if op == 0 or not data:
            for _ in range(rng.randrange(1, 9)):
                if data:
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                else:
                    data.append(rng.randrange(256))
        elif op == 1:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            data += rng.randbytes(rng.randrange(1, 64))
        elif op == 3:
            start = rng.randrange(len(data))
            size = min(len(data) - start, rng.randrange(1, 32))
            data[start : start + size] = rng.randbytes(size)
        elif op == 4:
            start = rng.randrange(len(data))
            data[start:start] = data[start : start + rng.randrange(1, 64)]
        elif op == 5:
            start = rng.randrange(len(data))
            del data[start : start + rng.randrange(1, 16)]
        else:
            data[rng.randrange(min(2, len(data)))] = rng.randrange(256)
    if bytes(data) == frame:
        data = bytearray(frame[:-1]) if frame else bytearray(b"\x00")
    return bytes(data[:limit])


def _places(root: list[Any], limit: int = 4000) -> list[tuple[list[Any] | dict[Any, Any], Any]]:
    """(container, index or key) of every value inside ``root``, at most ``limit``."""
    places: list[tuple[list[Any] | dict[Any, Any], Any]] = []
    stack: list[list[Any] | dict[Any, Any]] = [root]
    while stack and len(places) < limit:
        container = stack.pop()
        keys: Iterable[Any] = range(len(container)) if isinstance(container, list) else list(container)
        for key in keys:
            places.append((container, key))
            value = container[key]
            if isinstance(value, list | dict):
                stack.append(value)
    return places


def mutate_value(value: Any, rng: random.Random) -> Any:
    """Another value in the place of ``value``: close to it (a bit flipped, a
    character added) or far from it (a huge int, another type, deep nesting)."""
    if rng.random() < 0.1:
        return rng.choice((None, True, 1.5, float("nan"), {"x": 1}, "", b"", [], 2**63 - 1, _nested(rng.randrange(50, 500))))
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        changed = rng.choice((value ^ (1 << rng.randrange(64)), rng.choice(HUGE_INTS), -value, value + 1))
        return max(-(1 << 63), min(changed, (1 << 64) - 1))  # what msgpack can carry
    if isinstance(value, str):
        at = rng.randrange(len(value) + 1)
        return rng.choice((
            value[:at] + rng.choice(NASTY_TEXT) + value[at:], value * rng.randrange(2, 80), "", value[: len(value) // 2],
            value[:at] + chr(rng.randrange(0, 0x20)) + value[at:],
        ))
    if isinstance(value, bytes):
        return rng.choice((rng.randbytes(len(value)), value + rng.randbytes(rng.randrange(1, 900)), b"", value[::-1]))
    if isinstance(value, list):
        if not value:
            return [rng.choice(HUGE_INTS)]
        op = rng.randrange(6)
        copy = list(value)
        if op == 0:
            return copy[: rng.randrange(len(copy))]
        if op == 1:
            return copy + [rng.choice((0, "x", b"", None, copy[0]))]
        if op == 2 and len(copy) > 1:
            i, j = rng.sample(range(len(copy)), 2)
            copy[i], copy[j] = copy[j], copy[i]
            return copy
        if op == 3:
            return copy[::-1]
        if op == 4:
            return _nested(rng.randrange(50, 500), copy)
        return {str(index): item for index, item in enumerate(copy)}
    if isinstance(value, dict):
        return {**value, rng.choice(("", "\n", "x" * 300)): rng.choice((None, 1, "x"))}
    return rng.choice(HUGE_INTS)


def _nested(depth: int, inner: Any = None) -> Any:
    for _ in range(depth):
        inner = [inner]
    return inner


def mutate_messages(messages: list[Any], rng: random.Random) -> list[Any]:
    """Wire lists with one to three mutations: of a value anywhere inside,
    of the list of messages itself, or of one message's packed bytes."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        roll = rng.random()
        if roll < 0.1 and messages:
            index = rng.randrange(len(messages))
            try:
                packed = bytearray(msgpack.packb(messages[index]))
                for _ in range(rng.randrange(1, 4)):
                    packed[rng.randrange(len(packed))] ^= 1 << rng.randrange(8)
                messages[index] = msgpack.unpackb(bytes(packed), raw=False, strict_map_key=False)
            except Exception:  # noqa: BLE001 - nested too deep to pack, or a flip that leaves no msgpack: mutate a value instead
                pass
            else:
                continue
        elif roll < 0.2 and len(messages) > 1:
            messages = rng.choice((messages[1:], messages[::-1], messages + messages[:1]))
            continue
        places = _places(messages)
        if places:
            container, key = rng.choice(places)
            container[key] = mutate_value(container[key], rng)
    return messages


# -- the attacks ---------------------------------------------------------------------------------


def _deadline(session: Session) -> float:
    return time.monotonic() + session.scale.limit


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return sock


def _send_frames(session: Session, frames: Iterable[bytes]) -> int:
    """Send datagrams to the target, paced by its socket's queue, until the
    time limit; how many went out."""
    target, deadline, sent = session.target.bind, _deadline(session), 0
    with _udp_socket() as sock:
        for frame in frames:
            if sent % 256 == 0 and time.monotonic() > deadline:
                break
            if len(frame) > 65_507:
                continue
            session.udp_send(sock, frame, target, sent)
            sent += 1
    session.wait_udp_drained(target[1])
    return sent


def attack_datagrams(session: Session, monitor: Monitor) -> Outcome:
    """Random bytes and mutated real datagrams to the gossip port: every one
    must be dropped and counted."""
    rng, templates = session.rng, session.templates()
    kinds: Counter[str] = Counter()

    def frames() -> Iterable[bytes]:
        for index in range(session.scale.datagrams):
            if index % 2:
                kinds["random"] += 1
                yield random_datagram(rng)
            else:
                kinds["mutated"] += 1
                yield mutate_bytes(rng.choice(templates), rng)

    sent = _send_frames(session, frames())
    findings = {"random": kinds["random"], "mutated": kinds["mutated"], "templates": len(templates),
                "captured": session.capture_available, "asked": session.scale.datagrams}
    return Outcome(sent, "random and mutated datagrams", every_one_dropped=True, findings=findings)


def attack_resigned(session: Session, monitor: Monitor) -> Outcome:
    """Validly signed frames whose messages were mutated (a key holder's
    garbage): nothing may be lost, no junk may stick."""
    rng = session.rng
    pool = [msgpack.packb(messages) for frame, _ in session.captured if (messages := frame_messages(frame))]
    if not pool:
        pool = [msgpack.packb(messages) for frame in session.templates() if (messages := frame_messages(frame))]
    jobs_deltas = sum(1 for packed in pool if b"\xa4jobs" in packed)
    skipped = 0

    def frames() -> Iterable[bytes]:
        nonlocal skipped
        for _ in range(session.scale.resigned):
            messages = mutate_messages(msgpack.unpackb(rng.choice(pool), raw=False, strict_map_key=False), rng)
            frame = session.signed(messages)
            if frame is None:
                skipped += 1
                continue
            yield frame

    sent = _send_frames(session, frames()) if pool else 0
    findings = {"pool": len(pool), "pool_with_jobs_map": jobs_deltas, "skipped_unpackable": skipped, "asked": session.scale.resigned}
    effects = [] if pool else ["no frame to mutate (nothing captured, nothing readable)"]
    return Outcome(sent, "re-signed mutated frames", findings=findings, effects=effects, frames=True)


def attack_replay(session: Session, monitor: Monitor) -> Outcome:
    """One valid datagram sent again and again: each repeat must be dropped
    and counted (replay protection), at most the first one processed."""
    templates = sorted(session.templates(), key=len)
    frame = templates[len(templates) // 2]
    sent = _send_frames(session, (frame for _ in range(session.scale.replays)))
    return Outcome(sent, "copies of one valid datagram", every_one_dropped=True, may_pass=1, findings={"frame_bytes": len(frame)})


def attack_idle_streams(session: Session, monitor: Monitor) -> Outcome:
    """Idle TCP connections to the gossip port, reopened when closed, while a
    new agent joins through the target."""
    assert session.cluster is not None
    target = session.target
    count = session.scale.idle_connections
    conns: list[socket.socket] = []
    opened = reopened = failed = 0

    def open_one() -> socket.socket | None:
        nonlocal opened, failed
        try:
            conn = socket.create_connection(target.bind, timeout=2.0)
        except OSError:
            failed += 1
            return None
        opened += 1
        return conn

    conns = [conn for _ in range(count) if (conn := open_one()) is not None]
    joiner_name = "abuse-joiner"
    monitor.ignore.add(joiner_name)
    joiner = session.cluster.add(joiner_name, seeds=[target.addr], extra_args=session.extra_args())
    joiner_api = session.api(joiner)
    target_api = session.api(target)
    started = time.monotonic()
    joined_after: float | None = None
    names = {agent.name for agent in session.agents}
    try:
        while time.monotonic() - started < session.scale.join_wait:
            readable, _, _ = select.select(conns, [], [], 0.2) if conns else ([], [], [])
            for conn in readable:
                try:
                    data = conn.recv(1)
                except OSError:
                    data = b""
                if not data:
                    conns.remove(conn)
                    conn.close()
                    if (fresh := open_one()) is not None:
                        conns.append(fresh)
                        reopened += 1
            while len(conns) < count and (fresh := open_one()) is not None:
                conns.append(fresh)
            try:
                view = joiner_api.view()
                if all(view.get(name) == "alive" for name in names) and target_api.view().get(joiner_name) == "alive":
                    joined_after = time.monotonic() - started
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
    finally:
        for conn in conns:
            conn.close()
        joiner_api.close()
        target_api.close()

    def stop_joiner(outcome: Outcome) -> None:
        outcome.findings["joiner_exit"] = joiner.stop(15.0)
        joiner.kill()

    findings: dict[str, Any] = {"connections": count, "opened": opened, "reopened": reopened, "connect_failures": failed,
                "joined": joined_after is not None, "join_seconds": None if joined_after is None else round(joined_after, 2)}
    effects = [] if joined_after is not None else [
        f"a new agent did not join through the target within {session.scale.join_wait:g}s while {count} idle connections were held"
    ]
    if reopened:
        findings["note"] = "the target closed idle connections; each was reopened at once"
    return Outcome(opened, "idle TCP connections", findings=findings, effects=effects, ignore={joiner_name}, post=stop_joiner)


def _all_refusals(deltas: Mapping[str, float]) -> int:
    return int(sum(value for name, value in deltas.items() if is_refusal(name)))


def attack_big_frames(session: Session, monitor: Monitor) -> Outcome:
    """Concurrent unauthenticated connections, each claiming and sending a
    frame of the largest size a stream may carry."""
    payload = os.urandom(MAX_STREAM_FRAME)
    header = struct.pack(">I", MAX_STREAM_FRAME)
    results: Counter[str] = Counter()
    lock = threading.Lock()
    target = session.target.bind

    def one() -> None:
        outcome = "sent"
        try:
            with socket.create_connection(target, timeout=30.0) as conn:
                conn.sendall(header)
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(15.0)
                while conn.recv(4096):
                    pass
        except TimeoutError:
            outcome = "timed out"
        except OSError:
            outcome = "cut by the target"
        with lock:
            results[outcome] += 1

    deadline = _deadline(session)
    rounds = 0
    for _ in range(session.scale.big_rounds):
        if time.monotonic() > deadline:
            break
        threads = [threading.Thread(target=one, daemon=True) for _ in range(session.scale.big_frames)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rounds += 1
    sent = sum(results.values())
    findings = {"rounds": rounds, "connections": session.scale.big_frames, "frame_bytes": MAX_STREAM_FRAME, "results": dict(results)}
    return Outcome(sent, "unauthenticated 8 MiB stream frames", every_one_dropped=True, findings=findings, count_with=_all_refusals)


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def gossip_accepts(session: Session, api: Api, timeout: float = 4.0) -> bool:
    """Does the target's gossip listener still accept and read connections?
    A frame of length 0 is sent: the target refuses it and counts that."""
    try:
        before = _all_refusals(api.metrics())
        with socket.create_connection(session.target.bind, timeout=2.0) as conn:
            conn.sendall(b"\x00\x00\x00\x00")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if _all_refusals(api.metrics()) > before:
                return True
    except (OSError, httpx.HTTPError):
        return False
    return False


def attack_long_polls(session: Session, monitor: Monitor) -> Outcome:
    """``GET /runs/ID?wait=300`` opened and abandoned by its client."""
    _raise_fd_limit()
    target = session.target
    pid = target.pid
    before = proc_figures(pid)
    auth = f"Authorization: Bearer {session.token}\r\n" if session.token else ""
    request = (f"GET /runs/abuse-nowhere?wait=300 HTTP/1.1\r\nHost: {target.api[0]}:{target.api[1]}\r\n{auth}\r\n").encode()
    conns: list[socket.socket] = []
    failed = 0
    deadline = _deadline(session)
    try:
        for _ in range(session.scale.long_polls):
            if time.monotonic() > deadline:
                break
            try:
                conn = socket.create_connection(target.api, timeout=3.0)
                conn.sendall(request)
                conns.append(conn)
            except OSError:
                failed += 1
        time.sleep(1.0)
        peak_open = proc_figures(pid)
    finally:
        for conn in conns:
            conn.close()  # the clients go away
    opened = len(conns)
    start = proc_figures(pid)
    time.sleep(session.scale.hold)
    after = proc_figures(pid)
    api = session.api(target)
    try:
        try:
            api_answers: int | str = api.request("GET", "/status", timeout=5.0).status_code
        except httpx.HTTPError as error:
            api_answers = f"no answer: {type(error).__name__}"
        accepting = gossip_accepts(session, api)
    finally:
        api.close()
    findings: dict[str, Any] = {
        "opened": opened, "connect_failures": failed, "hold_seconds": session.scale.hold,
        "fds": {"before": before and before.fds, "while_open": peak_open and peak_open.fds, "after_hold": after and after.fds},
        "cpu_share_during_hold": None if not (start and after) else round((after.cpu_seconds - start.cpu_seconds) / session.scale.hold, 2),
        "api_status_after": api_answers, "gossip_accepting_after": accepting,
    }
    effects = []
    if before and after and after.fds - before.fds > opened // 4:
        effects.append(f"{after.fds - before.fds} more fds held {session.scale.hold:g}s after {opened} long-polls were abandoned")
    share = findings["cpu_share_during_hold"]
    if share is not None and share > 0.5:
        effects.append(f"abandoned long-polls keep the target busy ({share:.0%} of a core)")
    if failed:
        effects.append(f"{failed} API connections could not be opened")
    if api_answers != 200:
        effects.append(f"the API answered {api_answers} after the long-polls")
    if not accepting:
        effects.append("the gossip listener did not accept and read a connection after the long-polls")
    return Outcome(opened, "abandoned long-polls", findings=findings, effects=effects, dirty=True)


def attack_dead_incarnation(session: Session, monitor: Monitor) -> Outcome:
    """One signed ``Dead(b, 2**63-1)``: b must stay (or come back) alive."""
    victim = session.agents[1]
    frame = session.signed([Dead(victim.name, (1 << 63) - 1, session.target.name).to_wire()])
    assert frame is not None
    sent = _send_frames(session, [frame])
    time.sleep(session.scale.observe)
    statuses = _statuses_of(session, victim.name)
    effects = [f"{victim.name} is {status} on {name} {session.scale.observe:g}s after one Dead claim"
               for name, status in statuses.items() if status != "alive"]

    def restart_victim(outcome: Outcome) -> None:
        victim.stop(15.0)
        victim.kill()
        victim.start()
        deadline = time.monotonic() + session.scale.observe + 15.0
        while time.monotonic() < deadline:
            statuses = _statuses_of(session, victim.name)
            if all(status == "alive" for status in statuses.values()):
                break
            time.sleep(0.5)
        outcome.findings["after_restart"] = statuses
        outcome.effects += [f"{victim.name} is {status} on {name} after it restarted" for name, status in statuses.items()
                            if status != "alive"]

    return Outcome(sent, f"Dead({victim.name}, 2**63-1)", findings={"victim": victim.name, "statuses": statuses}, effects=effects,
                   post=restart_victim, frames=True)


def _statuses_of(session: Session, member: str) -> dict[str, str | None]:
    statuses: dict[str, str | None] = {}
    for agent in session.agents:
        api = session.api(agent)
        try:
            statuses[agent.name] = api.view().get(member)
        except (httpx.HTTPError, ValueError, KeyError):
            statuses[agent.name] = "(no answer)"
        finally:
            api.close()
    return statuses


def _unbound_ports(count: int, start: int = 1100) -> list[int]:
    ports: list[int] = []
    port = start
    while len(ports) < count and port < 65_000:
        if port_free(port):
            ports.append(port)
        port += 1
    return ports


def attack_fake_members(session: Session, monitor: Monitor) -> Outcome:
    """Signed datagrams announcing many members, ready to own work, that do
    not exist."""
    count, datagrams = session.scale.fake_members, session.scale.fake_datagrams
    ports = _unbound_ports(count)
    fakes = [Alive(f"abuse-fake-{index:04d}", 1, (LOOPBACK, port), b"ready") for index, port in enumerate(ports)]
    per = max(1, math.ceil(len(fakes) / datagrams))
    frames = [session.signed([fake.to_wire() for fake in fakes[start : start + per]]) for start in range(0, len(fakes), per)]
    sent = _send_frames(session, [frame for frame in frames if frame is not None])
    time.sleep(session.scale.observe)
    seen = {}
    for agent in session.agents:
        api = session.api(agent)
        try:
            seen[agent.name] = sum(1 for name, status in api.view().items() if name.startswith("abuse-fake-") and status == "alive")
        except (httpx.HTTPError, ValueError, KeyError):
            seen[agent.name] = -1
        finally:
            api.close()
    target_seen = sorted(d for d in monitor.deviations if f" {session.target.name} " in f" {d} " and not d.startswith(session.target.name))
    findings = {"fakes": len(fakes), "per_datagram": per, "live_fakes_at_end": seen, "target_seen_failing": target_seen[:10]}
    effects = [f"the target was seen {text.split()[-1]} by {text.split(':')[0].split()[0]}" for text in target_seen[:3]]
    return Outcome(sent, f"datagrams announcing {len(fakes)} ready members", findings=findings, effects=effects, frames=True)


def attack_runs_flood(session: Session, monitor: Monitor) -> Outcome:
    """Many sleeping one-offs, then submits as fast as they are answered."""
    scale, target = session.scale, session.target
    sleepers: Counter[str] = Counter()
    submits: Counter[str] = Counter()
    api = session.api(target)
    started = time.monotonic()
    try:
        for index in range(scale.sleepers):
            body = {"id": f"abuse-sleeper-{index}", "call": "peer.testing.samples:sleep", "kwargs": {"seconds": scale.sleep}}
            sleepers[_status(api, "POST", "/submit", body)] += 1
    finally:
        api.close()
    lock = threading.Lock()
    counter = iter(range(scale.submits))
    deadline = _deadline(session)

    def submitter() -> None:
        own = session.api(target)
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                body = {"id": f"abuse-echo-{index}", "call": "peer.testing.samples:echo", "kwargs": {"n": index}}
                status = _status(own, "POST", "/submit", body)
                with lock:
                    submits[status] += 1
        finally:
            own.close()

    flood_start = time.monotonic()
    threads = [threading.Thread(target=submitter, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flood_seconds = time.monotonic() - flood_start
    time.sleep(max(0.0, min(scale.sleep, started + scale.sleep * 0.8 - time.monotonic())))
    threads_seen = {name: {"first": samples[0].threads if samples else None, "peak": max((s.threads for s in samples), default=None)}
                    for name, samples in monitor.proc.items()}
    rss_seen = {name: {"first": samples[0].rss_kib if samples else None, "peak": max((s.rss_kib for s in samples), default=None)}
                for name, samples in monitor.proc.items()}
    sent = sum(sleepers.values()) + sum(submits.values())
    refused = sum(n for code, n in submits.items() if code in ("429", "503"))
    rate = round(sum(submits.values()) / max(flood_seconds, 1e-6), 1)
    findings: dict[str, Any] = {
        "sleepers": dict(sleepers), "submits": dict(submits), "submit_rate_per_s": rate,
        "threads": threads_seen, "rss_kib": rss_seen,
    }
    effects = []
    if submits and not refused and submits.get("200", 0) == sum(submits.values()):
        effects.append(f"no back-pressure: all {submits['200']} submits accepted at {findings['submit_rate_per_s']}/s")
    for name, seen in threads_seen.items():
        if seen["first"] is not None and seen["peak"] is not None and seen["peak"] - seen["first"] > 100:
            effects.append(f"{name} ran {seen['peak'] - seen['first']} more threads for sleeping runs")
    return Outcome(sent, "one-offs submitted", findings=findings, effects=effects, dirty=True)


def _status(api: Api, method: str, path: str, body: Any = None, **options: Any) -> str:
    try:
        return str(api.request(method, path, body=body, **options).status_code)
    except httpx.HTTPError as error:
        return type(error).__name__


def attack_api(session: Session, monitor: Monitor) -> Outcome:
    """Requests a web page or a stranger could send to the control API."""
    target, repeats = session.target, session.scale.api_repeats
    api = session.api(target)
    echo = {"id": "abuse-api-echo", "call": "peer.testing.samples:echo"}
    protected: list[tuple[str, str, Any]] = [
        ("GET", "/members", None), ("GET", "/status", None), ("GET", "/jobs", None), ("GET", "/runs", None),
        ("POST", "/submit", echo), ("POST", "/jobs/abuse-nonexistent/pause", None),
    ]
    categories: dict[str, Counter[str]] = {}
    seconds: dict[str, float] = {}

    def record(category: str, status: str) -> None:
        categories.setdefault(category, Counter())[status] += 1

    try:
        for _ in range(repeats):
            for method, path, body in protected:
                record("unauthenticated", _status(api, method, path, body, token=False))
            record("unauthenticated_metrics", _status(api, "GET", "/metrics", token=False))
            record("foreign_host", _status(api, "POST", "/submit", echo, headers={"Host": "evil.example"}))
            record("foreign_host", _status(api, "GET", "/members", headers={"Host": "evil.example:7947"}))
            record("cross_site", _status(api, "POST", "/submit", echo,
                                          headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}))
            record("text_plain", _status(api, "POST", "/submit", headers={"Content-Type": "text/plain"},
                                         content=json.dumps(echo).encode()))
            record("deep_json", _status(api, "POST", "/submit", headers={"Content-Type": "application/json"},
                                        content=b"[" * 1000 + b"]" * 1000))
        for _ in range(2):
            start = time.monotonic()
            body = b'{"id": "abuse-big", "call": "peer.testing.samples:echo", "kwargs": {"x": "' + b"a" * (10 << 20) + b'"}}'
            record("big_body", _status(api, "POST", "/submit", headers={"Content-Type": "application/json"}, content=body,
                                       timeout=30.0))
            seconds["big_body"] = round(time.monotonic() - start, 2)
    finally:
        api.close()
    counts = {category: dict(statuses) for category, statuses in categories.items()}
    effects = []
    unauthenticated = categories.get("unauthenticated", Counter())
    let_in = sum(n for code, n in unauthenticated.items() if code.startswith("2"))
    if session.token is None:
        effects.append(f"no API token on this build: {let_in} of {sum(unauthenticated.values())} unauthenticated requests answered 2xx")
    elif let_in or any(code != "401" for code in unauthenticated):
        effects.append(f"with a token configured, unauthenticated requests answered {dict(unauthenticated)} (401 expected)")
    for category, expected in (("foreign_host", "403"), ("cross_site", "403"), ("text_plain", "415")):
        accepted = sum(n for code, n in categories.get(category, Counter()).items() if code.startswith("2"))
        if accepted:
            effects.append(f"{category}: {accepted} requests accepted ({expected} expected)")
    deep = categories.get("deep_json", Counter())
    if any(code == "500" or code.startswith("2") for code in deep):
        effects.append(f"JSON nested 1000 deep answered {dict(deep)} (400 expected)")
    big = categories.get("big_body", Counter())
    if any(code != "413" for code in big):
        effects.append(f"a 10 MB body answered {dict(big)} (413 expected)")
    findings = {"statuses": counts, "token_configured": session.token is not None, "token_option": session.token_option,
                "big_body_seconds": seconds.get("big_body")}
    return Outcome(sum(sum(c.values()) for c in categories.values()), "HTTP requests", findings=findings, effects=effects)


UNSAFE_NAMES = (
    "abuse\nFORGED-LOG-LINE level=error msg=pwned", "abuse\x00nul", "abuse\r\nFORGED-LOG-LINE", "abuse\x1b[31mred",
    "a" * 127 + "\n", "x" * 129, "abuse\u2028sep", "abuse\tTab",
)


def _unsafe(name: str) -> bool:
    return len(name) > 128 or any(unicodedata.category(char).startswith(("C", "Z")) and char != " " for char in name)


def attack_names(session: Session, monitor: Monitor) -> Outcome:
    """Signed frames introducing members whose names hold newlines, NULs,
    escapes, or are over-long."""
    ports = _unbound_ports(len(UNSAFE_NAMES), start=2200)
    frames = [session.signed([Alive(name, 1, (LOOPBACK, port), b"").to_wire()]) for name, port in zip(UNSAFE_NAMES, ports)]
    sent = _send_frames(session, [frame for frame in frames if frame is not None])
    time.sleep(min(session.scale.observe, 6.0))
    seen: dict[str, list[str]] = {}
    for agent in session.agents:
        api = session.api(agent)
        try:
            seen[agent.name] = [_printable(name) for name in api.view() if _unsafe(name)]
        except (httpx.HTTPError, ValueError, KeyError):
            seen[agent.name] = ["(no answer)"]
        finally:
            api.close()
    forged = sum(1 for agent in session.agents for line in agent.log_text().splitlines() if line.startswith("FORGED-LOG-LINE"))
    effects = [f"{name} lists members with unsafe names: {', '.join(names[:4])}" for name, names in seen.items() if names]
    if forged:
        effects.append(f"{forged} forged log lines")
    return Outcome(sent, "datagrams with unsafe member names", findings={"unsafe_names_seen": seen, "forged_log_lines": forged},
                   effects=effects, frames=True)


# -- a real browser -------------------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Without the background-networking flags Chromium's own connections (updates,
# sync...) are refused on a closed network and slow every page down.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)
BROWSER_BUDGET_MS = 8000  # virtual time a page's scripts get (paused while requests are in flight)
BROWSER_TIMEOUT = 60.0  # seconds one Chromium run may take, wall clock
CROSS_SITE_HOST = "127.0.0.2"  # another IP on loopback: another origin and another site than 127.0.0.1
REBIND_NAME = "rebind.localhost"  # Chromium resolves *.localhost to loopback itself, no DNS
BROWSER_JOB_PREFIX = "abuse-browser-"
API_REFUSED = re.compile(r'peer_api_refused_total\{reason="([^"]+)"\}')


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium to drive: ``explicit`` if it is an executable file, else
    the first of ``CHROMIUM_NAMES`` on PATH."""
    if explicit is not None:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name)) is not None), None)


def run_chromium(chromium: str, url: str, workdir: Path, budget_ms: int = BROWSER_BUDGET_MS) -> str:
    """The DOM of ``url`` once its scripts ran for ``budget_ms`` of virtual
    time, loaded by a headless Chromium with a new empty profile (no cache,
    no cookies, nothing from another run)."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=workdir))
    argv = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    # Its own process group: its helpers (zygote, renderer, network service)
    # are killed with it by the group's id, whatever happened.
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"Chromium did not finish {url} in {BROWSER_TIMEOUT:g}s") from None
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # every one of them exited
        process.communicate()
        shutil.rmtree(profile, ignore_errors=True)
    if process.returncode != 0 or not out.strip():
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium exited with {process.returncode} on {url}: {' | '.join(tail)}")
    return out.decode(errors="replace")


def page_result(dom: str) -> dict[str, Any]:
    """What a page of ours wrote into its ``<pre id="result">``."""
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    text = html.unescape(found.group(1)) if found else ""
    if not text.startswith("{"):
        raise RuntimeError(f"the page did not finish in {BROWSER_BUDGET_MS} ms of virtual time: {text[:80]!r}")
    result: dict[str, Any] = json.loads(text)
    return result


def loaded_document(dom: str) -> dict[str, Any]:
    """What a page sees of an API answer loaded as the document itself:
    Chromium shows a JSON body as the text of a ``<pre>``."""
    found = re.search(r"<pre[^>]*>(.*?)</pre>", dom, re.S)
    text = html.unescape(found.group(1)).strip() if found else ""
    try:
        document = json.loads(text)
    except ValueError:
        return {"readable": False, "seen": "no JSON (not loaded)", "body": text[:160]}
    if isinstance(document, dict) and set(document) == {"error"}:
        return {"readable": False, "seen": "refused", "body": str(document["error"])[:160]}
    return {"readable": True, "seen": "the API's answer", "body": text[:160]}


class AttackerSite(socketserver.ThreadingTCPServer):
    """The attacker's web server: ``pages`` (path -> HTML) are served with
    ``Connection: close``; any other request goes, when ``forward`` is set,
    byte for byte to that address and back. That is DNS rebinding without
    DNS: the browser loaded the page from this origin, then the same origin
    reaches the agent, and what the agent receives (Host, Origin,
    Sec-Fetch-Site) is what it would receive from a name rebound to
    127.0.0.1 (only the Host's port differs, which the Host check ignores)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str, pages: Mapping[str, str], forward: Address | None = None) -> None:
        super().__init__((host, 0), _AttackerHandler)
        self.pages = dict(pages)
        self.forward = forward
        self.requests: list[str] = []  # "page|forwarded|unknown: request line", the first request of each connection
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> AttackerSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _AttackerHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        site = self.server
        assert isinstance(site, AttackerSite)
        sock: socket.socket = self.request
        sock.settimeout(10.0)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                head += chunk
        except OSError:
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
        page = site.pages.get(path)
        if page is not None:
            site.requests.append(f"page: {line}")
            body = page.encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n"
                         b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        elif site.forward is not None:
            site.requests.append(f"forwarded: {line}")
            _pipe(sock, head, site.forward)
        else:
            site.requests.append(f"unknown: {line}")
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")


def _pipe(client: socket.socket, head: bytes, addr: Address, idle: float = 10.0) -> None:
    """Bytes both ways between ``client`` (whose first bytes were ``head``)
    and ``addr``, until either side closes or nothing moves for ``idle`` s."""
    try:
        with socket.create_connection(addr, timeout=idle) as upstream:
            upstream.sendall(head)
            peers = {client: upstream, upstream: client}
            while True:
                readable, _, _ = select.select(list(peers), [], [], idle)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    peers[source].sendall(data)
    except OSError:
        return


_PAGE_SCRIPT = """
async function attempt(url, options) {
  try {
    const response = await fetch(url, options);
    let body = null;
    try { body = (await response.text()).slice(0, 160); } catch (error) { body = null; }
    return {status: response.status, type: response.type, body: body};
  } catch (error) {
    return {error: String(error)};
  }
}
function finish(result) { document.getElementById("result").textContent = JSON.stringify(result); }
"""

# The attacker's page on another site: what a browser lets it send to the
# API at 127.0.0.1, and what it lets it read.
CROSS_SITE_PAGE = """<!doctype html><html><body><pre id="result">pending</pre>
<form id="form" method="POST" action="API/leave" target="sink" enctype="text/plain"><input name="x" value="1"></form>
<iframe name="sink" id="sink"></iframe>
<script>SCRIPT
function submitForm() {
  return new Promise((resolve) => {
    const sink = document.getElementById("sink");
    // Its answer is another origin's document: the page may see it load, not read it.
    const timer = setTimeout(() => resolve({submitted: true, loaded: false}), 4000);
    sink.onload = () => {
      clearTimeout(timer);
      let body = null;
      try { body = sink.contentDocument ? sink.contentDocument.body.innerText.slice(0, 160) : null; } catch (error) { body = null; }
      resolve({submitted: true, loaded: true, body: body, readable: Boolean(body)});
    };
    document.getElementById("form").submit();
  });
}
(async () => {
  const result = {};
  result.post_jobs_json = await attempt("API/jobs", {method: "POST", headers: {"Content-Type": "application/json"}, body: JOB_CORS});
  result.post_jobs_no_cors = await attempt("API/jobs", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                                                        body: JOB_SIMPLE});
  result.get_status = await attempt("API/status", {});
  result.form_post_leave = await submitForm();
  finish(result);
})();
</script></body></html>
"""

# The attacker's page once its name points at the agent: every request is
# same-origin, so the browser would let the page read every answer.
REBIND_PAGE = """<!doctype html><html><body><pre id="result">pending</pre><script>SCRIPT
(async () => {
  const result = {};
  result.get_status = await attempt("/status", {});
  result.post_jobs = await attempt("/jobs", {method: "POST", headers: {"Content-Type": "application/json"}, body: JOB_REBIND});
  result.post_leave = await attempt("/leave", {method: "POST"});
  finish(result);
})();
</script></body></html>
"""


def _browser_job(name: str) -> str:
    """A job definition as a JS string literal: defined, it would show in GET /jobs."""
    job = {"id": BROWSER_JOB_PREFIX + name, "schedule": "@every 1h", "call": "peer.testing.samples:echo"}
    return json.dumps(json.dumps(job))


def _refusals(api: Api) -> dict[str, float] | None:
    """The agent's API refusals by reason; None if it does not answer (it left)."""
    try:
        metrics = api.metrics()
    except (httpx.HTTPError, ValueError):
        return None
    return {match.group(1): value for name, value in metrics.items() if (match := API_REFUSED.fullmatch(name))}


def _refusals_diff(before: Mapping[str, float] | None, after: Mapping[str, float] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {reason: int(after[reason] - before.get(reason, 0.0)) for reason in after if after[reason] != before.get(reason, 0.0)}


def _got_through(observed: Mapping[str, Any]) -> list[str]:
    """The requests a page saw answered 2xx, or whose answer it could read
    although it was not a refusal."""
    through = []
    for request, seen in observed.items():
        status = seen.get("status") if isinstance(seen, dict) else None
        if isinstance(status, int) and 200 <= status < 300:
            through.append(f"{request} answered {status}")
        elif isinstance(seen, dict) and seen.get("readable"):
            through.append(f"{request} readable")
    return through


def attack_browser(session: Session, monitor: Monitor) -> Outcome:
    """A real headless Chromium against the target's API: a page on another
    site (a CORS-preflighted POST, a "simple" no-cors POST, a form POST into
    an iframe, a GET), a DNS-rebound page (same-origin requests carrying a
    foreign Host), and direct loads without the token."""
    chromium = find_chromium(session.chromium)
    if chromium is None:
        looked = session.chromium or f"{', '.join(CHROMIUM_NAMES)} on PATH"
        return Outcome(0, "browser requests", findings={"skipped": f"chromium not found ({looked}; --chromium PATH)"})
    target = session.target
    api_base = f"http://{target.api[0]}:{target.api[1]}"
    api = session.api(target)
    cases: dict[str, dict[str, Any]] = {}
    effects: list[str] = []
    sent = 0

    def case(name: str, reason: str, expected: int, run: Callable[[], dict[str, Any]]) -> None:
        nonlocal sent
        before = _refusals(api)
        observed = run()
        refused = _refusals_diff(before, _refusals(api))
        # ``expected``: the requests the pages send the agent; Chromium may add its own (a favicon).
        cases[name] = {"browser_saw": observed, "refused": refused, "requests_at_the_agent": expected}
        sent += expected
        if refused is None:
            effects.append(f"{name}: the target's /metrics did not answer")
        elif refused.get(reason, 0) < expected:
            effects.append(f"{name}: {expected} browser requests at the agent, refused {refused or 'none'} ({expected} {reason} expected)")

    def script(page: str, **values: str) -> str:
        page = page.replace("SCRIPT", _PAGE_SCRIPT)
        for key, value in values.items():
            page = page.replace(key, value)
        return page

    try:
        # 1. Cross-site: the page's origin is http://127.0.0.2:PORT. Four requests reach the agent:
        # the preflight (OPTIONS), the no-cors POST, the form POST and the GET.
        cross_page = script(CROSS_SITE_PAGE, API=api_base, JOB_CORS=_browser_job("cors"), JOB_SIMPLE=_browser_job("simple"))
        with AttackerSite(CROSS_SITE_HOST, {"/": cross_page}) as site:
            cross_url = f"http://{CROSS_SITE_HOST}:{site.port}/"
            case("cross_site", "forbidden_origin", 4, lambda: page_result(run_chromium(chromium, cross_url, session.workdir)))
            cases["cross_site"]["page_origin"] = f"http://{CROSS_SITE_HOST}:{site.port}"

        # 2. DNS rebinding: the page at http://rebind.localhost:PORT/ whose origin then reaches the agent
        # (three same-origin requests), and the API loaded directly under a foreign name.
        rebind_page = script(REBIND_PAGE, JOB_REBIND=_browser_job("rebind"))
        with AttackerSite(LOOPBACK, {"/": rebind_page}, forward=target.api) as site:
            def rebinding() -> dict[str, Any]:
                observed = page_result(run_chromium(chromium, f"http://{REBIND_NAME}:{site.port}/", session.workdir))
                direct = f"http://{REBIND_NAME}:{target.api[1]}/status"
                observed["load_status_by_name"] = loaded_document(run_chromium(chromium, direct, session.workdir))
                return observed
            case("dns_rebinding", "forbidden_host", 4, rebinding)
            cases["dns_rebinding"]["connections_forwarded"] = [line for line in site.requests if line.startswith("forwarded")]

        # 3. The API loaded directly by its IP (no Origin, Sec-Fetch-Site: none): only the token stands.
        def direct() -> dict[str, Any]:
            return {path: loaded_document(run_chromium(chromium, api_base + path, session.workdir)) for path in ("/status", "/jobs")}
        if session.token is not None:
            case("no_token", "unauthenticated", 2, direct)
        else:
            cases["no_token"] = {"browser_saw": direct(), "note": "no token configured: a page loaded directly is the user's own"}

        # What got through, whatever the pages saw.
        for name in ("cross_site", "dns_rebinding"):
            effects += [f"{name}: {text}" for text in _got_through(cases[name]["browser_saw"])]
        if session.token is not None:
            effects += [f"no_token: {text}" for text in _got_through(cases["no_token"]["browser_saw"])]
        # A job defined on the target is replicated: look on another agent too, the target may be gone.
        watcher = session.api(session.agents[1])
        try:
            defined: set[str] = set()
            seen: dict[str, str | None] = {}
            for name, agent_api in (("target", api), (session.agents[1].name, watcher)):
                try:
                    defined |= {job for job in agent_api.owners() if job.startswith(BROWSER_JOB_PREFIX)}
                    seen[name] = agent_api.view().get(target.name)
                except (httpx.HTTPError, ValueError, KeyError):
                    seen[name] = None
        finally:
            watcher.close()
        if defined:
            effects.append(f"jobs defined from the browser: {sorted(defined)}")
        if any(status != "alive" for status in seen.values()):
            effects.append(f"the target left or does not answer: its status as seen by {seen}")
    finally:
        api.close()
    findings = {"chromium": chromium, "token_configured": session.token is not None, "cases": cases}
    return Outcome(sent, "browser requests at the API (headless Chromium)", findings=findings, effects=effects)


ATTACK_FUNCTIONS: dict[str, Callable[[Session, Monitor], Outcome]] = {
    "datagrams": attack_datagrams,
    "resigned": attack_resigned,
    "replay": attack_replay,
    "idle_streams": attack_idle_streams,
    "big_frames": attack_big_frames,
    "long_polls": attack_long_polls,
    "dead_incarnation": attack_dead_incarnation,
    "fake_members": attack_fake_members,
    "runs_flood": attack_runs_flood,
    "api": attack_api,
    "browser": attack_browser,
    "names": attack_names,
}
assert tuple(ATTACK_FUNCTIONS) == ATTACKS


# -- one attack, framed -----------------------------------------------------------------------------


@attrs.frozen
class Snapshot:
    metrics: dict[str, dict[str, float]]
    views: dict[str, dict[str, str]]
    owners: dict[str, dict[str, str | None]]
    logs: dict[str, int]


def snapshot(session: Session) -> Snapshot:
    metrics, views, owners = {}, {}, {}
    for agent in session.agents:
        api = session.api(agent)
        try:
            metrics[agent.name] = api.metrics()
            views[agent.name] = api.view()
            owners[agent.name] = api.owners()
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        finally:
            api.close()
    return Snapshot(metrics, views, owners, {agent.name: log_size(agent.log_path) for agent in session.agents})


def submit_oneoffs(session: Session) -> list[tuple[str, str]]:
    """Two one-offs through the agents that are not the target: (agent, run id)."""
    runs = []
    for index, agent in enumerate(session.agents[1:3]):
        api = session.api(agent)
        body = {"id": f"abuse-oneoff-{session.rng.randrange(1 << 40):x}-{index}", "call": "peer.testing.samples:journal",
                "kwargs": {"path": str(session.journal), "sleep": 1.0}}
        try:
            response = api.request("POST", "/submit", body=body)
            if response.status_code == 200:
                runs.append((agent.name, str(response.json()["run"])))
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        finally:
            api.close()
    return runs


def oneoffs_not_succeeded(session: Session, runs: Sequence[tuple[str, str]]) -> list[str]:
    problems = []
    for name, run in runs:
        agent = next((a for a in session.agents if a.name == name), None)
        if agent is None or not agent.running:
            problems.append(f"{run}: its submitter is gone")
            continue
        api = session.api(agent)
        try:
            record = api.get(f"/runs/{quote(run)}?wait=15", timeout=20.0)
            if record.get("state") != "succeeded":
                problems.append(f"{run}: {record.get('state')}")
        except (httpx.HTTPError, ValueError, KeyError) as error:
            problems.append(f"{run}: {type(error).__name__}")
        finally:
            api.close()
    return problems


def tick_problems(session: Session, since_ms: int, until_ms: int) -> tuple[int, list[str], list[str]]:
    """(ticks owed, ticks that never ran, ticks that ran twice) of the cron
    jobs between the two times, by the journal."""
    lines: list[JournalLine] = [line for line in read_journal(session.journal) if line.job in session.jobs and "@" in line.run]
    runs = Counter((line.job, line.tick) for line in lines if line.attempt == 1)
    owed = [(job, tick) for job in session.jobs for tick in ticks_between(since_ms, until_ms, EVERY_MS)]
    missed = [f"{job}@{tick}" for job, tick in owed if (job, tick) not in runs]
    twice = [f"{job}@{tick} x{n}" for (job, tick), n in runs.items() if n > 1 and since_ms < tick <= until_ms]
    return len(owed), missed, twice


def run_attack(session: Session, name: str) -> AttackReport:
    session.ensure_cluster()
    target = session.target
    report = AttackReport(name, target.name)
    before = snapshot(session)
    session.owners_before = dict(before.owners.get(target.name, {}))
    udp_before = udp_socket_state(target.bind[1])
    proc_before = proc_figures(target.pid)
    oneoffs = submit_oneoffs(session)
    start_ms = int(time.time() * 1000)
    start = time.monotonic()
    outcome = Outcome(0, "")
    log.info("attack %s on %s", name, target.name)
    with Monitor(session, target, before.views) as monitor:
        try:
            outcome = ATTACK_FUNCTIONS[name](session, monitor)
        except Exception as error:  # noqa: BLE001 - the harness's own failure is reported, the session goes on
            log.exception("attack %s failed", name)
            report.error = f"{type(error).__name__}: {error}"
        monitor.ignore |= outcome.ignore
        report.seconds = round(time.monotonic() - start, 2)
        time.sleep(session.scale.settle)
    end_ms = int(time.time() * 1000)
    after = snapshot(session)
    proc_after = proc_figures(target.pid)
    udp_after = udp_socket_state(target.bind[1])
    report.sent, report.what = outcome.sent, outcome.what

    # -- what the target counted
    deltas = metric_deltas(before.metrics.get(target.name, {}), after.metrics.get(target.name, {}), lambda n: True)
    report.counted = {metric: value for metric, value in deltas.items() if is_refusal(metric)}
    report.frames_dropped = frame_drops(deltas)
    if udp_before is not None and udp_after is not None:
        report.kernel_drops = udp_after[1] - udp_before[1]
    counted = (outcome.count_with or frame_drops)(deltas)
    if outcome.every_one_dropped:
        report.uncounted = max(0, outcome.sent - outcome.may_pass - counted - (report.kernel_drops or 0))
    if outcome.frames:
        report.findings["decoded_not_dropped"] = max(0, outcome.sent - report.frames_dropped - (report.kernel_drops or 0))

    # -- crashes
    report.target_alive = target.running
    report.exits = [f"{a.name} exited with {a.process.returncode if a.process else None}" for a in session.agents if not a.running]
    report.tracebacks = count_tracebacks(target.log_path, before.logs.get(target.name, 0))
    report.tracebacks_elsewhere = sum(count_tracebacks(a.log_path, before.logs.get(a.name, 0)) for a in session.agents[1:])

    # -- cluster effect
    ignore = outcome.ignore
    changes = set(monitor.deviations)
    for observer, view in after.views.items():
        expected = before.views.get(observer, {})
        for member, status in view.items():
            if member not in ignore and expected.get(member) != status and (member in expected or status in ("alive", "suspect")):
                changes.add(f"{observer} saw {_printable(member)} {status}")
        for member, status in expected.items():
            if member not in view and status in ("alive", "suspect"):
                changes.add(f"{observer} lost {member}")
    missing_views = sorted(set(before.views) - set(after.views))
    events = {}
    scheduler = {}
    for agent_name, metrics in after.metrics.items():
        previous = before.metrics.get(agent_name, {})
        if found := metric_deltas(previous, metrics, lambda n: n.startswith("peer_member_events")):
            events[agent_name] = {metric.split('"')[1] if '"' in metric else metric: value for metric, value in found.items()}
        if found := metric_deltas(previous, metrics, lambda n: bool(SCHEDULER_TROUBLE.match(n))):
            scheduler[agent_name] = found
    jobs_lost = sorted(
        f"{observer}: {job}"
        for observer, owners in before.owners.items()
        for job in owners
        if job not in after.owners.get(observer, owners)
    )
    owed, missed, twice = tick_problems(session, start_ms, end_ms - TICK_SLACK_MS)
    oneoff_problems = oneoffs_not_succeeded(session, oneoffs)
    report.cluster = {
        "member_changes": len(changes), "member_changes_sample": sorted(changes)[:12], "events": events,
        "owner_changes": sorted(monitor.owner_changes)[:12], "owners_unknown": sorted(monitor.unknown_owners)[:12],
        "jobs_lost": jobs_lost, "ticks_owed": owed, "ticks_missed": missed[:12], "ticks_missed_count": len(missed),
        "ticks_twice": twice[:12], "oneoffs": len(oneoffs), "oneoffs_not_succeeded": oneoff_problems, "scheduler": scheduler,
        "views_unreadable": missing_views + sorted(f"{n} x{c}" for n, c in monitor.view_failures.items()),
    }

    # -- the target's process
    samples = monitor.proc.get(target.name, [])
    if proc_before is not None and proc_after is not None:
        report.cpu_seconds = round(proc_after.cpu_seconds - proc_before.cpu_seconds, 2)
    for field, figures in (("rss_kib", report.rss_kib), ("threads", report.threads), ("fds", report.fds)):
        figures["before"] = getattr(proc_before, field) if proc_before else None
        figures["peak"] = max((getattr(sample, field) for sample in samples), default=None)
        figures["after"] = getattr(proc_after, field) if proc_after else None
    latencies = monitor.latencies
    report.health = {
        "samples": len(latencies) + monitor.health_failures, "failures": monitor.health_failures,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "p99_ms": round(p99, 1) if (p99 := percentile(latencies, 0.99)) is not None else None,
    }
    report.findings.update(outcome.findings)
    report.effects = list(outcome.effects)
    if outcome.post is not None:
        try:
            outcome.post(outcome)
        except Exception as error:  # noqa: BLE001
            log.exception("attack %s: the step after failed", name)
            report.error = report.error or f"after: {type(error).__name__}: {error}"
        report.findings.update(outcome.findings)
        report.effects = list(outcome.effects)
    judge(report, outcome, changes, events)
    if report.effects or outcome.dirty or report.error:
        session.close()  # the next attack starts from a fresh cluster
    log.info("attack %s: %s", name, report.verdict)
    return report


def judge(report: AttackReport, outcome: Outcome, changes: set[str], events: Mapping[str, Any]) -> None:
    """The departures from the issue's targets that every attack shares."""
    effects = report.effects
    if not report.target_alive:
        effects.insert(0, "the target exited")
    effects += [text for text in report.exits if not text.startswith(report.target + " ")]
    if report.tracebacks:
        effects.append(f"{report.tracebacks} traceback lines in the target's log")
    if report.tracebacks_elsewhere:
        effects.append(f"{report.tracebacks_elsewhere} traceback lines in the other agents' logs")
    if report.uncounted:
        effects.append(f"{report.uncounted} of {report.sent} sent went uncounted")
    cluster = report.cluster
    if changes:
        effects.append(f"members view changed ({len(changes)} differences, e.g. {sorted(changes)[0]})")
    if events and not outcome.ignore:
        effects.append(f"membership events: {dict(events)}")
    if cluster["owners_unknown"]:
        effects.append(f"jobs owned by no agent: {cluster['owners_unknown'][0]}")
    if cluster["owner_changes"] and not outcome.ignore:
        effects.append(f"job owners moved: {cluster['owner_changes'][0]}")
    if cluster["jobs_lost"]:
        effects.append(f"jobs lost: {cluster['jobs_lost']}")
    if cluster["ticks_missed_count"]:
        effects.append(f"{cluster['ticks_missed_count']} of {cluster['ticks_owed']} cron ticks never ran")
    if cluster["ticks_twice"]:
        effects.append(f"cron ticks ran twice: {cluster['ticks_twice'][:3]}")
    if cluster["oneoffs_not_succeeded"]:
        effects.append(f"one-offs not succeeded: {cluster['oneoffs_not_succeeded']}")
    rss_before, rss_peak = report.rss_kib.get("before"), report.rss_kib.get("peak")
    if rss_before is not None and rss_peak is not None and rss_peak - rss_before > RSS_TARGET_KIB:
        effects.append(f"RSS {rss_before // 1024} -> {rss_peak // 1024} MiB (over +{RSS_TARGET_KIB // 1024} MiB)")
    if report.health.get("failures"):
        effects.append(f"/health failed {report.health['failures']} of {report.health['samples']} times (no answer in {HEALTH_TIMEOUT:g}s)")


# -- the report, for a person ---------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def format_table(reports: Sequence[AttackReport]) -> str:
    head = (f"{'attack':<17} {'verdict':<8} {'sent':>8} {'counted':>8} {'uncnt':>6} {'crash':>6} {'cluster':>8} "
            f"{'cpu s':>6} {'rss MiB b/peak/a':>17} {'fds b/peak/a':>15} {'health max/p99 ms':>18} {'fail':>4}")
    lines = [head, "-" * len(head)]
    for r in reports:
        crash = "exit" if not r.target_alive else str(r.tracebacks + r.tracebacks_elsewhere) + "tb"
        cluster = r.cluster.get("member_changes", 0) + r.cluster.get("ticks_missed_count", 0) + len(r.cluster.get("owners_unknown", []))
        counted = int(sum(r.counted.values()))
        health = f"{r.health.get('max_ms') or '-'}/{r.health.get('p99_ms') or '-'}"
        slow = "!" if (r.health.get("max_ms") or 0) > HEALTH_TARGET_MS else " "
        lines.append(
            f"{r.attack:<17} {r.verdict:<8} {r.sent:>8} {counted:>8} {'-' if r.uncounted is None else r.uncounted:>6} {crash:>6} "
            f"{cluster:>8} {'-' if r.cpu_seconds is None else r.cpu_seconds:>6} "
            f"{_mib(r.rss_kib.get('before')) + '/' + _mib(r.rss_kib.get('peak')) + '/' + _mib(r.rss_kib.get('after')):>17} "
            f"{str(r.fds.get('before')) + '/' + str(r.fds.get('peak')) + '/' + str(r.fds.get('after')):>15} "
            f"{health + slow:>18} {r.health.get('failures', 0):>4}"
        )
    lines.append("")
    lines.append("counted: the change of the target's refusal and drop counters; uncnt: items that should have been dropped and "
                 "counted but were not; cluster: member differences + missed ticks + jobs owned by no agent; ! over 100 ms")
    for r in reports:
        if "skipped" in r.findings:
            lines.append(f"{r.attack}: skipped, {r.findings['skipped']}")
        if r.effects or r.error:
            lines.append(f"{r.attack}:")
            lines += [f"  - {effect}" for effect in r.effects]
            if r.error:
                lines.append(f"  ! harness error: {r.error}")
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------------


def run_abuse(
    workdir: Path, attacks: Sequence[str], *, quick: bool = False, nodes: int = 3, profile: str = "local",
    agent_args: Sequence[str] = (), token: str | None = None, seed: int | None = None, scale: Scale | None = None,
    chromium: str | None = None,
) -> list[AttackReport]:
    """Run ``attacks`` in order against a cluster started in ``workdir``;
    a report each. Every agent is killed on the way out. ``scale`` overrides
    ``quick``'s counts; ``chromium``: the browser attack's (default: found on PATH)."""
    unknown = [name for name in attacks if name not in ATTACK_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown attacks: {', '.join(unknown)} (known: {', '.join(ATTACKS)})")
    _raise_fd_limit()
    seed = random.SystemRandom().randrange(1 << 32) if seed is None else seed
    session = Session(workdir, scale=scale or (QUICK if quick else FULL), nodes=nodes, profile=profile, agent_args=agent_args, token=token,
                      seed=seed, chromium=chromium)
    reports = []
    try:
        for name in attacks:
            try:
                reports.append(run_attack(session, name))
            except Exception as error:  # noqa: BLE001 - e.g. no cluster would form: report it, try the next
                log.exception("attack %s could not run", name)
                reports.append(AttackReport(name, "node-0", error=f"{type(error).__name__}: {error}"))
                session.close()
    finally:
        session.close()
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peer.tools.abuse", description="Hostile input and overload against live agents.")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, in order (default all: {','.join(ATTACKS)})")
    parser.add_argument("--quick", action="store_true", help="small counts, seconds per attack (development, tests)")
    parser.add_argument("--json", action="store_true", help="print the reports as one JSON document")
    parser.add_argument("--nodes", type=int, default=3, help="agents in the cluster (default 3, at least 3)")
    parser.add_argument("--profile", default="local", help="the agents' timing profile (default local)")
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="an argument for every agent, e.g. --agent-arg=--api-token-file=F (repeat for more)")
    parser.add_argument("--api-token-file", metavar="F", help="the token the agents were given through --agent-arg, to send")
    parser.add_argument("--chromium", metavar="PATH",
                        help=f"the Chromium of the browser attack (default: {', '.join(CHROMIUM_NAMES)} on PATH)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the mutations (default: a random one, printed)")
    parser.add_argument("--keep", metavar="DIR", help="keep the agents' logs and journals in DIR")
    parser.add_argument("--fail-on-effects", action="store_true", help="exit 1 when an attack had an effect (default: only on errors)")
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3")
    attacks = [name.strip() for name in args.attacks.split(",") if name.strip()]
    unknown = [name for name in attacks if name not in ATTACK_FUNCTIONS]
    if unknown:
        parser.error(f"unknown attacks: {', '.join(unknown)} (known: {', '.join(ATTACKS)})")
    token = Path(args.api_token_file).read_text().strip() if args.api_token_file else None
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    quiet_http_libraries()
    log.info("peer.tools.abuse: seed %d, attacks %s%s", seed, ",".join(attacks), " (quick)" if args.quick else "")
    options = {"quick": args.quick, "nodes": args.nodes, "profile": args.profile, "agent_args": args.agent_arg, "token": token,
               "seed": seed, "chromium": args.chromium}
    if args.keep:
        reports = run_abuse(Path(args.keep), attacks, **options)
    else:
        with tempfile.TemporaryDirectory(prefix="peer-abuse-") as workdir:
            reports = run_abuse(Path(workdir), attacks, **options)
    if args.json:
        print(json.dumps({"seed": seed, "quick": args.quick, "reports": [r.to_json() for r in reports]}, indent=1, default=str))
    else:
        print(format_table(reports))
    if any(r.error for r in reports) or (args.fail_on_effects and any(r.effects for r in reports)):
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave through the finally blocks: every agent killed
    sys.exit(main())
