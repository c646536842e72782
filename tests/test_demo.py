"""``peer demo`` end to end: five real agents with the sample jobs, a kill -9,
a graceful leave and a restart, run through the CLI as the README says.
It runs in this process, so ``LocalCluster`` stops every agent by PID
whatever happens; the demo bounds each of its waits itself (about 40 s in
all when things work)."""

from __future__ import annotations

import re

import pytest

from peer.__main__ import main


def test_peer_demo_shows_jobs_moving_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "\x1b[" not in out, "no terminal escapes when stdout is not a terminal"

    # The live table, with every sample job.
    assert re.search(r"^JOB +OWNER +LAST RUN +STATE +RAN ON", out, re.MULTILINE), out
    for job in ("report", "counter", "digest", "cleanup", "flaky", "heartbeat"):
        assert re.search(rf"^{job} +(node-\d|all) ", out, re.MULTILINE), f"{job} missing from the table:\n{out}"

    # Submitted runs, an update sent through another node, results read through a third.
    results = out.split("results, read through", 1)[1].split("kill -9", 1)[0]
    assert results.count(" succeeded on node-") == 4, out
    assert '"update":{"approved":true,"via":"node-2"}' in results, out

    # kill -9 of the busiest node: detected, and each of its jobs taken over.
    victim = re.search(r"kill -9 (node-\d) \(pid \d+\), the node owning the most jobs.*: (.+)$", out, re.MULTILINE)
    assert victim, out
    jobs = victim.group(2).split(", ")
    assert re.search(r"detected: declared dead [\d.]+s( to [\d.]+s)? after the kill by all 4 others", out), out
    takeover = out.split("takeover: the first run of each of its jobs on another node:", 1)[1]
    for job in jobs:
        moved = re.search(rf"^ +{job} +on (node-\d), [\d.]+s after the kill", takeover, re.MULTILINE)
        assert moved and moved.group(1) != victim.group(1), out
    assert "every tick of those jobs due from the kill" in out

    # The graceful leave, the restart, the summary.
    assert re.search(r"it exited with status 0 .* \(left, not failed\)", out), out
    assert re.search(rf"restart {victim.group(1)} under the same name", out), out
    assert re.search(r"every agent sees it alive, with a new incarnation", out), out
    assert re.search(r"its first run: \S+, [\d.]+s after the restart", out), out
    assert "summary" in out and "WRONG" not in out and "NO RECORD" not in out
    assert re.search(r"all exited after [\d.]+s \(status node-0 0, node-1 0, node-2 0, node-3 0, node-4 0\)", out), out
    assert re.search(r"^done in \d+s\.$", out, re.MULTILINE), out
