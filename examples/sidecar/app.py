"""A synchronous Flask app that hands its background work to a `peer agent` beside it.

The app holds no node: it talks to the agent on the same host (or pod) through
``peer.Client``, over the agent's HTTP control API. The agent is started with
this folder on its ``PYTHONPATH``, so it imports ``tasks.py`` (the app's job
functions) itself, and with ``jobs.toml``, the app's cron jobs:

    cd examples/sidecar
    peer keygen > api.token                # the agent's API token (any 16+ printable characters)
    PYTHONPATH=. peer agent --name web-1 --bind 127.0.0.1:7946 --api 127.0.0.1:7947 \\
        --api-token-file api.token --jobs jobs.toml --allowed-calls tasks &
    PEER_API=127.0.0.1:7947 PEER_API_TOKEN_FILE=api.token flask --app app run --port 8000

    RUN=$(curl -s -XPOST localhost:8000/reports -H 'content-type: application/json' \\
          -d '{"region": "eu"}' | jq -r .run)
    curl -s "localhost:8000/reports/$(jq -rn --arg r "$RUN" '$r|@uri')?wait=10"
    curl -s localhost:8000/cleanups

In production, run the app under a WSGI server (``gunicorn -w 4 app:app``): each
worker process gets its own client; the client is thread-safe. Each replica of
the app gets an agent beside it, all agents in one cluster (``--seeds``), so a
report submitted through one replica is readable through any other.

Answers, as the FastAPI example's: 202 submitted (its run id), 200 finished with
a result, 202 not finished yet, 404 unknown run, 500 the run failed.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request

import peer

# PEER_API, PEER_API_TOKEN / PEER_API_TOKEN_FILE and PEER_API_CA from the environment.
client = peer.Client()
app = Flask(__name__)


@app.post("/reports")
def submit_report() -> tuple[Response, int]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("region"), str):
        return jsonify({"error": 'expected a JSON object with a "region"'}), 400
    kwargs: dict[str, Any] = {"region": body["region"]}
    for key in ("rows", "delay"):
        if key in body:
            kwargs[key] = body[key]
    try:
        run_id = client.submit("tasks:build_report", **kwargs)
    except peer.BacklogFull as full:
        return jsonify({"error": str(full)}), 429
    return jsonify({"run": run_id}), 202


@app.get("/reports/<run_id>")
def report(run_id: str) -> tuple[Response, int]:
    """``?wait=S`` waits up to S seconds (at most 60) for the run to finish."""
    wait = min(max(request.args.get("wait", 0.0, type=float) or 0.0, 0.0), 60.0)
    record: peer.RunRecord | None
    try:
        record = client.wait(run_id, timeout=wait) if wait > 0 else client.run(run_id)
    except TimeoutError:
        record = client.run(run_id)
    except peer.UnknownRun:
        record = None
    if record is None:
        return jsonify({"run": run_id, "error": "unknown run"}), 404
    body: dict[str, Any] = {"run": record.id, "state": record.state.value, "attempt": record.attempt, "owner": record.owner}
    if not record.state.finished:
        return jsonify({**body, "progress": record.progress}), 202
    if record.state is peer.RunState.SUCCEEDED:
        return jsonify({**body, "result": record.result}), 200
    return jsonify({**body, "error": record.error}), 500


@app.get("/cleanups")
def cleanups() -> tuple[Response, int]:
    """The cron job's latest runs, as the cluster recorded them."""
    runs = client.runs("cleanup", limit=10)
    return jsonify({"runs": [{"run": r.id, "state": r.state.value, "owner": r.owner} for r in runs]}), 200
