"""``python -m sim``: run a simulator scenario and print what it measured."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from membership.config import PROFILES
from sim.chaos import FAULTS_START, MIXES, Campaign, SeedResult, parse_seeds, run_campaign
from sim.crdt_scenario import CrdtScenario, run_crdt
from sim.faults import (
    Fault,
    ScaleDown,
    ScaleUp,
    parse_partition,
    parse_restart,
    parse_rolling_restart,
    parse_scale,
)
from sim.jobs_scenario import JobsScenario, run_jobs
from sim.membership_scenario import (
    MembershipScenario,
    crash_scenario_faults,
    run_membership,
)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1)")
    return value


def _span(text: str) -> tuple[float, float]:
    """``S`` or ``LOW-HIGH`` seconds."""
    low, _, high = text.partition("-")
    try:
        span = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not S or LOW-HIGH seconds") from None
    if not 0.0 <= span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 <= LOW <= HIGH")
    return span


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim", description="Deterministic simulations of peer's protocols.")
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser("membership", help="SWIM membership: join, failure detection, partitions")
    m.add_argument("--nodes", type=_positive_int, default=20, help="cluster size (default 20)")
    m.add_argument("--seed", type=int, default=1, help="master seed: same seed, same trace (default 1)")
    m.add_argument("--duration", type=float, default=60.0, help="simulated seconds (default 60)")
    m.add_argument("--profile", choices=sorted(PROFILES), default="lan", help="timing profile (default lan)")
    m.add_argument("--seeds", type=_positive_int, default=1, help="how many nodes serve as join seeds (default 1)")
    m.add_argument("--loss", type=_probability, default=0.0, help="datagram loss probability")
    m.add_argument("--dup", type=_probability, default=0.0, help="datagram duplication probability")
    m.add_argument("--crash", type=int, default=0, metavar="K", help="crash K random nodes")
    m.add_argument("--crash-at", type=float, default=None, metavar="T", help="when to crash (default max(20, duration/3))")
    m.add_argument("--restart-after", type=float, default=None, metavar="S", help="restart crashed nodes S seconds later")
    m.add_argument(
        "--partition",
        action="append",
        default=[],
        metavar="SPEC",
        help="A|B@START+DURATION (two-way), A>B@START+DURATION (A to B dropped) or half@START+DURATION; "
        "groups are indices and ranges like 0-4,9; may repeat",
    )
    m.add_argument("--no-auth", action="store_true", help="unsigned frames (default: HMAC-signed)")
    m.add_argument("--json", action="store_true", help="print one JSON object")

    c = commands.add_parser("crdt", help="a replicated map written on every node, under the same faults")
    for action in m._actions:  # the same network, cluster and fault options
        if action.dest not in ("help",):
            c._add_action(action)
    c.add_argument("--keys", type=_positive_int, default=100, help="distinct keys written (default 100)")
    c.add_argument("--writes", type=int, default=1000, help="writes in all, on random nodes (default 1000)")
    c.add_argument("--write-start", type=float, default=5.0, help="when writing starts (default 5)")
    c.add_argument("--write-window", type=float, default=20.0, help="seconds the writes spread over (default 20)")
    c.add_argument("--ttl", type=float, default=None, metavar="S", help="time to live of expiring writes")
    c.add_argument("--ttl-share", type=_probability, default=0.0, help="the share of writes that expire (with --ttl)")
    c.add_argument("--sync-interval", type=float, default=None, help="seconds between digest syncs (default 10)")

    j = commands.add_parser("jobs", help="the scheduler: cron and one-off jobs under churn and loss")
    for action in m._actions:
        if action.dest not in ("help",):
            j._add_action(action)
    j.add_argument("--cron-jobs", type=int, default=10, help="cron jobs in mode one (default 10)")
    j.add_argument("--all-jobs", type=int, default=1, help="cron jobs in mode all (default 1)")
    j.add_argument("--every", type=float, default=2.0, help="their schedule: every this many seconds (default 2)")
    j.add_argument("--oneoffs", type=int, default=50, help="one-off runs submitted through random nodes (default 50)")
    j.add_argument("--fail-share", type=_probability, default=0.1, help="the share of one-offs whose first attempt fails")
    j.add_argument("--churn", type=int, default=0, help="random non-seed nodes that crash or leave, and come back")
    j.add_argument("--heal", type=float, default=20.0, help="fault-free seconds at the end (default 20)")
    j.add_argument("--load-factor", type=float, default=None, help="bounded loads for the job ring (default: none)")
    a = j.add_argument_group(
        "starting like real agents",
        "how processes start, restart and get deployed; a restart is graceful (SIGTERM: drain, leave, exit) "
        "and its new process starts --restart-delay seconds after the old one exited",
    )
    a.add_argument(
        "--jobs-file",
        action="store_true",
        help="every node defines the jobs at every boot once caught up (define_when_ready), as `peer agent --jobs FILE` "
        "does (default: node 0 defines them once with add_job at 5 s)",
    )
    a.add_argument(
        "--boot-delay",
        type=_span,
        default=(0.0, 0.0),
        metavar="LOW-HIGH",
        help="seconds from a process's start to its core joining, drawn at every start (say 0.2-0.6); "
        "its address answers nothing meanwhile (default 0: at once)",
    )
    a.add_argument(
        "--restart",
        action="append",
        default=[],
        metavar="NODES@AT",
        help="restart these nodes (indices and ranges like 0-2,5) gracefully at AT; may repeat",
    )
    a.add_argument(
        "--rolling-restart",
        action="append",
        default=[],
        metavar="AT|I,J,..@AT",
        help="from AT, restart every node running then (by index), or these in this order, one after another: "
        "each once the previous one is back and its scheduler ready, plus --rolling-gap; may repeat",
    )
    a.add_argument(
        "--rolling-gap", type=float, default=2.0, metavar="S", help="seconds between a node ready and the next restart (default 2)"
    )
    a.add_argument(
        "--restart-delay", type=float, default=0.5, metavar="S", help="seconds from a process's exit to its new start (default 0.5)"
    )
    a.add_argument(
        "--scale-up",
        action="append",
        default=[],
        metavar="K@AT",
        help="start K more nodes at AT (spare slots, indices from --nodes on, stopped until then); may repeat",
    )
    a.add_argument(
        "--scale-down",
        action="append",
        default=[],
        metavar="K@AT",
        help="K running nodes leave gracefully at AT for good (highest index first, seeds last); may repeat",
    )
    a.add_argument(
        "--ready-oneoffs", type=int, default=0, metavar="K", help="one-offs submitted through a node each time its scheduler turns ready"
    )
    a.add_argument(
        "--all-ready-oneoffs",
        type=int,
        default=0,
        metavar="K",
        help="one-offs submitted through a random node each time every running node is ready again",
    )
    ch = commands.add_parser("chaos", help="many seeds, each a random fault mix, held to the invariants")
    ch.add_argument("--seeds", default="1..20", help="seeds to run: A..B (both included) or one number (default 1..20)")
    ch.add_argument(
        "--mix",
        choices=MIXES,
        default="wide",
        help="what a seed draws: wide (default: the cluster size 3..25, the tick interval, the jobs, one-offs and "
        "long ones taking updates, agent-like starts, and faults with deploys, scaling, restarts and kill -9 mid-run) "
        "or classic (--nodes nodes, a fixed workload, the faults the first campaigns drew)",
    )
    ch.add_argument("--nodes", type=_positive_int, default=7, help="cluster size of the classic mix (default 7)")
    ch.add_argument("--duration", type=float, default=150.0, help="simulated seconds per seed (default 150)")
    ch.add_argument("--heal", type=float, default=80.0, help="the last seconds, with no fault (default 80)")
    ch.add_argument(
        "--verify-share", type=_probability, default=0.1, help="share of seeds run twice to check the trace repeats (default 0.1)"
    )
    ch.add_argument("--workers", type=_positive_int, default=1, help="processes running seeds side by side (default 1)")
    ch.add_argument("--json", action="store_true", help="print one JSON object (the summary)")
    return parser


def _scenario_fields(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The MembershipScenario fields the shared options set."""
    crash_at = args.crash_at if args.crash_at is not None else max(20.0, args.duration / 3)
    faults: list[Fault] = []
    try:
        faults += [parse_partition(spec, args.nodes) for spec in args.partition]
        faults += crash_scenario_faults(args.nodes, args.crash, crash_at, args.restart_after, args.seed)
    except ValueError as error:
        parser.error(str(error))
    return {
        "nodes": args.nodes,
        "seed": args.seed,
        "duration": args.duration,
        "profile": args.profile,
        "seeds": min(args.seeds, args.nodes),
        "loss": args.loss,
        "duplicate": args.dup,
        "authenticated": not args.no_auth,
        "faults": faults,
    }


def _membership(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    report = run_membership(MembershipScenario(**_scenario_fields(args, parser))).to_json()
    report["replay"] = _replay_line(args)
    return report


def _crdt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if args.ttl_share and args.ttl is None:
        parser.error("--ttl-share needs --ttl")
    scenario = CrdtScenario(
        **_scenario_fields(args, parser),
        keys=args.keys,
        writes=args.writes,
        write_start=args.write_start,
        write_window=args.write_window,
        ttl=args.ttl,
        ttl_share=args.ttl_share,
        replication={} if args.sync_interval is None else {"sync_interval": args.sync_interval},
    )
    report = run_crdt(scenario)
    report["replay"] = _replay_line(args)
    return report


def _life_faults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Fault]:
    """The restarts and scalings the jobs command was given."""
    faults: list[Fault] = []
    try:
        scale_up = [ScaleUp(*parse_scale(spec)) for spec in args.scale_up]
        slots = args.nodes + sum(f.count for f in scale_up)
        faults += scale_up
        faults += [ScaleDown(*parse_scale(spec)) for spec in args.scale_down]
        faults += [parse_restart(spec, slots, args.restart_delay) for spec in args.restart]
        faults += [parse_rolling_restart(spec, slots, args.rolling_gap, args.restart_delay) for spec in args.rolling_restart]
    except ValueError as error:
        parser.error(str(error))
    return faults


def _jobs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    fields = _scenario_fields(args, parser)
    if args.crash:
        parser.error("jobs: use --churn for crashes (nodes come back), not --crash")
    fields["faults"] = [*fields["faults"], *_life_faults(args, parser)]
    scenario = JobsScenario(
        **fields,
        jobs_file=args.jobs_file,
        boot_delay=args.boot_delay,
        ready_oneoffs=args.ready_oneoffs,
        all_ready_oneoffs=args.all_ready_oneoffs,
        cron_jobs=args.cron_jobs,
        all_jobs=args.all_jobs,
        every=args.every,
        oneoffs=args.oneoffs,
        fail_share=args.fail_share,
        churn=args.churn,
        heal=args.heal,
        scheduler={"load_factor": args.load_factor},
    )
    report = run_jobs(scenario)
    report["replay"] = _replay_line(args)
    return report


def _replay_line(args: argparse.Namespace) -> str:
    words = ["python", "-m", "sim", args.command, "--nodes", str(args.nodes), "--seed", str(args.seed)]
    words += ["--duration", repr(args.duration), "--profile", args.profile, "--seeds", str(args.seeds)]
    if args.loss:
        words += ["--loss", repr(args.loss)]
    if args.dup:
        words += ["--dup", repr(args.dup)]
    if args.crash:
        words += ["--crash", str(args.crash)]
        if args.crash_at is not None:
            words += ["--crash-at", repr(args.crash_at)]
        if args.restart_after is not None:
            words += ["--restart-after", repr(args.restart_after)]
    for spec in args.partition:
        words += ["--partition", spec]
    if args.no_auth:
        words.append("--no-auth")
    if args.command == "crdt":
        words += ["--keys", str(args.keys), "--writes", str(args.writes)]
        words += ["--write-start", repr(args.write_start), "--write-window", repr(args.write_window)]
        if args.ttl is not None:
            words += ["--ttl", repr(args.ttl), "--ttl-share", repr(args.ttl_share)]
        if args.sync_interval is not None:
            words += ["--sync-interval", repr(args.sync_interval)]
    if args.command == "jobs":
        words += ["--cron-jobs", str(args.cron_jobs), "--all-jobs", str(args.all_jobs), "--every", repr(args.every)]
        words += ["--oneoffs", str(args.oneoffs), "--fail-share", repr(args.fail_share), "--churn", str(args.churn)]
        words += ["--heal", repr(args.heal)]
        if args.load_factor is not None:
            words += ["--load-factor", repr(args.load_factor)]
        if args.jobs_file:
            words.append("--jobs-file")
        if args.boot_delay != (0.0, 0.0):
            words += ["--boot-delay", f"{args.boot_delay[0]!r}-{args.boot_delay[1]!r}"]
        for flag, specs in (
            ("--restart", args.restart), ("--rolling-restart", args.rolling_restart),
            ("--scale-up", args.scale_up), ("--scale-down", args.scale_down),
        ):
            for spec in specs:
                words += [flag, spec]
        if args.restart or args.rolling_restart:
            words += ["--rolling-gap", repr(args.rolling_gap), "--restart-delay", repr(args.restart_delay)]
        if args.ready_oneoffs:
            words += ["--ready-oneoffs", str(args.ready_oneoffs)]
        if args.all_ready_oneoffs:
            words += ["--all-ready-oneoffs", str(args.all_ready_oneoffs)]
    return shlex.join(words + ["--json"])


def _human(report: dict[str, Any]) -> str:
    lines = [
        f"membership: {report['nodes']} nodes, seed {report['seed']}, profile {report['profile']}, "
        f"{report['sim_seconds']:g} simulated seconds in {report['wall_seconds']:.2f} s "
        f"({report['sim_seconds_per_wall_second']}x real time)",
        f"  converged:        {'yes' if report['converged'] else 'NO'}"
        + (f", {report['convergence_seconds']:.2f} s after the last disturbance" if report["converged"] else ""),
        f"  false positives:  {report['false_positives']} "
        f"({report['failures_declared']} failure declarations in all)",
    ]
    for name, first, last, suspect in zip(
        report["crashed"],
        report["detection_first_seconds"],
        report["detection_all_seconds"],
        report["suspicion_first_seconds"],
    ):
        lines.append(f"  crashed {name}: suspected after {_s(suspect)}, failed at first {_s(first)}, by all {_s(last)}")
    lines += [
        f"  traffic:          {report['messages_per_node_second']} frames and "
        f"{report['bytes_per_node_second']:.0f} bytes per node per second",
        f"  trace hash:       {report['trace_hash']}",
        f"  replay:           {report['replay']}",
    ]
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _chaos(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        parser.error(str(error))
    if not 0 < args.heal < args.duration - FAULTS_START:
        parser.error(f"--heal must be positive and leave a faulty phase after {FAULTS_START:g} s")
    campaign = Campaign(nodes=args.nodes, duration=args.duration, heal=args.heal, mix=args.mix)

    def progress(result: SeedResult) -> None:
        if result.violations:
            lines = [f"seed {result.seed}: VIOLATED " + ", ".join(sorted({v.invariant for v in result.violations}))]
            lines += [f"    {v.invariant}: {v.detail}" for v in result.violations]
            lines += ["  fault mix:"] + [f"    {line}" for line in result.mix.describe()]
            lines += [f"  trace hash: {result.trace_hash}", f"  replay: {campaign.replay(result.seed)}"]
            print("\n".join(lines), file=sys.stderr if args.json else sys.stdout, flush=True)
        elif not args.json:
            print(f"seed {result.seed}: ok ({result.mix.nodes} nodes, {result.wall_seconds:.1f} s, trace {result.trace_hash})", flush=True)

    summary = run_campaign(seeds, campaign, verify_share=args.verify_share, workers=args.workers, on_result=progress)
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(_human_chaos(summary))
    return 1 if summary["violations"] else 0


def _human_chaos(summary: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"chaos: seeds {summary['first_seed']}..{summary['last_seed']} ({summary['seeds']}, {summary['replayed']} run twice), "
            f"{summary['draw']} draw, {summary['nodes']} nodes, {summary['duration']:g} s each of which {summary['heal']:g} s healed; "
            f"{summary['sim_seconds_per_wall_second']}x real time, {summary['wall_seconds_per_seed']} s a seed "
            f"({summary['cpu_seconds_per_seed']} s of CPU)",
            f"  violations:       {len(summary['violations'])} in {len(summary['failing'])} seeds",
            f"  ticks:            {summary['ticks_expected']} expected, {summary['missed']} missed, "
            f"{summary['late_ticks']} late ({summary['late_in_stable']} in stable stretches)",
            f"  duplicates:       {summary['duplicates']} ({summary['duplicates_per_10k_ticks']} per 10k ticks; "
            f"{summary['duplicates_in_stable']} in stable stretches, {summary['duplicates_in_graceful']} around graceful operations only)",
            f"  by fault:         {summary['duplicates_by_fault']}",
            f"  same attempt:     {summary['same_attempt_starts']} started twice ({summary['same_attempt_unexplained']} unexplained)",
            f"  one-offs:         {summary['oneoffs_unfinished']} unfinished; results missing where owed: "
            f"{summary['results_not_everywhere']} of {summary['results_checked_everywhere']}",
            f"  results:          {summary['lost_results']} lost ({summary['lost_with_their_node']} never left their node)",
            f"  false failures:   {summary['false_failures']} (and {summary['false_failures_under_loss']} under loss)",
            "  detection:        "
            + (
                "no crash stayed down long enough to check"
                if summary["detection_max_seconds"] is None
                else f"every crash declared by all within {summary['detection_max_seconds']:.2f} s"
            ),
            f"  convergence:      views right within {_s(summary['convergence_after_heal_max_seconds'])} of the heal",
            "  cost by size:     "
            + "; ".join(
                f"{band} nodes: {v['seeds']} seeds, {v['mean']} s mean ({v['cpu_mean']} s CPU), {v['max']} s max"
                for band, v in summary["wall_seconds_by_size"].items()
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "chaos":
        return _chaos(args, parser)
    run, human = {"membership": (_membership, _human), "crdt": (_crdt, _human_crdt), "jobs": (_jobs, _human_jobs)}[
        args.command
    ]
    report = run(args, parser)
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(human(report))
    return 0


def _human_jobs(report: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"jobs: {report['nodes']} nodes, seed {report['seed']}, {report['cron_jobs']} + {report['all_jobs']} cron jobs "
            f"every {report['every']:g} s, {report['oneoffs_submitted']} one-offs, churn {report['churn']}; "
            f"{report['sim_seconds']:g} simulated seconds in {report['wall_seconds']:.2f} s "
            f"({report['sim_seconds_per_wall_second']}x real time)",
            f"  ticks:            {report['ticks_run']} of {report['ticks_expected']} ran; missed {report['missed']}",
            f"  duplicates:       {report['duplicates']} (of {report['executions']} executions); "
            f"same attempt started twice: {report['same_attempt_starts']}",
            f"  one-offs:         {report['oneoffs_done']} of {report['oneoffs_submitted']} done"
            f" ({report['oneoffs_lost_with_submitter']} lost with the node they were submitted to, before leaving it)",
            f"  lost results:     {report['lost_results']} (not yet everywhere: {report['results_not_everywhere']})",
            f"  membership:       {'converged' if report['converged'] else 'NOT converged'}, "
            f"{report['false_positives']} false positives",
            f"  trace hash:       {report['trace_hash']}",
            f"  replay:           {report['replay']}",
        ]
    )


def _human_crdt(report: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"crdt: {report['nodes']} nodes, seed {report['seed']}, {report['writes']} writes on {report['keys']} keys, "
            f"{report['sim_seconds']:g} simulated seconds in {report['wall_seconds']:.2f} s "
            f"({report['sim_seconds_per_wall_second']}x real time)",
            f"  converged:        {'yes' if report['converged'] else 'NO'}"
            + (f", {report['convergence_seconds']:.2f} s after the last write or fault" if report["converged"] else ""),
            f"  lost writes:      {report['lost_writes']} (keys missing their newest write)",
            f"  expired entries still read: {report['expired_entries_seen']}",
            f"  traffic:          {report['bytes_per_node_second']:.0f} bytes per node per second (membership included)",
            f"  largest replica:  {report['max_state_bytes']} bytes; {report['live_keys']} live keys",
            f"  trace hash:       {report['trace_hash']}",
            f"  replay:           {report['replay']}",
        ]
    )
