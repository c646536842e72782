"""The abuse harness (``peer.tools.abuse``): its mutations in process, and two
short attacks on real agents on 127.0.0.1 whose behaviour holds on this build
(every datagram dropped and counted, the cluster unchanged; the API's
answers counted), and the browser attack when a Chromium is installed (nothing
gets through, every refusal counted). Every agent is killed by PID on the way
out (``LocalCluster``), passed or failed."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import attrs
import pytest

from membership.messages import Alive, Ping
from peer.runtime.keys import generate_key, parse_keys
from peer.runtime.wire import Codec, Dropped
from peer.tools import abuse
from peer.tools.abuse import QUICK, RawMessage, frame_messages, mutate_bytes, mutate_messages, random_datagram, run_abuse


@pytest.fixture
def codec() -> Codec:
    return Codec(parse_keys([generate_key()], "test"), wall_clock=time.time, random_bytes=os.urandom)


def valid_frames(codec: Codec) -> list[bytes]:
    return [
        codec.encode([Ping(7, "node-0", ("127.0.0.1", 7946))]),
        codec.encode([Alive(f"node-{i}", i, ("127.0.0.1", 7946 + i), b"ready") for i in range(5)]),
    ]


def test_every_mutated_or_random_datagram_is_dropped_by_the_codec(codec: Codec) -> None:
    rng = random.Random(1)
    frames = valid_frames(codec)
    for _ in range(3000):
        original = rng.choice(frames)
        mutated = mutate_bytes(original, rng)
        assert mutated != original
        assert isinstance(codec.decode(mutated), Dropped)
        assert isinstance(codec.decode(random_datagram(rng)), Dropped)


def test_mutated_messages_are_signed_and_the_codec_never_raises_on_them(codec: Codec) -> None:
    rng = random.Random(2)
    pool = [frame_messages(frame) for frame in valid_frames(codec)]
    assert all(pool)
    decoded = dropped = 0
    for _ in range(2000):
        messages = mutate_messages([list(m) if isinstance(m, list) else m for m in rng.choice(pool) or []], rng)
        try:
            frame = codec.encode([RawMessage(message) for message in messages])
        except (ValueError, TypeError, OverflowError):
            continue
        result = codec.decode(frame)  # total: a tuple of messages or a Dropped, never an exception
        if isinstance(result, Dropped):
            dropped += 1
        else:
            decoded += 1
    assert dropped > 0 and decoded > 0  # mutations that break the messages, and some that stay valid


def test_metrics_and_socket_figures() -> None:
    text = '# HELP x\npeer_frames_dropped_total{reason="bad_mac"} 3.0\npeer_transport_streams_refused_total 2.0\npeer_ready 1.0\n'
    before = abuse.parse_metrics(text)
    after = dict(before, **{'peer_frames_dropped_total{reason="bad_mac"}': 10.0})
    deltas = abuse.metric_deltas(before, after, lambda name: True)
    assert deltas == {'peer_frames_dropped_total{reason="bad_mac"}': 7.0}
    assert abuse.frame_drops(deltas) == 7 and abuse.is_refusal("peer_transport_streams_refused_total")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert abuse.udp_socket_state(sock.getsockname()[1]) == (0, 0)
    assert abuse.percentile([5.0, 1.0, 3.0], 0.99) == 5.0


def test_datagrams_and_api_attacks_on_live_agents(tmp_path: Path) -> None:
    scale = attrs.evolve(QUICK, datagrams=4000, api_repeats=2, limit=30.0, settle=1.0)
    datagrams, api = run_abuse(tmp_path, ["datagrams", "api"], scale=scale, seed=5)
    assert datagrams.error is None and api.error is None, (datagrams.error, api.error)

    assert datagrams.sent == 4000
    assert datagrams.target_alive and datagrams.tracebacks == 0 and datagrams.tracebacks_elsewhere == 0
    assert datagrams.uncounted == 0  # every datagram dropped and counted (or dropped by the kernel, reported apart)
    assert datagrams.frames_dropped + (datagrams.kernel_drops or 0) == datagrams.sent
    assert datagrams.cluster["member_changes"] == 0 and not datagrams.cluster["owners_unknown"]
    assert not datagrams.cluster["jobs_lost"] and not datagrams.cluster["oneoffs_not_succeeded"]
    assert datagrams.health["samples"] > 0 and datagrams.rss_kib["before"] is not None

    statuses = api.findings["statuses"]
    assert sum(statuses["unauthenticated"].values()) == 2 * 6
    assert statuses["big_body"] == {"413": 2}  # a 10 MB body is refused
    assert api.target_alive
    if api.findings["token_configured"]:
        assert statuses["unauthenticated"] == {"401": 12}
    else:
        assert any("no API token" in effect for effect in api.effects)


def test_a_headless_browser_on_another_origin_gets_nothing_through(tmp_path: Path) -> None:
    if abuse.find_chromium() is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH")
    (browser,) = run_abuse(tmp_path, ["browser"], scale=attrs.evolve(QUICK, settle=1.0), seed=6)
    assert browser.error is None, browser.error
    assert "skipped" not in browser.findings
    assert browser.effects == []  # no job defined, the target still in, no answer readable, every request counted
    cases = browser.findings["cases"]
    assert cases["cross_site"]["refused"].get("forbidden_origin", 0) >= 4  # the preflight, the no-cors POST, the form, the GET
    assert "error" in cases["cross_site"]["browser_saw"]["get_status"]  # the page could not read /status
    rebinding = cases["dns_rebinding"]
    assert rebinding["refused"].get("forbidden_host", 0) >= 4
    assert all(seen.get("status") == 403 for key, seen in rebinding["browser_saw"].items() if key != "load_status_by_name")
    if browser.findings["token_configured"]:
        assert cases["no_token"]["refused"].get("unauthenticated", 0) >= 2
    assert browser.target_alive and browser.cluster["member_changes"] == 0


def test_the_browser_attack_is_skipped_without_chromium(tmp_path: Path) -> None:
    session = abuse.Session(tmp_path, scale=QUICK, token="t", chromium=str(tmp_path / "no-chromium"))
    outcome = abuse.attack_browser(session, None)  # type: ignore[arg-type] # skipped before anything is looked at
    assert outcome.sent == 0 and outcome.effects == [] and "chromium not found" in outcome.findings["skipped"]
