"""Serf against peer on loopback: join, failure detection, leave, idle cost, load.

    python bench/serf_compare.py [--sizes 10,30] [--reps 3] [--idle-seconds 20]
                                 [--load-seconds 30] [--json] [--keep-logs]

About 17 minutes for the default sizes on 2 cores (28 with --sizes 10,30,60).

For each cluster size N and each repetition, it runs one cluster of N Serf
agents (``serf agent -profile lan``), then one of N peer agents
(``python -m peer agent --profile lan``), every agent on 127.0.0.1, with no
encryption or cluster key on either side. The systems take turns within a
repetition, never run at the same time, and use distinct port ranges (every
port is checked free before use). Each run goes through five phases:

1. Join. Agent 0 is started and waited for (Serf: its RPC port accepts;
   peer: ``GET /health``), then agents 1..N-1 are spawned at once, each
   joining through agent 0. Figure: seconds from that spawn until every
   agent's view holds all N members up. The process start-up is inside the
   figure for both systems (a Go binary starts faster than a Python
   interpreter), so the join is also given from the moment the last agent
   printed its first line (``join_after_up_s``; ``last_agent_up_s`` is when
   that was). The views are then checked against the agents' own APIs
   (``serf members``, ``GET /members``).
2. Idle. After a settle pause, every agent's /proc/PID/stat utime+stime and
   /proc/PID/status VmRSS are sampled over ``--idle-seconds``. Figures: mean
   CPU % of one core per agent, mean RSS MB per agent.
3. Crash. One agent (never agent 0) gets SIGKILL; once all others declared
   it failed, and a settle pause, another (``--kills``, default 2: the time
   until a member first probes the dead one varies by seconds, so each run
   gives several samples). Figures: seconds until the first, and until the
   last, of the other agents declares it failed; also (not a target) until
   the first suspicion (peer: a ``suspect`` event; Serf: memberlist's
   "Suspect X has failed, no acks received" line of the prober), and from
   there to the first failure declaration: the first part is the luck of
   the probe order, the second the Lifeguard suspicion timeout.
4. Graceful leave. Another agent is told to leave (peer: SIGTERM; Serf:
   SIGINT, on which ``serf agent`` leaves gracefully by default, as its log
   shows: "requesting graceful leave"). Figures: seconds until every other
   running agent shows it gone (left, or failed for an agent that reported
   it failed instead), and how many reported it failed (each such report is
   a miss: the JSON's ``leave_all_left_s`` is then null).
5. Load. Two busy-loop processes (one per core, each ending by itself after
   ``--load-seconds``) run beside the cluster. Figure: failure declarations
   about running members from the start of the load until ``--load-tail``
   seconds after it, when nothing was killed (and, in the JSON, how many
   members were suspected in that time).

How events are timed. Every agent's output goes to a pipe that a reader
thread of this script drains line by line, stamping each line with
``time.time()`` when it arrives; all figures use these arrival stamps, for
both systems alike (the lag is a few milliseconds; for peer, whose JSON log
lines carry the agent's own ``ts``, the JSON output reports the mean and
maximum lag as a check). Serf: the ``serf: EventMemberJoin/Leave/Failed/
Update/Reap: NAME`` lines its agent logs at INFO level the moment memberlist
tells Serf (Serf's own log stamps have one-second resolution, and its event
handlers run only after a coalescing delay, so neither is used). peer: the
JSON log lines with ``event`` (joined, suspect, alive, failed, left, updated)
and ``member``. From these, each agent's view of each member (up, failed or
left; a suspect member is still up, as Serf lists a suspect member alive) is
kept up to date, for waiting, and the figures are computed afterwards by
replaying the events in arrival order. Every wait is bounded (the join by
``--join-timeout``, the others by ``--timeout``); a figure that did not
happen in time is printed ``timeout``.

Every process started (agents, burners, ``serf members`` calls) is tracked
by PID and killed with SIGKILL in a ``finally``, also on Ctrl-C.

Targets: join convergence and failure detection no slower than Serf; idle CPU
per node within 2x of Serf's; zero false failures under load (peer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peer.testing.processes import Ports, Processes, send_signal, wait

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

UP, FAILED, LEFT = "up", "failed", "left"
# Event kinds, in both systems' words, and the view state each one leaves.
VIEW_AFTER = {"joined": UP, "alive": UP, "updated": UP, "suspect": UP, "failed": FAILED, "left": LEFT}


# --------------------------------------------------------------------------
# Processes and ports: ``peer.testing.processes`` (main makes the one
# ``Processes`` every process is started through).


def run_command(procs: Processes, argv: list[str], timeout: float) -> str | None:
    """Run a short command; its stdout, or None on failure or timeout."""
    proc = procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.kill(proc)
        return None
    return out if proc.returncode == 0 else None


# --------------------------------------------------------------------------
# Events and views.


@dataclass(frozen=True)
class MemberEvent:
    t: float  # arrival time.time() of the log line
    observer: str
    kind: str  # joined, suspect, alive, failed, left, updated (Serf: no suspect; reaped)
    member: str
    agent_ts: float | None = None  # the agent's own timestamp, when its log has one


class EventLog:
    """All member events of one run, and each agent's current view, shared
    between the reader threads and the main thread."""

    def __init__(self) -> None:
        self.events: list[MemberEvent] = []
        self.views: dict[str, dict[str, str]] = {}
        self.first_line: dict[str, float] = {}
        self._changed = threading.Condition()

    def line_seen(self, agent: str, t: float) -> None:
        with self._changed:
            self.first_line.setdefault(agent, t)

    def add(self, event: MemberEvent) -> None:
        with self._changed:
            self.events.append(event)
            state = VIEW_AFTER.get(event.kind)
            if state is not None:
                self.views.setdefault(event.observer, {})[event.member] = state
            self._changed.notify_all()

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` (called under the lock) holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.25))
            return True

    def view(self, observer: str, member: str) -> str | None:
        if observer == member:
            return UP
        return self.views.get(observer, {}).get(member)

    def snapshot(self) -> list[MemberEvent]:
        with self._changed:
            return sorted(self.events, key=lambda e: e.t)


# --------------------------------------------------------------------------
# The two systems.


@dataclass
class Agent:
    index: int
    name: str
    port: int
    control_port: int  # Serf: RPC; peer: HTTP API
    proc: subprocess.Popen[Any] | None = None
    reader: threading.Thread | None = None
    running: bool = True


class System:
    """What differs between Serf and peer: the command line, the log format,
    readiness, the members API and the graceful leave."""

    name = ""
    prefix = ""
    leave_how = ""

    def available(self) -> str | None:
        """None when the system can run here, else why not."""
        raise NotImplementedError

    def command(self, agent: Agent, seed: Agent | None) -> list[str]:
        raise NotImplementedError

    def parse(self, line: str) -> tuple[str, str, float | None] | None:
        """(kind, member, agent timestamp) for a member event line, else None."""
        raise NotImplementedError

    def ready(self, agent: Agent, procs: Processes) -> bool:
        raise NotImplementedError

    def members(self, agent: Agent, procs: Processes) -> dict[str, str] | None:
        """The agent's own members list: name -> up / failed / left / other."""
        raise NotImplementedError

    def checksums(self, agents: list[Agent]) -> int | None:
        """How many distinct view checksums the agents report (None: not offered)."""
        return None

    def leave(self, agent: Agent) -> None:
        raise NotImplementedError

    env: dict[str, str] | None = None
    cwd: Path | None = None


class Serf(System):
    name, prefix, leave_how = "Serf", "s", "SIGINT (graceful leave)"
    EVENT = re.compile(r"\bserf: EventMember(Join|Leave|Failed|Update|Reap): (\S+)")
    # memberlist's prober, when its probe of a member failed and it raises (or
    # confirms) a suspicion; not a view change (it also shows up after a
    # member was declared failed), so it is its own kind.
    PROBE_FAILED = re.compile(r"\bmemberlist: Suspect (\S+) has failed, no acks received")
    KINDS = {"Join": "joined", "Leave": "left", "Failed": "failed", "Update": "updated", "Reap": "reaped"}
    STATUS = {"alive": UP, "failed": FAILED, "left": LEFT}

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def available(self) -> str | None:
        return None if shutil.which(self.binary) else f"{self.binary} not found"

    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, "version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return out.splitlines()[0] if out else "unknown"

    def command(self, agent: Agent, seed: Agent | None) -> list[str]:
        argv = [self.binary, "agent", "-node", agent.name, "-bind", f"{HOST}:{agent.port}",
                "-rpc-addr", f"{HOST}:{agent.control_port}", "-profile", "lan", "-log-level", "info"]
        if seed is not None:
            argv += ["-join", f"{HOST}:{seed.port}"]
        return argv

    def parse(self, line: str) -> tuple[str, str, float | None] | None:
        match = self.EVENT.search(line)
        if match:
            return self.KINDS[match[1]], match[2], None
        match = self.PROBE_FAILED.search(line)
        return ("probe_failed", match[1], None) if match else None

    def ready(self, agent: Agent, procs: Processes) -> bool:
        try:
            with socket.create_connection((HOST, agent.control_port), timeout=0.5):
                return True
        except OSError:
            return False

    def members(self, agent: Agent, procs: Processes) -> dict[str, str] | None:
        out = run_command(procs, [self.binary, "members", "-rpc-addr", f"{HOST}:{agent.control_port}", "-format", "json"],
                          timeout=10)
        if out is None:
            return None
        return {m["name"]: self.STATUS.get(m["status"], m["status"]) for m in json.loads(out)["members"]}

    def leave(self, agent: Agent) -> None:
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGINT)


class Peer(System):
    name, prefix, leave_how = "peer", "p", "SIGTERM"
    STATUS = {"alive": UP, "suspect": UP, "dead": FAILED, "left": LEFT}

    def __init__(self, python: str) -> None:
        self.python = python
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.cwd = REPO

    def available(self) -> str | None:
        try:
            done = subprocess.run([self.python, "-m", "peer", "agent", "--help"], cwd=REPO, capture_output=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired) as error:
            return str(error)
        return None if done.returncode == 0 else "`python -m peer agent --help` fails: " + done.stderr.decode()[-300:]

    def command(self, agent: Agent, seed: Agent | None) -> list[str]:
        argv = [self.python, "-m", "peer", "agent", "--name", agent.name, "--bind", f"{HOST}:{agent.port}",
                "--api", f"{HOST}:{agent.control_port}", "--profile", "lan", "--log-format", "json",
                "--join-timeout", "0"]
        if seed is not None:
            argv += ["--seeds", f"{HOST}:{seed.port}"]
        return argv

    def parse(self, line: str) -> tuple[str, str, float | None] | None:
        if not line.startswith("{"):
            return None
        try:
            record = json.loads(line)
        except ValueError:
            return None
        kind, member = record.get("event"), record.get("member")
        if kind not in VIEW_AFTER or not isinstance(member, str):
            return None
        ts = record.get("ts")
        return kind, member, float(ts) if isinstance(ts, (int, float)) else None

    def _get(self, agent: Agent, path: str) -> Any:
        url = f"http://{HOST}:{agent.control_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def ready(self, agent: Agent, procs: Processes) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{agent.control_port}/health", timeout=0.5) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def members(self, agent: Agent, procs: Processes) -> dict[str, str] | None:
        document = self._get(agent, "/members")
        if not isinstance(document, dict):
            return None
        return {m["name"]: self.STATUS.get(m["status"], m["status"]) for m in document.get("members", [])}

    def checksums(self, agents: list[Agent]) -> int | None:
        found = {str((self._get(a, "/status") or {}).get("checksum")) for a in agents if a.running}
        return len(found)

    def leave(self, agent: Agent) -> None:
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)


# --------------------------------------------------------------------------
# One cluster.


class Cluster:
    """N agents of one system, their output readers and their event log."""

    def __init__(self, system: System, size: int, ports: Ports, procs: Processes, log_dir: Path) -> None:
        self.system, self.procs, self.log_dir = system, procs, log_dir
        self.agents = [Agent(i, f"{system.prefix}{i}", ports.take(), ports.take()) for i in range(size)]
        self.log = EventLog()
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def running(self) -> list[Agent]:
        return [a for a in self.agents if a.running]

    def start(self, agent: Agent) -> None:
        seed = None if agent.index == 0 else self.agents[0]
        agent.proc = self.procs.spawn(self.system.command(agent, seed), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=self.system.env, cwd=self.system.cwd)
        agent.reader = threading.Thread(target=self._read, args=(agent,), daemon=True)
        agent.reader.start()

    def _read(self, agent: Agent) -> None:
        assert agent.proc is not None and agent.proc.stdout is not None
        with open(self.log_dir / f"{agent.name}.log", "w") as file:
            for raw in agent.proc.stdout:
                t = time.time()
                line = raw.decode(errors="replace").rstrip("\n")
                file.write(f"{t:.6f} {line}\n")
                self.log.line_seen(agent.name, t)
                parsed = self.system.parse(line)
                if parsed is not None:
                    kind, member, agent_ts = parsed
                    self.log.add(MemberEvent(t, agent.name, kind, member, agent_ts))
        agent.proc.stdout.close()

    def all_up(self, observers: Iterable[Agent], members: Iterable[Agent]) -> bool:
        names = [m.name for m in members]
        return all(self.log.view(o.name, m) == UP for o in observers for m in names)

    def stop(self) -> None:
        for agent in self.agents:
            if agent.proc is not None:
                self.procs.kill(agent.proc)
                agent.running = False
        for agent in self.agents:
            if agent.reader is not None:
                agent.reader.join(timeout=5)


# --------------------------------------------------------------------------
# Figures from the event log (pure functions of the events).


def join_convergence(events: list[MemberEvent], names: list[str], t0: float) -> float | None:
    """Seconds from t0 until every agent's view first holds all names up."""
    views: dict[str, dict[str, str]] = {n: {n: UP} for n in names}
    complete = {n: False for n in names}
    for e in events:
        state = VIEW_AFTER.get(e.kind)
        if state is None or e.observer not in views or e.observer == e.member:
            continue
        views[e.observer][e.member] = state
        complete[e.observer] = all(views[e.observer].get(n) == UP for n in names)
        if e.t >= t0 and all(complete.values()):
            return e.t - t0
    return None


def first_event(events: list[MemberEvent], observer: str, member: str, kinds: set[str], since: float) -> float | None:
    for e in events:
        if e.t >= since and e.observer == observer and e.member == member and e.kind in kinds:
            return e.t
    return None


def first_suspicion(events: list[MemberEvent], victim: str, t_kill: float) -> float | None:
    """Seconds until some agent first suspected the victim (peer: a suspect
    event; Serf: memberlist's "Suspect ... no acks received" line)."""
    times = [e.t for e in events if e.member == victim and e.kind in ("suspect", "probe_failed") and e.t >= t_kill]
    return min(times) - t_kill if times else None


def detection(events: list[MemberEvent], victim: str, observers: list[str], t_kill: float
              ) -> tuple[float | None, float | None, int]:
    """(first, last declaration of failure in seconds, observers that never declared)."""
    times = [first_event(events, o, victim, {"failed"}, t_kill) for o in observers]
    seen = [t - t_kill for t in times if t is not None]
    missing = len(times) - len(seen)
    return (min(seen) if seen else None), (max(seen) if seen and not missing else None), missing


def leave_outcome(events: list[MemberEvent], leaver: str, observers: list[str], t_leave: float
                  ) -> tuple[float | None, float | None, int, int]:
    """(seconds until every observer showed it gone, left or failed; seconds until every observer
    showed it left, None if any never did; observers that declared it failed; observers that never
    showed it gone)."""
    left = [first_event(events, o, leaver, {"left"}, t_leave) for o in observers]
    gone = [first_event(events, o, leaver, {"left", "failed"}, t_leave) for o in observers]
    failed = sum(first_event(events, o, leaver, {"failed"}, t_leave) is not None for o in observers)
    unseen = sum(t is None for t in gone)
    all_gone = max(t for t in gone if t is not None) - t_leave if gone and not unseen else None
    all_left = max(t for t in left if t is not None) - t_leave if left and None not in left else None
    return all_gone, all_left, failed, unseen


def false_failures(events: list[MemberEvent], running: set[str], start: float, end: float) -> list[MemberEvent]:
    return [e for e in events if e.kind == "failed" and e.member in running and start <= e.t <= end]


# --------------------------------------------------------------------------
# /proc sampling.


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After "(comm)": state is field 3, utime 14 and stime 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def idle_usage(agents: list[Agent], seconds: float) -> tuple[float, float, float]:
    """(mean CPU % per agent, max CPU % of one agent, mean RSS MB per agent) over the window."""
    pids = [a.proc.pid for a in agents if a.proc is not None]
    start_wall, start_cpu = time.monotonic(), [cpu_seconds(p) for p in pids]
    rss: list[float] = []
    deadline = start_wall + seconds
    while True:
        rss += [r for r in (rss_mb(p) for p in pids) if r is not None]
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(5.0, left))
    wall = time.monotonic() - start_wall
    end_cpu = [cpu_seconds(p) for p in pids]
    percents = [100 * (b - a) / wall for a, b in zip(start_cpu, end_cpu) if a is not None and b is not None]
    return statistics.fmean(percents), max(percents), statistics.fmean(rss)


# --------------------------------------------------------------------------
# One run: the five phases.

BURNER = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@dataclass
class RunSettings:
    timeout: float
    join_timeout: float
    settle: float
    kills: int
    idle_seconds: float
    load_seconds: float
    load_tail: float


def code_version() -> str:
    """The commit the peer agents run, and whether their code has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "peer", "membership"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in peer/ or membership/' if dirty else ''}"


def log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_once(system: System, size: int, rep: int, settings: RunSettings, ports: Ports, procs: Processes,
             log_dir: Path, rng: random.Random) -> dict[str, Any]:
    cluster = Cluster(system, size, ports, procs, log_dir / f"{system.name.lower()}-n{size}-r{rep}")
    result: dict[str, Any] = {"system": system.name, "n": size, "rep": rep,
                              "ports": [cluster.agents[0].port, cluster.agents[-1].control_port]}
    try:
        # 1. Join.
        first = cluster.agents[0]
        cluster.start(first)
        deadline = time.monotonic() + settings.timeout
        while not system.ready(first, procs):
            if time.monotonic() > deadline or (first.proc is not None and first.proc.poll() is not None):
                raise RuntimeError(f"{system.name} agent 0 did not start; see {cluster.log_dir}/{first.name}.log")
            time.sleep(0.05)
        t0 = time.time()
        for agent in cluster.agents[1:]:
            cluster.start(agent)
        cluster.log.wait(lambda: cluster.all_up(cluster.agents, cluster.agents), settings.join_timeout)
        events = cluster.log.snapshot()
        result["join_s"] = join_convergence(events, cluster.names, t0)
        ups = [cluster.log.first_line.get(a.name) for a in cluster.agents[1:]]
        result["last_agent_up_s"] = max(t - t0 for t in ups if t is not None) if None not in ups else None
        result["join_after_up_s"] = (result["join_s"] - result["last_agent_up_s"]
                                     if result["join_s"] is not None and result["last_agent_up_s"] is not None
                                     else None)
        exited = [a.name for a in cluster.agents if a.proc is not None and a.proc.poll() is not None]
        if exited:
            raise RuntimeError(f"{system.name} agents exited during the join: {exited}; see {cluster.log_dir}")
        views = [system.members(a, procs) for a in cluster.agents]
        result["api_views_incomplete"] = sum(
            v is None or any(v.get(n) != UP for n in cluster.names if n != a.name)
            for a, v in zip(cluster.agents, views))
        result["distinct_checksums"] = system.checksums(cluster.agents)

        # 2. Idle.
        time.sleep(settings.settle)
        cpu_mean, cpu_max, rss = idle_usage(cluster.agents, settings.idle_seconds)
        result.update(idle_cpu_pct=cpu_mean, idle_cpu_pct_max_agent=cpu_max, idle_rss_mb=rss)

        # 3. Crashes (SIGKILL), one after another, of agents other than agent 0.
        *victims, leaver = rng.sample(cluster.agents[1:], settings.kills + 1)
        for key in ("killed", "kill_suspect_s", "kill_confirm_s", "kill_first_s", "kill_last_s", "kill_undetected"):
            result[key] = []
        for number, victim in enumerate(victims):
            if number:
                time.sleep(settings.settle)
            observers = cluster.running()
            observers.remove(victim)
            t_kill = time.time()
            assert victim.proc is not None
            send_signal(victim.proc, signal.SIGKILL)
            victim.running = False

            def all_see_it_gone(victim: Agent = victim, observers: list[Agent] = observers) -> bool:
                return all(cluster.log.view(o.name, victim.name) in (FAILED, LEFT) for o in observers)

            cluster.log.wait(all_see_it_gone, settings.timeout)
            events = cluster.log.snapshot()
            first_s, last_s, missing = detection(events, victim.name, [o.name for o in observers], t_kill)
            result["killed"].append(victim.name)
            suspected_s = first_suspicion(events, victim.name, t_kill)
            result["kill_suspect_s"].append(suspected_s)
            result["kill_confirm_s"].append(first_s - suspected_s if first_s is not None and suspected_s is not None
                                            else None)
            result["kill_first_s"].append(first_s)
            result["kill_last_s"].append(last_s)
            result["kill_undetected"].append(missing)

        # 4. Graceful leave of another agent, once the failure's gossip has settled.
        time.sleep(settings.settle)
        observers = [a for a in cluster.running() if a is not leaver]
        t_leave = time.time()
        system.leave(leaver)
        cluster.log.wait(lambda: all(cluster.log.view(o.name, leaver.name) in (FAILED, LEFT) for o in observers),
                         settings.timeout)
        gone_s, all_left_s, failed, missing = leave_outcome(cluster.log.snapshot(), leaver.name,
                                                            [o.name for o in observers], t_leave)
        assert leaver.proc is not None
        code = wait(leaver.proc, settings.timeout)
        leaver.running = False
        result.update(left=leaver.name, leave_s=gone_s, leave_all_left_s=all_left_s, leave_reported_failed=failed,
                      leave_unseen=missing,
                      leave_exit_code=code, leave_exit_s=time.time() - t_leave)

        # 5. Load: two busy loops, bounded in time, and no agent killed.
        time.sleep(settings.settle)
        running = cluster.running()
        t_load = time.time()
        for _ in range(2):
            procs.spawn([sys.executable, "-c", BURNER, str(settings.load_seconds)])
        time.sleep(settings.load_seconds + settings.load_tail)
        t_end = time.time()
        events = cluster.log.snapshot()
        bogus = false_failures(events, {a.name for a in running}, t_load, t_end)
        result["load_false_failures"] = len(bogus)
        result["load_false_failure_examples"] = [f"{e.observer}: {e.member} at +{e.t - t_load:.1f} s"
                                                 for e in bogus[:5]]
        result["load_members_suspected"] = len({e.member for e in events if e.kind in ("suspect", "probe_failed")
                                                 and t_load <= e.t <= t_end})
        result["load_views_complete_after"] = cluster.log.wait(lambda: cluster.all_up(running, running), 10.0)

        lags = [e.t - e.agent_ts for e in cluster.log.snapshot() if e.agent_ts is not None]
        if lags:
            result["log_lag_ms"] = {"mean": 1000 * statistics.fmean(lags), "max": 1000 * max(lags)}
    finally:
        cluster.stop()
    return result


def describe(r: dict[str, Any]) -> str:
    kills = ", ".join(f"{name} {show(s)}/{show(f)}/{show(last)}" for name, s, f, last in
                      zip(r["killed"], r["kill_suspect_s"], r["kill_first_s"], r["kill_last_s"]))
    checksums = "" if r["distinct_checksums"] is None else f", {r['distinct_checksums']} distinct checksums"
    return (f"{r['system']:>4} N={r['n']} rep {r['rep']}: join {show(r['join_s'])} s"
            f" (last agent up {show(r['last_agent_up_s'])} s, API views incomplete {r['api_views_incomplete']}"
            f"{checksums}), idle {r['idle_cpu_pct']:.2f} % CPU {r['idle_rss_mb']:.1f} MB,"
            f" kill (suspected/first/last failed s): {kills},"
            f" leave {r['left']}: {show(r['leave_s'])} s ({r['leave_reported_failed']} failed, exit {r['leave_exit_code']}),"
            f" load: {r['load_false_failures']} false failures, {r['load_members_suspected']} members suspected")


# --------------------------------------------------------------------------
# Summaries and output.


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    kind: str = "time"  # time: median/worst of seconds (None = timeout); mean: median/worst; count: total/worst
    target: str = ""  # "le1": peer <= Serf; "le2": peer <= 2 x Serf; "zero": peer total is 0
    markdown: bool = True  # in the table for BENCHMARKS.md (else in the printed table and the JSON only)


FIGURES = [
    Figure("join_s", "join convergence", "s", target="le1"),
    Figure("join_after_up_s", "join from the last agent up", "s"),
    Figure("kill_suspect_s", "kill -9: first suspicion", "s", markdown=False),
    Figure("kill_confirm_s", "  then until first failed", "s", markdown=False),
    Figure("kill_first_s", "kill -9: first detection", "s", target="le1"),
    Figure("kill_last_s", "kill -9: last detection", "s", target="le1"),
    Figure("leave_s", "leave: gone for all", "s"),
    Figure("leave_reported_failed", "leaves reported failed", "", "count", target="zero"),
    Figure("idle_cpu_pct", "idle CPU per node", "%", "mean", target="le2"),
    Figure("idle_rss_mb", "RSS per node", "MB", "mean"),
    Figure("load_false_failures", "false failures under load", "", "count", target="zero"),
]


def show(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "timeout"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def samples(runs: list[dict[str, Any]], key: str) -> list[Any]:
    """Every run's value of a figure; figures measured several times per run (one per kill) are flattened."""
    out: list[Any] = []
    for r in runs:
        out += r[key] if isinstance(r[key], list) else [r[key]]
    return out


def summarize(values: list[Any], figure: Figure) -> dict[str, Any]:
    if figure.kind == "count":
        return {"total": sum(values), "worst": max(values), "values": values}
    numbers = [math.inf if v is None else v for v in values]
    median, worst = statistics.median(numbers), max(numbers)
    return {"median": None if math.isinf(median) else median, "worst": None if math.isinf(worst) else worst,
            "values": values}


def ratio(peer: float | None, serf: float | None) -> float | None:
    if peer is None or serf is None:
        return None
    if serf == 0:
        return None if peer else 1.0
    return peer / serf


def verdict(figure: Figure, serf: dict[str, Any], peer: dict[str, Any]) -> str:
    if figure.target == "zero":
        return "met" if peer["total"] == 0 else "NOT met"
    if figure.target in ("le1", "le2"):
        bound = 1.0 if figure.target == "le1" else 2.0
        checks = []
        for which in ("median", "worst"):
            r = ratio(peer[which], serf[which])
            if peer[which] is None:
                checks.append(False)
            elif serf[which] is None:
                checks.append(True)  # Serf timed out, peer did not
            else:
                checks.append(r is not None and r <= bound)
        if all(checks):
            return "met"
        return "met on the median only" if checks[0] else "NOT met"
    return ""


TARGET_TEXT = {"le1": "peer <= Serf", "le2": "peer <= 2x Serf", "zero": "peer: 0"}


def cell(figure: Figure, s: dict[str, Any], digits: int) -> str:
    if figure.kind == "count":
        return f"{s['total']}"
    return f"{show(s['median'], digits)} / {show(s['worst'], digits)}"


def ratio_cell(figure: Figure, serf: dict[str, Any], peer: dict[str, Any]) -> str:
    if figure.kind == "count":
        return "-"
    def one(which: str) -> str:
        r = ratio(peer[which], serf[which])
        return "n/a" if r is None else f"{r:.2f}"

    return f"{one('median')} / {one('worst')}"


def digits_for(figure: Figure) -> int:
    return 1 if figure.key == "idle_rss_mb" else 2


def text_report(summary: dict[int, dict[str, dict[str, dict[str, Any]]]], reps: int) -> str:
    lines = []
    for size, systems in summary.items():
        if set(systems) != {"Serf", "peer"}:
            only = ", ".join(systems)
            lines.append(f"\nN = {size} ({only} only), median / worst of {reps}; counts are totals over the runs")
        else:
            lines.append(f"\nN = {size}, median / worst of {reps} runs; counts are totals over the runs")
        header = f"{'figure':<32} {'Serf':>17} {'peer':>17} {'peer/Serf':>13}  target"
        lines += [header, "-" * len(header)]
        for figure in FIGURES:
            serf, peer = systems.get("Serf", {}).get(figure.key), systems.get("peer", {}).get(figure.key)
            d = digits_for(figure)
            label = f"{figure.label}" + (f" ({figure.unit})" if figure.unit else "")
            row = f"{label:<32} {cell(figure, serf, d) if serf else '-':>17} {cell(figure, peer, d) if peer else '-':>17}"
            if serf and peer:
                row += f" {ratio_cell(figure, serf, peer):>13}"
                if figure.target:
                    row += f"  {TARGET_TEXT[figure.target]}: {verdict(figure, serf, peer)}"
            lines.append(row)
    return "\n".join(lines)


def markdown_table(summary: dict[int, dict[str, dict[str, dict[str, Any]]]]) -> str:
    figures = [f for f in FIGURES if f.markdown]
    heads = ["N", "system"] + [
        f"{f.label}" + (f" ({f.unit}, median / worst)" if f.kind != "count" else " (total)") for f in figures]
    rows = ["| " + " | ".join(heads) + " |", "| " + " | ".join(["---:", "---"] + ["---:"] * len(figures)) + " |"]
    for size, systems in summary.items():
        for name in ("Serf", "peer"):
            if name in systems:
                rows.append("| " + " | ".join([str(size), name] + [
                    cell(f, systems[name][f.key], digits_for(f)) for f in figures]) + " |")
        if {"Serf", "peer"} <= set(systems):
            rows.append("| " + " | ".join([str(size), "peer / Serf"] + [
                ratio_cell(f, systems["Serf"][f.key], systems["peer"][f.key]) for f in figures]) + " |")
    return "\n".join(rows)


def targets_report(summary: dict[int, dict[str, dict[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    out = []
    for size, systems in summary.items():
        if not {"Serf", "peer"} <= set(systems):
            continue
        for figure in FIGURES:
            if figure.target:
                out.append({"n": size, "figure": figure.key, "target": TARGET_TEXT[figure.target],
                            "verdict": verdict(figure, systems["Serf"][figure.key], systems["peer"][figure.key])})
    return out


# --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,30", help="cluster sizes, comma-separated (default 10,30)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per size and system (default 3)")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--load-tail", type=float, default=10.0,
                        help="also count failures this long after the load ends (default 10)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="pause after convergence, after the detection of the kill and after the leave")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound of every other wait (default 60 s)")
    parser.add_argument("--join-timeout", type=float, default=120.0,
                        help="bound of the wait for join convergence (default 120 s: two of Serf's push-pull"
                             " periods up to 64 members, so that a member Serf left missing is still timed)")
    parser.add_argument("--systems", default="serf,peer", help="serf, peer or both (default)")
    parser.add_argument("--serf", default="serf", help="the serf binary")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs `-m peer agent`")
    parser.add_argument("--kills", type=int, default=2,
                        help="agents killed one after another in each run (default 2): detection times vary by"
                             " seconds with the luck of the probe order, so each run gives this many samples")
    parser.add_argument("--seed", type=int, default=1, help="picks which agents are killed and leave")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--keep-logs", action="store_true", help="keep every agent's output (path printed)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.kills < 1 or min(sizes) < args.kills + 3 or args.reps < 1:
        parser.error("need --kills >= 1, --reps >= 1 and sizes >= kills + 3 (agent 0 stays, the killed ones,"
                     " one leaves, one observes)")

    wanted = {s.strip().lower() for s in args.systems.split(",")}
    systems: list[System] = []
    notes: list[str] = []
    for candidate in (Serf(args.serf), Peer(args.python)):
        if candidate.name.lower() in wanted:
            problem = candidate.available()
            if problem:
                notes.append(f"{candidate.name} skipped: {problem}")
                log_progress(notes[-1])
            else:
                systems.append(candidate)
    if not systems:
        raise SystemExit("nothing to run")
    ports = {"Serf": Ports(17000, 27000), "peer": Ports(27000, 32768)}
    settings = RunSettings(args.timeout, args.join_timeout, args.settle, args.kills, args.idle_seconds, args.load_seconds,
                           args.load_tail)
    rng = random.Random(args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="serf_compare-"))
    # Every process in a session of its own: a Ctrl-C in the terminal reaches
    # this script only, not the agents (a SIGINT would make a Serf agent leave).
    procs = Processes(new_session=True, reap_timeout=5.0)
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    version = code_version()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for size in sizes:
            for rep in range(1, args.reps + 1):
                for system in systems:
                    try:
                        result = run_once(system, size, rep, settings, ports[system.name], procs, log_dir, rng)
                    except (RuntimeError, OSError) as error:  # OSError: no free port left in the range
                        raise SystemExit(f"{error}\n(logs kept in {log_dir})") from None
                    runs.append(result)
                    log_progress(describe(result))
    except KeyboardInterrupt:
        args.keep_logs = True
        log_progress(f"interrupted; agents killed; logs in {log_dir}")
        raise SystemExit(130) from None
    finally:
        procs.kill_all()
        if not args.keep_logs and not sys.exc_info()[0]:
            shutil.rmtree(log_dir, ignore_errors=True)

    summary: dict[int, dict[str, dict[str, dict[str, Any]]]] = {}
    for size in sizes:
        for system in systems:
            mine = [r for r in runs if r["n"] == size and r["system"] == system.name]
            summary.setdefault(size, {})[system.name] = {f.key: summarize(samples(mine, f.key), f)
                                                         for f in FIGURES}
    markdown = markdown_table(summary)
    targets = targets_report(summary)
    wall = time.monotonic() - started
    command = "python bench/serf_compare.py " + " ".join(sys.argv[1:])
    if args.json:
        print(json.dumps({"command": command.strip(), "peer_code": version, "serf": Serf(args.serf).version(),
                          "sizes": sizes, "reps": args.reps, "settings": vars(settings),
                          "serf_leave": Serf.leave_how, "peer_leave": Peer.leave_how, "notes": notes,
                          "runs": runs, "summary": {str(k): v for k, v in summary.items()}, "targets": targets,
                          "markdown": markdown, "wall_seconds": round(wall, 1)}, indent=2))
        return
    print(f"{command.strip()}   ({wall / 60:.1f} min; loopback, {os.cpu_count()} cores; Serf leave by "
          f"{Serf.leave_how}, peer by {Peer.leave_how}; idle window {args.idle_seconds:g} s; load: 2 busy loops "
          f"for {args.load_seconds:g} s, failures counted until {args.load_tail:g} s after)")
    print(f"peer code: {version}; serf: {Serf(args.serf).version()}")
    for note in notes:
        print(note)
    print(text_report(summary, args.reps))
    print("\nTargets: join convergence and failure detection no slower than Serf (median and worst);"
          " idle CPU per node within 2x of Serf's; zero false failures under load (peer).")
    for t in targets:
        print(f"  N={t['n']:<3} {t['figure']:<22} {t['target']:<16} {t['verdict']}")
    if args.keep_logs:
        print(f"\nagent logs: {log_dir}")
    print("\nFor BENCHMARKS.md:\n")
    print(markdown)


if __name__ == "__main__":
    main()
