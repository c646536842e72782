"""The examples run: real processes on 127.0.0.1, as a user would start them.

- ``examples/fastapi``: three uvicorn replicas of the app, each embedding a node.
  A one-off submitted through any replica is readable through every other, with
  the answers the app documents (200, 202, 404, 500); the cron job in mode one
  runs each tick on exactly one replica while membership is stable (read from the
  journals the replicas write, never from the nodes); after a ``kill -9`` of the
  replica running the cron job and its restart, every tick ran at least once and
  any second execution is one the README allows after a crash (a re-run of what
  the killed replica was running or had finished unseen:
  ``peer.tools.chaos.duplicates``), and every result from before the kill is
  still readable through every replica, the restarted one included. A rolling
  deploy of a new version (``APP_VERSION``, which the cron job's definition
  carries), with an old replica restarting in its middle: every tick once, the
  definition switched once to the new version's and never back, every SIGTERM
  answered by a complete shutdown in which the node left the cluster.
- ``examples/sidecar``: a ``peer agent`` importing the app's ``tasks.py``, and the
  Flask app beside it talking to it through ``peer.Client``.

No time limit is asserted; every process is stopped by PID when the test ends,
whatever happened (``peer.testing.processes``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from peer.runtime.keys import generate_key
from peer.testing.cluster import LocalCluster, wait_for
from peer.testing.processes import Processes, free_port
from peer.testing.services import EXAMPLES, FastApiReplica, FastApiReplicas, quote_run
from peer.tools.chaos import JournalLine, duplicates, ticks_between

TIMEOUT = 60.0  # generous: the machines running CI are shared and slow
EVERY_MS = 1000  # the example's cron job: @every 1s
# Ticks this close to a phase's start are not owed yet (the first lease holder may still
# be taking over); ticks this close to the end may not be journalled yet.
MARGIN_MS = 3000


def journal_lines(lines: list[dict[str, Any]]) -> list[JournalLine]:
    """The app's journal lines as the chaos harness's, to count duplicates its way."""
    return [JournalLine(line["run"], line["attempt"], line["node"], line["start_ms"]) for line in lines]


def runs_per_tick(lines: list[dict[str, Any]], ticks: list[int]) -> dict[int, int]:
    counts = Counter(line["tick_ms"] for line in lines)
    return {tick: counts[tick] for tick in ticks}


def now_ms() -> int:
    return int(time.time() * 1000)


def heartbeat_runner(replicas: FastApiReplicas) -> FastApiReplica:
    """The replica that ran the latest tick (it holds the cron job's lease)."""
    latest = max(replicas.journal(), key=lambda line: line["tick_ms"])
    return next(replica for replica in replicas.replicas if replica.name == latest["node"])


def test_fastapi_replicas_share_jobs_results_and_survive_a_kill(tmp_path: Path) -> None:
    with FastApiReplicas(tmp_path, 3, key=generate_key()) as replicas:
        replicas.start()
        replicas.wait_ready(TIMEOUT)
        ready_at = now_ms()
        a, b, c = replicas.replicas

        # A one-off through each replica, its result read through every replica.
        submitted = {replica.submit([1, 2, index + 0.5], delay=0.2): 3 + index + 0.5 for index, replica in enumerate(replicas)}
        slow = b.submit([10, 20], delay=3.0)
        early = c.result(slow)  # not finished yet (or not arrived: a hop away)
        assert early.status_code in (202, 404), early.text
        if early.status_code == 202:
            assert early.json()["state"] in ("pending", "running")
        submitted[slow] = 30
        for run_id, total in submitted.items():
            for replica in replicas:
                response = replica.result(run_id, wait=30)
                assert response.status_code == 200, (replica.name, run_id, response.text)
                assert response.json()["state"] == "succeeded"
                assert response.json()["result"]["total"] == total
        failing = a.submit([], delay=0.0)
        failed = c.result(failing, wait=30)
        assert failed.status_code == 500, failed.text
        assert failed.json()["state"] == "failed" and "nothing to summarize" in failed.json()["error"]
        assert b.result("summarize@nothing-like-it").status_code == 404
        assert a.post("/jobs/summarize", {"numbers": "three"}).status_code == 422

        # Stable membership: each tick on one replica, once.
        wait_for(lambda: now_ms() > ready_at + MARGIN_MS + 4000, TIMEOUT, "a few ticks", interval=0.2)
        victim = heartbeat_runner(replicas)
        killed_at = now_ms()
        victim.kill()
        time.sleep(2.0)
        victim.start()
        replicas.wait_ready(TIMEOUT, [victim])
        time.sleep(4.0)  # the restarted replica back in the ring; ticks go on
        ended = now_ms()

        # Results from before the kill, through every replica (the restarted one caught up).
        for run_id, total in submitted.items():
            for replica in replicas:
                response = replica.result(run_id, wait=30)
                assert response.status_code == 200, (replica.name, run_id, response.text)
                assert response.json()["result"]["total"] == total
        time.sleep(MARGIN_MS / 1000 + 1)
        lines = replicas.journal()

    stable = ticks_between(ready_at + MARGIN_MS, killed_at - EVERY_MS, EVERY_MS)
    assert len(stable) >= 3
    stable_counts = runs_per_tick(lines, stable)
    assert {tick: n for tick, n in stable_counts.items() if n != 1} == {}, "stable membership: every tick once"
    # The tick that may have been running at the kill, and every one after it: at least
    # once each, and a second execution only as the README allows after a crash.
    crash_window = ticks_between(killed_at - EVERY_MS, ended - MARGIN_MS, EVERY_MS)
    crash_counts = runs_per_tick(lines, crash_window)
    assert [tick for tick, n in crash_counts.items() if n == 0] == [], "after a kill -9: every tick at least once"
    assert duplicates(journal_lines(lines), {victim.name: [killed_at]}) == []
    assert {line["node"] for line in lines if line["tick_ms"] in stable} <= {a.name, b.name, c.name}


def versions_by_tick(lines: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(tick, definition's version) of every execution, in tick order."""
    return sorted((line["tick_ms"], line["version"]) for line in lines)


def test_fastapi_rolling_deploy_changes_the_cron_job_once(tmp_path: Path) -> None:
    with FastApiReplicas(tmp_path, 3, key=generate_key()) as replicas:
        replicas.start()
        replicas.wait_ready(TIMEOUT)
        ready_at = now_ms()
        wait_for(lambda: now_ms() > ready_at + MARGIN_MS + 1000, TIMEOUT, "a tick on version 1", interval=0.2)
        # Each replica in turn: SIGTERM, exit, start on version 2, ready; once the
        # first runs version 2, the last one restarts on version 1 (still old).
        steps = replicas.roll("2", ready_timeout=TIMEOUT, old_restart_after=1)
        time.sleep(3.0)  # ticks go on, all on version 2
        ended = now_ms()
        time.sleep(MARGIN_MS / 1000 + 1)
        lines = replicas.journal()
        logs = {replica.name: replica.log_text()[-2000:] for replica in replicas}

    a, b, c = (replica.name for replica in replicas.replicas)
    assert [(step.name, step.old_version, step.version) for step in steps] == [
        (a, "1", "2"), (c, "1", "1"), (b, "1", "2"), (c, "1", "2"),
    ]  # fmt: skip
    # Each stop was clean: the app's shutdown completed and its node left the cluster
    # (uvicorn then dies of the SIGTERM it caught, on purpose: RollStep.clean).
    assert [step.clean for step in steps] == [True] * 4, (steps, logs)
    window = ticks_between(ready_at + MARGIN_MS, ended - MARGIN_MS, EVERY_MS)
    counts = runs_per_tick(lines, window)
    assert {tick: n for tick, n in counts.items() if n != 1} == {}, "a rolling deploy: every tick once"
    assert duplicates(journal_lines(lines), {}) == []
    # The definition changed once, to version 2's, and never went back: not when the old
    # replica restarted on version 1 after the switch, nor on any old replica running ticks.
    versions = [version for _, version in versions_by_tick(lines)]
    switch = versions.index("2")
    assert switch > 0 and set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}, versions_by_tick(lines)
    switched_at = versions_by_tick(lines)[switch][0]
    assert switched_at < steps[1].stopped_ms, "the old replica restarted after the switch"
    assert all(line["code"] == "2" or line["node"] != a for line in lines if line["tick_ms"] > steps[0].stopped_ms + 1000)


def test_sidecar_flask_app_and_agent(tmp_path: Path) -> None:
    sidecar = EXAMPLES / "sidecar"
    token = tmp_path / "api.token"
    token.write_text(generate_key() + "\n")
    journal = tmp_path / "cleanup.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(sidecar), env.get("PYTHONPATH")]))
    env["SIDECAR_JOURNAL"] = str(journal)
    with LocalCluster(tmp_path, env=env) as cluster, Processes() as processes:
        agent = cluster.add(
            "web-1", seeds=[],
            extra_args=["--jobs", str(sidecar / "jobs.toml"), "--api-token-file", str(token), "--allowed-calls", "tasks"],
        )  # fmt: skip
        cluster.wait_api([agent], TIMEOUT)
        wait_for(agent.answers_ready, TIMEOUT, "the agent to be ready")
        port = free_port()
        app_env = dict(env, PEER_API=agent.api_addr, PEER_API_TOKEN_FILE=str(token))
        with open(tmp_path / "flask.log", "ab") as log:
            flask = processes.spawn(
                [sys.executable, "-m", "flask", "--app", "app", "run", "--host", "127.0.0.1", "--port", str(port)],
                cwd=sidecar, env=app_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        web = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=40.0)

        def answers() -> bool:
            assert flask.poll() is None, (tmp_path / "flask.log").read_text()
            try:
                return web.get("/cleanups").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, TIMEOUT, "the Flask app to answer", interval=0.2)

        submitted = web.post("/reports", json={"region": "eu", "rows": 3, "delay": 1.0})
        assert submitted.status_code == 202, submitted.text
        run_id = submitted.json()["run"]
        early = web.get(f"/reports/{quote_run(run_id)}")
        assert early.status_code == 202 and early.json()["state"] in ("pending", "running"), early.text
        done = web.get(f"/reports/{quote_run(run_id)}", params={"wait": 30})
        assert done.status_code == 200, done.text
        assert done.json()["result"] == {"region": "eu", "lines": ["eu-1", "eu-2", "eu-3"], "node": "web-1"}

        bad = web.post("/reports", json={"region": "mars", "delay": 0})
        failed = web.get(f"/reports/{quote_run(bad.json()['run'])}", params={"wait": 30})
        assert failed.status_code == 500 and "unknown region 'mars'" in failed.json()["error"], failed.text
        assert web.get(f"/reports/{quote_run('build_report@nothing-like-it')}").status_code == 404
        assert web.post("/reports", json={"rows": 2}).status_code == 400

        # The cron job of jobs.toml ran (the agent imported tasks.py), and the app sees it.
        wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 2, TIMEOUT, "two cleanups")
        cleanups = web.get("/cleanups").json()["runs"]
        assert any(run["state"] == "succeeded" and run["owner"] == "web-1" for run in cleanups), cleanups
        web.close()
