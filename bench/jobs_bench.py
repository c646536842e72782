"""The scheduler on real agents: failover after kill -9, one-off throughput,
and the simulator's jobs scenario.

    python bench/jobs_bench.py failover   [--reps 5] [--nodes 5] [--seed 1] [--json]       # about 1.5 minutes
    python bench/jobs_bench.py throughput [--nodes 3] [--batches 3] [--submits 300]
                                          [--threads 8] [--sample 20] [--json]            # about 1.5 minutes
    python bench/jobs_bench.py sim        [--seeds 1,2,3] [--json]                        # about 6.5 minutes
    python bench/jobs_bench.py cpu        [--nodes 4] [--jobs 10] [--window 30] [--log-level info] [--json]  # about 2 minutes
    python bench/jobs_bench.py all        [...]                   # the three, one after the other

Every agent is a ``peer agent --profile lan`` with a cluster key, started on
127.0.0.1 through ``peer.testing.cluster.LocalCluster`` (every process tracked by
PID and killed when its ``with`` block ends, whatever happened). Clusters run
one after the other. All times are read from this machine's one clock:
``time.time()`` here, and the epoch-ms fields of the run records and the
``ts`` of the agents' JSON log lines there.

failover. Per repetition a fresh cluster of ``--nodes`` agents; once every
agent sees all of them eligible, a cron job ``@every 1s`` in mode ``one``
calling ``peer.testing.samples.journal`` (one line per execution, written outside the
system under test: run id, attempt, node, start ms) is defined; once every
agent names the same owner and three ticks ran, the owner gets SIGKILL at a
random point between two ticks. Figures, in seconds from the kill:

- ``detect_first`` / ``detect_all``: the first / the last survivor's
  ``failed`` event for the killed node (their JSON logs);
- ``detect_all_api``: when polling every survivor's ``GET /members`` (every
  0.1 s) first showed it ``dead`` everywhere (the issue's definition;
  resolution 0.1 s plus one round of requests);
- ``failover``: the earliest ``started`` of a run record of the job owned by
  another node and started after the kill (read with ``GET /runs?job=``);
  ``failover_journal`` is the same from the journal;
- ``new_owner_detect``: when the node that took the job logged the failure;
  ``failover - new_owner_detect`` is the scheduler's own reaction;
- ``first_tick_late``: how late the first tick after the kill started
  (started - tick), and its owner;
- ``catch_up``: the states of the ticks due between the kill and the
  failover (``catch_up_run`` succeeded, ``catch_up_skipped`` skipped);
- ``duplicates``: run ids executed more than once (journal); ``missed``:
  ticks from the kill until 2 s before the end with no execution.

Target: failover <= detection (by all) + one tick (1 s).

throughput. A cluster of ``--nodes`` (3) agents; ``--batches`` times, one
after the other (each once the last is readable everywhere), ``--submits``
one-off runs of ``peer.testing.samples:echo`` are posted to ``POST /submit`` of the
first agent by ``--threads`` client threads (each keeps one HTTP connection
alive, as a client with a connection pool does).
Figures: submits accepted per second (from the first request sent to the
last answer), the CPU the agents spent per submit, summed (from the first
submit until every agent listed them all: what bounds the rate on a machine
whose cores are shared), the request latency, the time from the first submit until
every run's record says ``succeeded`` (the largest ``finished``) and
completions per second over that time, and until every agent lists all of
them succeeded (``GET /runs?job=&state=succeeded`` polled every 0.2 s). For
a sample of ``--sample`` runs of the batch, one ``GET /runs/{id}?wait=60``
per agent is sent as soon as the submit answered: the time from the submit
until the result is readable on each agent (the agent answers within 50 ms
of the record arriving), and on every agent. The same sample is also taken
with the cluster idle, one submit at a time, before and after the batches.
Per batch, the agents' replication counters show how the records travelled
(gossiped deltas, entries received by digest sync, datagrams sent).

sim. ``python -m sim jobs --nodes 50 --churn 10 --loss 0.05 --duration 90
--seed S --json`` for each seed of ``--seeds``, and one stable run (no churn,
no loss) of the same size: expected ticks, missed, duplicates (also per 10k
ticks), lost results, and the simulator's speed.

cpu. A cluster of ``--nodes`` (4) agents at ``--log-level`` (info, the default),
idle for ``--window`` seconds, then running ``--jobs`` (10) cron jobs in mode
``one``, ``@every 1s``, each calling ``peer.testing.samples:journal`` (one line
appended to a file); once every job has run three times, another window. The
agents' CPU time (user + system, from ``/proc/PID/stat``), summed over the
cluster, is read at the start and end of each window; the runs are counted
from the journal. Figure: CPU per run = (CPU in the busy window - CPU in the
idle window) / runs started in the busy window, in milliseconds: what one
run costs the whole cluster beyond its idle membership and replication
chatter. CPU time, not wall time, so another load on the machine moves it
little.

The machine is shared; compare the figures within one run (failover against
detection), not across runs. No figure is asserted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peer.control.client import ClientError, api_path
from peer.jobs.runs import tick_run_id
from peer.runtime.keys import generate_key
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for

REPO = Path(__file__).resolve().parent.parent

TIMEOUT = 60.0  # any wait: generous, the machine is shared
TICK_MS = 1000


def now_ms() -> float:
    return time.time() * 1000


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def p95(values: Iterable[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    return present[min(len(present) - 1, math.ceil(0.95 * len(present)) - 1)]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def load_note() -> str:
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return f"load average {one} / {five} / {fifteen} on {os.cpu_count()} cores"


# -- a cluster ------------------------------------------------------------------------


def start_cluster(cluster: LocalCluster, n: int) -> list[AgentProcess]:
    """``n`` agents, each seeing all ``n`` eligible to own work."""
    agents = [cluster.add() for _ in range(n)]
    cluster.wait_api(agents, TIMEOUT)
    wait_for(lambda: all(eligible(agent) == n for agent in agents), TIMEOUT, f"{n} eligible agents", interval=0.2)
    return agents


def port_retries(function: Any, *args: Any) -> Any:
    """``function(*args)``, again (a fresh cluster) when an agent could not
    bind the port it was given: ``free_port`` checks a port, the agent binds
    it later, and other processes on this machine take ports meanwhile."""
    for attempt in range(3):
        try:
            return function(*args)
        except RuntimeError as error:
            if "in use" not in str(error) or attempt == 2:
                raise
            print(f"  (an agent's port was taken meanwhile; starting that cluster again: {str(error).splitlines()[-1]})",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def eligible(agent: AgentProcess) -> int:
    try:
        return int(agent.call("/status")["scheduler"]["eligible"])
    except ClientError:
        return -1


def owners(agents: Iterable[AgentProcess], job: str) -> set[str | None]:
    seen = set()
    for agent in agents:
        try:
            seen |= {entry["owner"] for entry in agent.call("/jobs")["jobs"] if entry["id"] == job} or {None}
        except ClientError:
            seen.add(None)
    return seen


def failed_events(agent: AgentProcess, member: str, after_s: float) -> float | None:
    """When ``agent`` logged ``member`` failed (epoch s), at or after ``after_s``."""
    for line in agent.log_text().splitlines():
        if '"failed"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "failed" and entry.get("member") == member and entry.get("ts", 0) >= after_s:
            return float(entry["ts"])
    return None


def read_journal(path: Path) -> list[tuple[str, int, str, int]]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        run, attempt, node, start = text.split(" ")
        lines.append((run, int(attempt), node, int(start)))
    return lines


# -- failover ------------------------------------------------------------------------------


def failover_rep(rep: int, nodes: int, workdir: Path, rng: random.Random) -> dict[str, Any]:
    job = f"failover-{rep}"
    journal = workdir / f"{job}.journal"
    shutil.rmtree(workdir / f"rep{rep}", ignore_errors=True)
    journal.unlink(missing_ok=True)
    with LocalCluster(workdir / f"rep{rep}", profile="lan", key=generate_key()) as cluster:
        (workdir / f"rep{rep}").mkdir(parents=True)
        agents = start_cluster(cluster, nodes)
        definition = {
            "id": job,
            "schedule": "@every 1s",
            "mode": "one",
            "call": "peer.testing.samples:journal",
            "kwargs": {"path": str(journal)},
        }
        agents[0].call("/jobs", method="POST", body=definition)
        def agreed() -> str | None:
            seen = owners(agents, job)
            return next(iter(seen)) if len(seen) == 1 else None

        owner_name = wait_for(agreed, TIMEOUT, "the agents to agree on the owner", interval=0.2)
        wait_for(lambda: len(read_journal(journal)) >= 3, TIMEOUT, "three ticks to run", interval=0.2)
        # A random point between two ticks.
        phase = rng.uniform(0.1, 0.9)
        time.sleep((math.ceil(time.time()) + phase) - time.time())
        owner = cluster.agents[owner_name]
        kill_ms = now_ms()
        owner.kill()
        survivors = [agent for agent in agents if agent is not owner]

        seen_dead: dict[str, float] = {}
        first_run: dict[str, Any] | None = None
        deadline = time.monotonic() + TIMEOUT
        turn = 0
        while (len(seen_dead) < len(survivors) or first_run is None) and time.monotonic() < deadline:
            for agent in survivors:
                if agent.name not in seen_dead:
                    try:
                        if agent.view().get(owner_name) == "dead":
                            seen_dead[agent.name] = now_ms()
                    except ClientError:
                        pass
            if first_run is None:
                reader = survivors[turn % len(survivors)]
                turn += 1
                first_run = _first_run_after(reader, job, owner_name, kill_ms)
            time.sleep(0.1)
        time.sleep(2.0)  # the catch-up runs finish and their records spread
        end_ms = now_ms()
        records = survivors[0].call(api_path("runs", query={"job": job, "limit": 1000}))["runs"]
        first_run = _first_run_after(survivors[0], job, owner_name, kill_ms) or first_run
        detections = {agent.name: failed_events(agent, owner_name, kill_ms / 1000) for agent in survivors}
        lines = read_journal(journal)
        (workdir / f"rep{rep}" / "records.json").write_text(json.dumps(records, indent=1))

    row: dict[str, Any] = {"rep": rep, "nodes": nodes, "killed": owner_name, "kill_phase": round(phase, 2)}
    logged = [t for t in detections.values() if t is not None]
    row["detect_first"] = (min(logged) * 1000 - kill_ms) / 1000 if logged else None
    row["detect_all"] = (max(logged) * 1000 - kill_ms) / 1000 if len(logged) == len(survivors) else None
    row["detect_all_api"] = (max(seen_dead.values()) - kill_ms) / 1000 if len(seen_dead) == len(survivors) else None
    if first_run is not None:
        row["new_owner"] = first_run["owner"]
        row["failover"] = (first_run["started"] - kill_ms) / 1000
        new_owner_detect = detections.get(first_run["owner"])
        row["new_owner_detect"] = None if new_owner_detect is None else (new_owner_detect * 1000 - kill_ms) / 1000
        row["failover_run"] = first_run["id"]
        row["failover_attempt"] = first_run.get("attempt", 1)
    else:
        row.update(new_owner=None, failover=None, new_owner_detect=None)
    after = [line for line in lines if line[2] != owner_name and line[3] > kill_ms]
    row["failover_journal"] = (min(line[3] for line in after) - kill_ms) / 1000 if after else None
    first_tick = math.ceil(kill_ms / TICK_MS) * TICK_MS
    by_id = {record["id"]: record for record in records}
    tick_record = by_id.get(tick_run_id(job, first_tick))
    if tick_record is not None and tick_record.get("started") is not None:
        row["first_tick_late"] = (tick_record["started"] - first_tick) / 1000
        row["first_tick_owner"] = tick_record.get("owner")
    else:
        row["first_tick_late"] = None
        row["first_tick_owner"] = None
    executions = Counter(line[0] for line in lines)
    row["executions"] = len(lines)
    row["duplicates"] = sum(count - 1 for count in executions.values() if count > 1)
    ticks = range(first_tick, int(end_ms) - 2000, TICK_MS)
    row["ticks_after_kill"] = len(ticks)
    row["missed"] = sum(1 for tick in ticks if tick_run_id(job, tick) not in executions)
    # What became of the ticks due between the kill and the failover.
    catch_up = [tick for tick in ticks if row.get("failover") is not None and tick < kill_ms + row["failover"] * 1000]
    states = Counter((by_id.get(tick_run_id(job, tick)) or {}).get("state", "none") for tick in catch_up)
    row["catch_up"] = dict(states)
    row["catch_up_run"] = states.get("succeeded", 0)
    row["catch_up_skipped"] = states.get("skipped", 0)
    detection = row["detect_all_api"]
    row["failover_minus_detect"] = None if row["failover"] is None or detection is None else row["failover"] - detection
    row["within_target"] = None if row["failover_minus_detect"] is None else row["failover_minus_detect"] <= TICK_MS / 1000
    return row


def _first_run_after(agent: AgentProcess, job: str, killed: str, kill_ms: float) -> dict[str, Any] | None:
    try:
        runs = agent.call(api_path("runs", query={"job": job, "limit": 1000}))["runs"]
    except ClientError:
        return None
    started = [r for r in runs if r.get("owner") not in (None, killed) and (r.get("started") or 0) > kill_ms]
    return min(started, key=lambda r: r["started"]) if started else None


FAILOVER_COLUMNS = [
    ("rep", "rep", 0),
    ("killed", "killed", None),
    ("detect_first", "detect first", 2),
    ("detect_all", "detect all (log)", 2),
    ("detect_all_api", "detect all (API)", 2),
    ("new_owner_detect", "new owner detects", 2),
    ("failover", "failover", 2),
    ("failover_journal", "failover (journal)", 2),
    ("failover_minus_detect", "failover - detect all (API)", 2),
    ("first_tick_late", "first tick late", 2),
    ("duplicates", "dups", 0),
    ("catch_up_run", "ticks in the gap: run", 0),
    ("catch_up_skipped", "skipped", 0),
    ("missed", "not run", 0),
]


def failover(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    rows = []
    print(f"failover: {args.reps} reps of {args.nodes} agents (lan profile, keyed); {load_note()}", flush=True)
    header = " | ".join(title for _, title, _ in FAILOVER_COLUMNS)
    if not args.json:
        print(header, flush=True)
    for rep in range(args.reps):
        row = port_retries(failover_rep, rep, args.nodes, workdir, rng)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(" | ".join(_cell(row.get(key), digits) for key, _, digits in FAILOVER_COLUMNS), flush=True)
    summary = {
        key: median(row.get(key) for row in rows)
        for key, _, digits in FAILOVER_COLUMNS
        if digits == 2
    }
    gaps: list[float] = [row["failover_minus_detect"] for row in rows if row["failover_minus_detect"] is not None]
    summary["worst_failover_minus_detect"] = max(gaps, default=None)
    summary["within_target"] = sum(1 for row in rows if row["within_target"])
    summary["duplicates"] = sum(row["duplicates"] for row in rows)
    summary["missed"] = sum(row["missed"] for row in rows)
    summary["catch_up_run"] = sum(row["catch_up_run"] for row in rows)
    summary["catch_up_skipped"] = sum(row["catch_up_skipped"] for row in rows)
    summary["reps"] = len(rows)
    if args.json:
        print(json.dumps({"failover_median": summary}), flush=True)
    else:
        print(
            "median: " + ", ".join(f"{key} {fmt(value)}" for key, value in summary.items() if isinstance(value, float)),
            flush=True,
        )
        print(
            f"failover <= detect all (API) + 1 s in {summary['within_target']} of {len(rows)} reps;"
            f" worst failover - detection {fmt(summary['worst_failover_minus_detect'])} s;"
            f" duplicates {summary['duplicates']}; ticks due between the kill and the failover: {summary['catch_up_run']} run,"
            f" {summary['catch_up_skipped']} recorded skipped; ticks after the kill never run: {summary['missed']}; {load_note()}",
            flush=True,
        )
    return {"rows": rows, "median": summary}


def _cell(value: Any, digits: int | None) -> str:
    if value is None:
        return "-"
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# -- throughput ----------------------------------------------------------------------------


BATCH_COLUMNS = [
    ("submits_per_s", "submits/s", 0),
    ("request_ms_median", "request ms (median)", 0),
    ("all_succeeded_s", "all succeeded (s)", 2),
    ("completions_per_s", "completions/s", 0),
    ("everywhere_s", "all listed everywhere (s)", 2),
    ("cpu_ms_per_submit", "agents' CPU per submit (ms)", 2),
    ("start_ms_median", "submit->started median (ms)", 0),
    ("start_ms_p95", "p95", 0),
    ("local_ms_median", "sample: readable on node-0 median (ms)", 0),
    ("local_ms_p95", "p95", 0),
    ("every_ms_median", "readable on every node median (ms)", 0),
    ("every_ms_p95", "p95", 0),
]


def throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    return port_retries(_throughput, args, workdir)


def _throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    print(
        f"throughput: {args.nodes} agents (lan profile, keyed), {args.batches} batches of {args.submits} submits"
        f" to node-0 from {args.threads} threads, sample {args.sample} per batch; {load_note()}",
        flush=True,
    )
    batches = []
    shutil.rmtree(workdir / "throughput", ignore_errors=True)
    with LocalCluster(workdir / "throughput", profile="lan", key=generate_key()) as cluster:
        (workdir / "throughput").mkdir(parents=True)
        agents = start_cluster(cluster, args.nodes)
        target = agents[0]
        # A first run, so that nothing below pays for a first import.
        warm = target.call("/submit", method="POST", body={"id": "warm", "call": "peer.testing.samples:echo"})["run"]
        for agent in agents:
            agent.call(api_path("runs", warm, query={"wait": 30}), timeout=35)
        idle_before = _sequential(args, agents, job="idle-before")
        if not args.json:
            print("batch | " + " | ".join(title for _, title, _ in BATCH_COLUMNS), flush=True)
        for number in range(args.batches):
            before = {agent.name: agent.call("/status") for agent in agents}
            batch = _batch(args, agents, job=f"tp{number}")
            after = {agent.name: agent.call("/status") for agent in agents}
            batch["counters"] = {
                name: {
                    key: after[name]["replication"][key] - before[name]["replication"][key]
                    for key in ("writes", "deltas_received", "entries_received", "syncs_started")
                }
                | {"datagrams_out": after[name]["transport"]["datagrams_out"] - before[name]["transport"]["datagrams_out"]}
                for name in after
            }
            batches.append(batch)
            if args.json:
                print(json.dumps({"batch": number, **batch}), flush=True)
            else:
                print(f"{number} | " + " | ".join(_cell(batch.get(key), digits) for key, _, digits in BATCH_COLUMNS), flush=True)
                print(f"    owners {batch['owners']}; submit->started by owner (median, p95 ms): "
                      + ", ".join(f"{o} {fmt(m, 0)}/{fmt(q, 0)}" for o, (m, q) in batch["start_ms_by_owner"].items())
                      + f"; not succeeded {batch['not_succeeded']}, submit errors {batch['errors']}", flush=True)
                counters = "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for name, c in batch["counters"].items())
                print("    " + counters, flush=True)
            time.sleep(2.0)
        idle_after = _sequential(args, agents, job="idle-after")
        load = load_note()

    summary = {key: median(b.get(key) for b in batches) for key, _, _ in BATCH_COLUMNS}
    result = {"nodes": args.nodes, "submits": args.submits, "threads": args.threads, "batches": batches,
              "median": summary, "idle_before": idle_before, "idle_after": idle_after, "load_after": load}
    if args.json:
        print(json.dumps({"median": summary, "idle_before": idle_before, "idle_after": idle_after}), flush=True)
    else:
        print("median | " + " | ".join(_cell(summary.get(key), digits) for key, _, digits in BATCH_COLUMNS), flush=True)
        for name, part in (("idle, one at a time, before", idle_before), ("idle, one at a time, after", idle_after)):
            print(f"{name} ({part['sampled']} runs): submit -> readable on node-0 median"
                  f" {fmt(part['local_ms_median'], 0)} ms, p95 {fmt(part['local_ms_p95'], 0)};"
                  f" on every node median {fmt(part['every_ms_median'], 0)} ms, p95 {fmt(part['every_ms_p95'], 0)}", flush=True)
        print(load, flush=True)
    return result


def _watch(
    agents: list[AgentProcess], run_id: str, sent_ms: float, answered_ms: float, out: list[dict[str, Any]]
) -> list[threading.Thread]:
    """One waiter per agent for ``run_id``'s result; appends a summary to ``out``."""
    seen: dict[str, float | None] = {}

    def wait(agent: AgentProcess) -> None:
        try:
            record = agent.call(api_path("runs", run_id, query={"wait": 60}), timeout=65)
            seen[agent.name] = now_ms() if record.get("state") == "succeeded" else None
        except ClientError:
            seen[agent.name] = None

    threads = [threading.Thread(target=wait, args=(agent,), daemon=True) for agent in agents]
    for thread in threads:
        thread.start()

    def collect() -> None:
        for thread in threads:
            thread.join()
        times = [seen.get(agent.name) for agent in agents]
        out.append({
            "run": run_id,
            "local_ms": None if times[0] is None else times[0] - sent_ms,
            "every_ms": None if None in times else max(t for t in times if t is not None) - sent_ms,
            "request_ms": answered_ms - sent_ms,
        })

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    return [collector]


def _batch(args: argparse.Namespace, agents: list[AgentProcess], job: str) -> dict[str, Any]:
    target = agents[0]
    k = args.submits
    every = max(1, k // max(1, args.sample))
    submitted: list[tuple[int, str, float, float]] = []
    watchers: list[threading.Thread] = []
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(k))

    def submitter() -> None:
        # One kept-alive connection per thread, as a client with a
        # connection pool (httpx, requests.Session) has.
        connection = http.client.HTTPConnection(*target.api, timeout=30)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                connection.close()
                return
            body = json.dumps({"id": job, "call": "peer.testing.samples:echo", "kwargs": {"i": i}})
            sent = now_ms()
            try:
                connection.request("POST", "/submit", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read())
                if response.status != 200:
                    raise ClientError(f"/submit: HTTP {response.status}: {answer.get('error')}")
                run_id = answer["run"]
            except (ClientError, OSError, http.client.HTTPException, ValueError) as error:
                errors.append(str(error))
                connection.close()
                connection = http.client.HTTPConnection(*target.api, timeout=30)
                continue
            answered = now_ms()
            with lock:
                submitted.append((i, run_id, sent, answered))
            if i % every == 0:
                watched = _watch(agents, run_id, sent, answered, samples)
                with lock:
                    watchers.extend(watched)

    threads = [threading.Thread(target=submitter, daemon=True) for _ in range(args.threads)]
    cpu_before = cluster_cpu(agents)
    first_ms = now_ms()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    last_ms = now_ms()

    # Every agent lists all of them succeeded.
    listed: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(listed) < len(agents) and time.monotonic() < deadline:
        for agent in agents:
            if agent.name in listed:
                continue
            try:
                total = agent.call(api_path("runs", query={"job": job, "state": "succeeded", "limit": 1}))["total"]
            except ClientError:
                continue
            if total >= len(submitted):
                listed[agent.name] = now_ms()
        time.sleep(0.2)
    cpu_spent = cluster_cpu(agents) - cpu_before
    for watcher in watchers:
        watcher.join(70)
    records = target.call(api_path("runs", query={"job": job, "limit": k + 100}))["runs"]
    succeeded = [r for r in records if r["state"] == "succeeded"]
    sent_of = {run_id: sent for _, run_id, sent, _ in submitted}
    start_ms = [r["started"] - sent_of[r["id"]] for r in succeeded if r["id"] in sent_of]
    finish_ms = [r["finished"] - sent_of[r["id"]] for r in succeeded if r["id"] in sent_of]
    all_succeeded = (max(r["finished"] for r in succeeded) - first_ms) / 1000 if len(succeeded) == len(submitted) else None
    request_ms = [answered - sent for _, _, sent, answered in submitted]
    by_owner: dict[str, list[float]] = {}
    for r in succeeded:
        if r["id"] in sent_of:
            by_owner.setdefault(r.get("owner") or "?", []).append(r["started"] - sent_of[r["id"]])
    return {
        "accepted": len(submitted),
        "errors": len(errors),
        "submit_seconds": (last_ms - first_ms) / 1000,
        "submits_per_s": len(submitted) / ((last_ms - first_ms) / 1000),
        "request_ms_median": median(request_ms),
        "request_ms_p95": p95(request_ms),
        "all_succeeded_s": all_succeeded,
        "completions_per_s": None if all_succeeded is None else len(submitted) / all_succeeded,
        "cpu_ms_per_submit": 1000 * cpu_spent / max(1, len(submitted)),
        "everywhere_s": (max(listed.values()) - first_ms) / 1000 if len(listed) == len(agents) else None,
        "not_succeeded": len(records) - len(succeeded),
        "owners": dict(Counter(r.get("owner") for r in succeeded)),
        "start_ms_by_owner": {owner: [median(v), p95(v)] for owner, v in sorted(by_owner.items())},
        "start_ms_median": median(start_ms),
        "start_ms_p95": p95(start_ms),
        "finish_ms_median": median(finish_ms),
        "finish_ms_p95": p95(finish_ms),
        **_sample_figures(samples),
    }


def _sequential(args: argparse.Namespace, agents: list[AgentProcess], job: str) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    for i in range(args.sample):
        sent = now_ms()
        run_id = agents[0].call("/submit", method="POST", body={"id": job, "call": "peer.testing.samples:echo", "kwargs": {"i": i}})["run"]
        for watcher in _watch(agents, run_id, sent, now_ms(), samples):
            watcher.join(70)
        time.sleep(0.1)
    return _sample_figures(samples)


def _sample_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    local = [s["local_ms"] for s in samples]
    every = [s["every_ms"] for s in samples]
    return {
        "sampled": len(samples),
        "sample_unread": sum(1 for s in samples if s["every_ms"] is None),
        "local_ms_median": median(local),
        "local_ms_p95": p95(local),
        "every_ms_median": median(every),
        "every_ms_p95": p95(every),
    }


# -- the simulator ----------------------------------------------------------------------------


def sim(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    runs = [(f"churn seed {seed}", ["--churn", "10", "--loss", "0.05", "--seed", str(seed)]) for seed in args.seeds]
    runs.append(("stable seed 1", ["--seed", "1"]))
    print(f"sim: python -m sim jobs --nodes 50 --duration 90 ...; {load_note()}", flush=True)
    rows = []
    for name, extra in runs:
        command = [sys.executable, "-m", "sim", "jobs", "--nodes", "50", "--duration", "90", *extra, "--json"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if done.returncode not in (0, 1) or not done.stdout.strip():
            print(f"{name}: exit {done.returncode}\n{done.stderr[-2000:]}", flush=True)
            continue
        report = json.loads(done.stdout)
        row = {
            "run": name,
            "command": " ".join(["python", *command[1:]]),
            "ticks_expected": report["ticks_expected"],
            "missed": report["missed"],
            "duplicates": report["duplicates"],
            "duplicates_per_10k": 10_000 * report["duplicates"] / max(1, report["ticks_expected"]),
            "executions": report["executions"],
            "oneoffs": f"{report['oneoffs_done']}/{report['oneoffs_submitted']}",
            "lost_results": report["lost_results"],
            "not_everywhere": report["results_not_everywhere"],
            "speed": report["sim_seconds_per_wall_second"],
            "wall_s": report["wall_seconds"],
        }
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{name}: ticks expected {row['ticks_expected']}, missed {row['missed']}, duplicates {row['duplicates']}"
                f" ({row['duplicates_per_10k']:.1f} per 10k), one-offs {row['oneoffs']}, lost results {row['lost_results']}"
                f" (not yet everywhere {row['not_everywhere']}), {row['speed']}x real time ({row['wall_s']:.0f} s)",
                flush=True,
            )
    print(load_note(), flush=True)
    return {"rows": rows}


# -- CPU per run ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_cpu(agents: Iterable[AgentProcess]) -> float:
    return sum(cpu_seconds(agent.pid) for agent in agents)


def cpu(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    return port_retries(_cpu, args, workdir)


def _cpu(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    print(
        f"cpu: {args.nodes} agents (lan profile, keyed, log level {args.log_level}), {args.jobs} jobs in mode one @every 1s,"
        f" windows of {args.window:g} s; {load_note()}",
        flush=True,
    )
    journal = workdir / "cpu.journal"
    shutil.rmtree(workdir / "cpu", ignore_errors=True)
    journal.unlink(missing_ok=True)
    with LocalCluster(workdir / "cpu", profile="lan", key=generate_key(), extra_args=["--log-level", args.log_level]) as cluster:
        (workdir / "cpu").mkdir(parents=True)
        agents = start_cluster(cluster, args.nodes)
        time.sleep(2.0)  # past the start's catch-up and first syncs
        idle_cpu, idle_wall = _window(agents, args.window)
        jobs = [
            {"id": f"cpu-{i:02d}", "schedule": "@every 1s", "mode": "one", "call": "peer.testing.samples:journal",
             "kwargs": {"path": str(journal)}}
            for i in range(args.jobs)
        ]
        agents[0].call("/jobs", method="POST", body={"jobs": jobs})
        wait_for(lambda: len({line[0].split("@")[0] for line in read_journal(journal)}) == args.jobs
                 and len(read_journal(journal)) >= 3 * args.jobs, TIMEOUT, "every job to run three times", interval=0.2)
        before = len(read_journal(journal))
        busy_cpu, busy_wall = _window(agents, args.window)
        runs = len(read_journal(journal)) - before
        load = load_note()
    idle_rate = idle_cpu / idle_wall
    per_run_ms = 1000 * (busy_cpu - idle_rate * busy_wall) / runs if runs else None
    result = {
        "nodes": args.nodes, "jobs": args.jobs, "window_s": args.window,
        "idle_cpu_s": round(idle_cpu, 3), "idle_cpu_percent_per_agent": round(100 * idle_rate / args.nodes, 2),
        "busy_cpu_s": round(busy_cpu, 3), "busy_wall_s": round(busy_wall, 3), "runs": runs,
        "cpu_ms_per_run": None if per_run_ms is None else round(per_run_ms, 2),
        "load_after": load,
    }
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"idle: {idle_cpu:.2f} s of CPU in {idle_wall:.1f} s over {args.nodes} agents"
              f" ({result['idle_cpu_percent_per_agent']} % of a core per agent)", flush=True)
        print(f"busy: {busy_cpu:.2f} s of CPU in {busy_wall:.1f} s, {runs} runs", flush=True)
        print(f"CPU per run, summed over the cluster, idle subtracted: {fmt(per_run_ms)} ms", flush=True)
        print(load, flush=True)
    return result


def _window(agents: list[AgentProcess], seconds: float) -> tuple[float, float]:
    """CPU seconds the agents spent together over ``seconds`` of wall time."""
    started, cpu_before = time.monotonic(), cluster_cpu(agents)
    time.sleep(seconds)
    return cluster_cpu(agents) - cpu_before, time.monotonic() - started


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("failover", "throughput", "sim", "cpu", "all"))
    parser.add_argument("--reps", type=int, default=5, help="failover: repetitions, each a fresh cluster (default 5)")
    parser.add_argument("--nodes", type=int, default=None, help="agents (default: failover 5, throughput 3)")
    parser.add_argument("--submits", type=int, default=300, help="throughput: one-off runs submitted (default 300)")
    parser.add_argument("--batches", type=int, default=3, help="throughput: batches, one after the other (default 3)")
    parser.add_argument("--threads", type=int, default=8, help="throughput: client threads (default 8)")
    parser.add_argument("--sample", type=int, default=20, help="throughput: runs whose result is waited for on every agent")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3], help="sim: seeds of the churn runs")
    parser.add_argument("--seed", type=int, default=1, help="failover: seed of the kill times")
    parser.add_argument("--jobs", type=int, default=10, help="cpu: cron jobs in mode one, @every 1s (default 10)")
    parser.add_argument("--window", type=float, default=30.0, help="cpu: seconds of each measured window (default 30)")
    parser.add_argument("--log-level", default="info", help="cpu: the agents' log level (default info, as an agent starts)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    parser.add_argument("--keep-logs", action="store_true", help="keep the agents' logs (their directory is printed)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    try:
        if args.what in ("failover", "all"):
            failover(argparse.Namespace(**{**vars(args), "nodes": args.nodes or 5}), workdir)
        if args.what in ("throughput", "all"):
            throughput(argparse.Namespace(**{**vars(args), "nodes": args.nodes or 3}), workdir)
        if args.what in ("sim", "all"):
            sim(args, workdir)
        if args.what in ("cpu", "all"):
            cpu(argparse.Namespace(**{**vars(args), "nodes": args.nodes or 4}), workdir)
    finally:
        if args.keep_logs:
            print(f"logs: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
