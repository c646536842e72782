"""A FastAPI service whose every replica embeds a peer node (asyncio).

Run three replicas on one machine (each its own gossip port and HTTP port; the
first has no seed and starts the cluster, the others join through it; give
every replica the whole list where replicas get restarted):

    peer keygen > cluster.key
    export PEER_KEY_FILE=cluster.key PEER_SEEDS=127.0.0.1:7946,127.0.0.1:7956,127.0.0.1:7966
    PEER_NAME=a PEER_BIND=127.0.0.1:7946 APP_JOURNAL=a.jsonl uvicorn app:app --port 8001 &
    PEER_NAME=b PEER_BIND=127.0.0.1:7956 APP_JOURNAL=b.jsonl uvicorn app:app --port 8002 &
    PEER_NAME=c PEER_BIND=127.0.0.1:7966 APP_JOURNAL=c.jsonl uvicorn app:app --port 8003 &

then submit through one replica and read the result through another:

    RUN=$(curl -s -XPOST localhost:8001/jobs/summarize -H 'content-type: application/json' \
          -d '{"numbers": [1, 2, 3.5]}' | jq -r .run)
    curl -s "localhost:8003/results/$(jq -rn --arg r "$RUN" '$r|@uri')?wait=10"

and watch the cron job run once a second across the three: `tail -f *.jsonl`.

What it shows:

- The node lives in the app's lifespan: `async with node:` under uvicorn's
  asyncio loop (peer runs trio as a guest on that loop), so it joins when the
  app starts and leaves gracefully when uvicorn shuts down (SIGTERM, Ctrl-C):
  running jobs get `PEER_DRAIN_TIMEOUT` seconds to finish and are then handed
  to another replica.
- `@node.cron(...)` declares a job next to its code. Every replica declares
  it; it is one job in the cluster, and each tick runs on one replica.
- `@node.job(...)` declares a one-off with typed keyword arguments; an
  endpoint submits it (`await summarize.submit(...)`: the run id) and it runs
  on whichever replica owns the run, as an asyncio task of that replica's
  loop (it may use the app's connection pools).
- `GET /results/{run}` answers from the replicated runs map, which every
  replica holds: 200 with the result, 202 while it runs, 404 for a run this
  replica has not heard of, 500 for a run that failed.

Settings come from the environment, with the names `peer agent` reads (the
embedded node itself reads none: the program passes what it wants):

    PEER_NAME           this replica's node name, unique in the cluster (default: the host name)
    PEER_BIND           gossip address, UDP and TCP (default 0.0.0.0:7946)
    PEER_ADVERTISE      address the others reach this replica at (in a container)
    PEER_SEEDS          comma-separated HOST:PORT or dns:NAME[:PORT] of other replicas
    PEER_KEY_FILE       the cluster key file (`peer keygen`); without one gossip is unauthenticated
    PEER_PROFILE        membership timings: lan (default), wan, local
    PEER_DRAIN_TIMEOUT  seconds a leaving replica lets its running jobs finish (default 30)
    PEER_API            serve peer's control API here too (e.g. 127.0.0.1:7947), for the `peer` CLI
    APP_JOURNAL         a file where each run of the cron job appends one JSON line (default: none)
    APP_VERSION         the release this replica runs (default 1); the cron job's definition
                        carries it, so a new version changes the job, as a release does

Rolling out a new version (stop each replica with SIGTERM, start it again with
APP_VERSION=2, one after another) changes the cron job's definition once, when
the first replica of version 2 has settled; from then on every tick runs with
version 2's definition, on the old replicas too (their journal lines say
``"version": "2", "code": "1"``), and an old replica restarting in the middle
of it does not bring version 1's back (README, "Jobs declared in code").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import peer


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _seconds(name: str) -> float | None:
    value = _env(name)
    return None if value is None else float(value)


NAME = _env("PEER_NAME") or socket.gethostname()
JOURNAL = _env("APP_JOURNAL")
VERSION = _env("APP_VERSION") or "1"  # the code's release: what a deploy changes

node = peer.Node(
    name=NAME,
    bind=_env("PEER_BIND"),
    advertise=_env("PEER_ADVERTISE"),
    seeds=_env("PEER_SEEDS"),
    key_file=_env("PEER_KEY_FILE"),
    profile=_env("PEER_PROFILE"),
    drain_timeout=_seconds("PEER_DRAIN_TIMEOUT"),
    api=_env("PEER_API"),
)


# -- jobs, declared next to the code that runs them -----------------------------------------


# Every replica declares this schedule; the cluster holds one job "heartbeat" and each
# tick runs on one replica (mode "one"). Its definition must be the same on every replica
# of a version (a replica declaring another would redefine it for all): so the journal's
# path, which differs per replica, is read here from the environment, not passed as
# kwargs. The release is passed: a new version's definition differs, and replaces the old
# one once, during its rollout, for every replica (old ones included).
@node.cron("@every 1s", id="heartbeat", mode="one", kwargs={"version": VERSION})
async def heartbeat(run: peer.RunContext, version: str) -> dict[str, Any]:
    """Append one JSON line to this replica's journal: which tick ran, where, which attempt,
    with which definition (``version``) on which code (``code``: this replica's release)."""
    # A tick's run id is "<job>@<its scheduled time, ISO 8601>".
    tick = datetime.fromisoformat(run.run_id.split("@")[1])
    line = {
        "job": "heartbeat",
        "run": run.run_id,
        "attempt": run.attempt,
        "tick": tick.isoformat(),
        "tick_ms": round(tick.timestamp() * 1000),
        "node": NAME,
        "version": version,
        "code": VERSION,
        "start_ms": int(time.time() * 1000),
    }
    if JOURNAL is not None:
        # One write to a file opened for appending: lines of concurrent runs never interleave.
        fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
    return line


@node.job(timeout="60s", retries=1)
async def summarize(numbers: list[float], delay: float = 0.5) -> dict[str, Any]:
    """A stand-in for real work (I/O on the app's loop): wait, then sum up. No numbers: it fails."""
    await asyncio.sleep(delay)
    if not numbers:
        raise ValueError("nothing to summarize: numbers is empty")
    return {"count": len(numbers), "total": sum(numbers), "mean": sum(numbers) / len(numbers), "node": NAME}


# -- the app ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Entering binds the gossip port (peer.BindError at once if it is taken) and joins in
    # the background; leaving (uvicorn's shutdown) leaves the cluster gracefully.
    async with node:
        yield


app = FastAPI(title="peer example: FastAPI replicas", lifespan=lifespan)


class SummarizeRequest(BaseModel):
    numbers: list[float] = Field(max_length=10_000)
    delay: float = Field(0.5, ge=0, le=30)


@app.post("/jobs/summarize")
async def submit_summarize(request: SummarizeRequest) -> JSONResponse:
    """Submit a one-off run; it runs on some replica. 202 with its run id at once; 429 when
    the cluster's backlog of pending runs is full (nothing submitted: try again later)."""
    try:
        run_id = await summarize.submit(numbers=request.numbers, delay=request.delay)
    except peer.BacklogFull as full:
        return JSONResponse({"error": str(full)}, status_code=429, headers={"Retry-After": "1"})
    return JSONResponse({"run": run_id, "via": NAME}, status_code=202)


@app.get("/results/{run_id}")
async def result(run_id: str, wait: float = Query(0.0, ge=0, le=60)) -> JSONResponse:
    """A run's outcome, from this replica's copy of the runs map (every replica holds all).

    200 succeeded (``result``); 202 not finished yet (``state``: pending or running);
    404 unknown here (never submitted, expired, or submitted elsewhere a moment ago and
    not arrived yet); 500 finished without a result (``state``: failed, cancelled, lost,
    ...; ``error``). ``?wait=S`` waits up to S seconds for it to finish (or to arrive)."""
    record = node.run(run_id)
    if wait > 0 and (record is None or not record.state.finished):
        try:
            record = await node.wait(run_id, timeout=wait)
        except TimeoutError:
            record = node.run(run_id)
        except peer.UnknownRun:
            record = None
    if record is None:
        return JSONResponse({"run": run_id, "error": "unknown run"}, status_code=404)
    body: dict[str, Any] = {"run": record.id, "state": record.state.value, "attempt": record.attempt, "owner": record.owner}
    if not record.state.finished:
        return JSONResponse({**body, "progress": record.progress}, status_code=202)
    if record.state is peer.RunState.SUCCEEDED:
        return JSONResponse({**body, "result": record.result})
    return JSONResponse({**body, "error": record.error}, status_code=500)


@app.get("/health")
async def health() -> JSONResponse:
    """200 once this replica's node is ready (joined and caught up), else 503: a readiness probe.
    Says which release the replica runs (``version``)."""
    running = node.running  # False while shutting down: the node has left
    ready = running and node.ready
    members = {member.name: member.status for member in node.members()} if running else {}
    return JSONResponse({"node": NAME, "version": VERSION, "ready": ready, "members": members}, status_code=200 if ready else 503)
