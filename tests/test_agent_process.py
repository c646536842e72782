"""Real ``peer agent`` processes on 127.0.0.1: join, crash, leave, restart,
keys, DNS seeds, the CLI. Every process is started through ``LocalCluster``
or a ``Processes``, which kill what still runs by PID when the test ends,
passed or failed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from membership.messages import Ack, Ping
from peer.runtime.keys import generate_key, parse_keys
from peer.runtime.wire import ENCRYPTED, Codec, Encryption
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for
from peer.testing.processes import Processes, free_port

TIMEOUT = 30.0  # generous: the machines running CI are shared and slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, profile="local", key=generate_key()) as local:
        yield local


def events(agent: AgentProcess) -> list[dict[str, object]]:
    """The membership events in an agent's JSON log."""
    records = []
    for line in agent.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "event" in record:
                records.append(record)
    return records


def incarnation(agent: AgentProcess, name: str) -> int:
    return next(m["incarnation"] for m in agent.call("/members")["members"] if m["name"] == name)


def peer_cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_five_agents_join_detect_a_crash_see_a_leave_and_a_rejoin(cluster: LocalCluster) -> None:
    agents = [cluster.add() for _ in range(5)]  # all join through node-0
    cluster.wait_api(agents, TIMEOUT)
    wait_for(lambda: cluster.converged({a.name: "alive" for a in agents}), TIMEOUT, "5 agents to converge")
    victim, leaver, survivors = agents[3], agents[4], agents[:3]
    old_incarnation = incarnation(agents[0], victim.name)

    victim.kill()
    wait_for(lambda: cluster.converged({victim.name: "dead"}), TIMEOUT, "everyone to see the kill")

    leaver.signal(signal.SIGTERM)
    assert leaver.wait(TIMEOUT) == 0, leaver.log_text()
    wait_for(lambda: cluster.converged({leaver.name: "left"}, survivors), TIMEOUT, "everyone to see the leave")

    victim.start()
    # A newcomer learns of the live members only: nobody tells it of node-4.
    rejoined = {a.name: "alive" for a in survivors + [victim]}
    wait_for(lambda: cluster.converged(rejoined, survivors + [victim]), TIMEOUT, "the restarted node to rejoin")
    assert all(agent.view()[leaver.name] == "left" for agent in survivors)
    assert incarnation(agents[0], victim.name) > old_incarnation
    for agent in survivors:
        seen = [(e["event"], e["member"]) for e in events(agent)]
        assert ("failed", victim.name) in seen
        assert ("left", leaver.name) in seen and ("failed", leaver.name) not in seen
        assert agent.call("/status")["drops"] == {
            "oversized": 0, "unknown_version": 0, "bad_mac": 0, "plaintext": 0, "stale": 0, "replayed": 0, "malformed": 0,
            "handler_error": 0,
        }


def test_a_node_with_the_wrong_key_cannot_join_and_is_counted(cluster: LocalCluster) -> None:
    good = [cluster.add() for _ in range(2)]
    cluster.wait_api(good, TIMEOUT)
    wait_for(lambda: cluster.converged({a.name: "alive" for a in good}), TIMEOUT, "the keyed pair to converge")
    intruder = cluster.add("intruder", key=generate_key(), extra_args=["--join-timeout", "3"])
    assert intruder.wait(TIMEOUT) == 1
    last_line = intruder.log_text().strip().splitlines()[-1]
    assert last_line.startswith("peer: error: no seed answered within 3s") and "cluster's key" in last_line
    for agent in good:
        assert "intruder" not in agent.view()
    assert good[0].call("/status")["drops"]["bad_mac"] > 0
    assert any("bad_mac" in line and "WARNING" in line for line in good[0].log_text().splitlines())
    assert 'peer_frames_dropped_total{reason="bad_mac"}' in good[0].call_text("/metrics")


def test_dns_seeds_find_each_other_when_the_name_starts_to_resolve(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# nothing resolves yet: every node starts alone, as the first pod would\n")
    port = free_port("127.0.0.2")
    ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    for ip in ips:  # the same port on three loopback addresses, like pods behind a headless service
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((ip, port))
    seeds = [f"dns:peers.test:{port}"]
    extra = ["--hosts-file", str(hosts), "--dns-interval", "0.3"]
    with LocalCluster(tmp_path, profile="local") as cluster:
        agents = [cluster.add(f"pod-{i}", host=ip, port=port, seeds=seeds, extra_args=extra) for i, ip in enumerate(ips)]
        cluster.wait_api(agents, TIMEOUT)
        for agent in agents:
            # Alone, each is the first node: ready once settled (2 s).
            wait_for(lambda agent=agent: agent.call("/health")["ready"], TIMEOUT, f"{agent.name} to be ready alone")
            assert agent.view() == {agent.name: "alive"}
        hosts.write_text("".join(f"{ip} peers.test\n" for ip in ips))
        wait_for(lambda: cluster.converged({a.name: "alive" for a in agents}), TIMEOUT, "DNS seeds to join")
        assert agents[0].call("/status")["addr"] == f"127.0.0.2:{port}"


def test_cli_json_documents_and_leave(cluster: LocalCluster) -> None:
    agents = [cluster.add() for _ in range(2)]
    cluster.wait_api(agents, TIMEOUT)
    wait_for(lambda: cluster.converged({a.name: "alive" for a in agents}), TIMEOUT, "two agents to converge")
    api = "{}:{}".format(*agents[0].api)

    result = peer_cli("members", "--json", "--api", api)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["node"] == "node-0"
    assert [m["name"] for m in document["members"]] == ["node-0", "node-1"]
    for member, agent in zip(document["members"], agents):
        assert member == {
            "name": agent.name,
            "addr": agent.addr,
            "status": "alive",
            "incarnation": member["incarnation"],
            "meta": member["meta"],
        }
        assert member["meta"] in ("starting", "ready")  # the scheduler's role
        assert isinstance(member["incarnation"], int) and member["incarnation"] > 0

    wait_for(lambda: agents[0].call("/health")["ready"], TIMEOUT, "node-0 to be ready")
    status = json.loads(peer_cli("status", "--json", "--api", api).stdout)
    assert status["name"] == "node-0" and status["addr"] == agents[0].addr and status["state"] == "alive"
    assert status["ready"] is True and status["cluster_key"] is True and status["profile"] == "local"
    assert status["members"] == {"alive": 2, "suspect": 0, "dead": 0, "left": 0}
    assert status["seeds"] == [] and status["transport"]["datagrams_in"] > 0
    assert status["membership"]["probes"] >= 0 and set(status["events"]) >= {"joined", "failed", "left"}

    table = peer_cli("members", "--api", api).stdout.splitlines()
    assert table[0].split() == ["NAME", "ADDRESS", "STATUS", "INCARNATION"] and len(table) == 3

    metrics = agents[0].call_text("/metrics")
    assert 'peer_members{status="alive"} 2.0' in metrics and "peer_transport_datagrams_in_total" in metrics

    left = peer_cli("leave", "--api", "{}:{}".format(*agents[1].api))
    assert left.returncode == 0 and left.stdout.strip() == "node-1 left the cluster", left.stderr
    assert agents[1].wait(TIMEOUT) == 0
    assert agents[0].view()["node-1"] == "left"


def test_errors_a_person_can_act_on(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("this is not a key\n")
    config = tmp_path / "peer.toml"
    config.write_text('profile = "fast"\n')
    api = f"127.0.0.1:{free_port()}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken, Processes() as processes:
        taken.bind(("127.0.0.1", 0))
        cases = {
            "port in use": (["--bind", f"127.0.0.1:{taken.getsockname()[1]}"], "the port is in use"),
            "bad key file": (["--key-file", str(bad_key)], f"key file {bad_key} line 1: not base64"),
            "bad config": (["--config", str(config)], f"{config}: profile: 'fast' is not one of lan, wan, local"),
            "unreachable seed": (
                ["--bind", "127.0.0.1:0", "--seeds", f"127.0.0.1:{free_port()}", "--join-timeout", "1"],
                "no seed answered within 1s",
            ),
            "no agent": (None, "no agent answers at"),
        }
        running: dict[str, subprocess.Popen[str]] = {}
        for case, (args, _) in cases.items():
            command = ["members", "--api", api] if args is None else ["agent", "--name", "x", "--api", "127.0.0.1:0", *args]
            running[case] = processes.spawn(
                [sys.executable, "-m", "peer", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        for case, (_, expected) in cases.items():
            _, stderr = running[case].communicate(timeout=TIMEOUT)
            errors = [line for line in stderr.splitlines() if line.startswith("peer: error:")]
            assert running[case].returncode == 1, (case, stderr)
            assert len(errors) == 1 and expected in errors[0], (case, stderr)


def test_an_encrypted_cluster_runs_a_job_and_counts_a_replayed_datagram(tmp_path: Path) -> None:
    key = generate_key()
    with LocalCluster(tmp_path, profile="local", key=key, extra_args=["--encrypt"]) as cluster:
        agents = [cluster.add() for _ in range(3)]
        cluster.wait_api(agents, TIMEOUT)
        wait_for(lambda: cluster.converged({a.name: "alive" for a in agents}), TIMEOUT, "3 encrypted agents to converge")
        wait_for(lambda: all(a.answers_ready() for a in agents), TIMEOUT, "the agents to be ready")
        body = {"id": "sealed", "call": "peer.testing.samples:echo", "kwargs": {"word": "sealed"}}
        run_id = str(agents[0].call("/submit", method="POST", body=body)["run"])

        def finished() -> dict[str, Any] | None:
            runs = {run["id"]: run for run in agents[2].call("/runs?limit=100")["runs"]}
            run = runs.get(run_id)
            return run if run is not None and run["state"] not in ("pending", "running") else None

        run = wait_for(finished, TIMEOUT, "the run to finish, read through another node")
        assert run["state"] == "succeeded" and run["result"] == {"word": "sealed"}, run

        # A key holder's datagram, captured and sent again: the first copy is answered, the second refused.
        target = agents[1]
        target_addr = (target.bind[0], target.bind[1])
        codec = Codec(parse_keys([key], "key"), encryption=Encryption.ON, wall_clock=time.time, random_bytes=os.urandom)
        replayed_before = target.call("/status")["drops"]["replayed"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            udp.settimeout(TIMEOUT)
            frame = codec.encode([Ping(4242, target.name, ("127.0.0.1", udp.getsockname()[1]))])
            udp.sendto(frame, target_addr)
            answer, _ = udp.recvfrom(65_535)
            assert answer[1] == ENCRYPTED and codec.decode(answer) == (Ack(4242),)  # the cluster answers encrypted
            udp.sendto(frame, target_addr)
            signed = Codec(parse_keys([key], "key"), wall_clock=time.time, random_bytes=os.urandom)
            udp.sendto(signed.encode([Ping(4243, target.name, ("127.0.0.1", 1))]), target_addr)
        wait_for(
            lambda: target.call("/status")["drops"]["replayed"] == replayed_before + 1
            and target.call("/status")["drops"]["plaintext"] == 1,
            TIMEOUT,
            "the replay and the plaintext frame to be counted",
        )
        metrics = target.call_text("/metrics")
        assert f'peer_frames_dropped_total{{reason="replayed"}} {replayed_before + 1:.1f}' in metrics
        assert 'peer_frames_dropped_total{reason="plaintext"} 1.0' in metrics
        for agent in agents:
            assert agent.call("/status")["drops"]["bad_mac"] == 0 and agent.call("/status")["drops"]["stale"] == 0
