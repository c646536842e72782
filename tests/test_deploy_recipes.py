"""The deploy recipes (Dockerfile, docker-compose.yml, examples/kubernetes/)
are valid, agree with each other and with the agent, and work.

No image is built here (no Docker daemon in the test run): the Dockerfile is
read instruction by instruction. The Kubernetes manifests are checked against
the Kubernetes OpenAPI schemas (``kubernetes-validate``, which ships them: it
works offline). Every agent setting a recipe gives, as a variable or a flag, is
parsed by the agent's own parser and settings loader, so a typo fails here, not
in a cluster. Then the recipes' exact settings start real agents on 127.0.0.1
(ports remapped to free ones, ``dns:`` seeds answered by a hosts file, secrets
made up), which must form a cluster and run the jobs file: the compose one with
a scale up and a scale down, every tick checked once by the compose checker's
own command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from peer.control.api import PUBLIC_PATHS
from peer.control.cli import AGENT_OPTIONS, AGENT_SWITCHES, _parser
from peer.jobs.cron import parse_duration
from peer.jobs.definition import load_jobs_file
from peer.jobs.runs import tick_run_id
from peer.jobs.targets import CallTarget
from peer.runtime.addresses import format_address
from peer.runtime.keys import KEY_ENV, generate_key
from peer.runtime.seeds import parse_seed
from peer.runtime.settings import CONVERTERS, ENV_PREFIX, Settings, load
from peer.testing.processes import LOOPBACK, Ports, Processes
from peer.tools.chaos import JournalLine
from peer.tools.ticks import JOURNAL_CALL, judge
from peer.tools.ticks import main as ticks_main

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "examples" / "kubernetes"

# Kubernetes releases the manifests must be valid for: the oldest and the newest
# whose schemas kubernetes-validate ships (policy/v1 PDBs: 1.21 on).
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
# A leaving agent drains (drain_timeout), then leaves (the profile's
# leave_timeout); a container's grace period must outlast both by this much.
GRACE_MARGIN = 5.0
# Agent variables that are not settings keys but are read by the agent.
OTHER_AGENT_VARIABLES = {KEY_ENV, ENV_PREFIX + "CONFIG"}
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|cc|build-essential|make|rustc|cargo)\b")
AGENT_COMMAND = ["peer", "agent"]


# -- reading the recipes ----------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(index for index, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def image_env() -> dict[str, str]:
    """The final stage's ENV, as a container starts with it."""
    env: dict[str, str] = {}
    for word, rest in final_stage(dockerfile_instructions()):
        if word == "ENV":
            for item in shlex.split(rest):
                name, equals, value = item.partition("=")
                assert equals, f"ENV {item!r}: write NAME=VALUE"
                env[name] = value
    return env


def exec_form(rest: str) -> list[str]:
    """An instruction's JSON array (exec form: no shell in between)."""
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), f"not exec form: {rest}"
    return value


def entrypoint() -> list[str]:
    (rest,) = [rest for word, rest in final_stage(dockerfile_instructions()) if word == "ENTRYPOINT"]
    return exec_form(rest)


def healthcheck_command() -> list[str]:
    (rest,) = [rest for word, rest in final_stage(dockerfile_instructions()) if word == "HEALTHCHECK"]
    options, _, command = rest.partition("CMD ")
    assert command, "HEALTHCHECK needs a CMD"
    return exec_form(command)


def image_uid() -> int:
    (rest,) = [rest for word, rest in final_stage(dockerfile_instructions()) if word == "USER"]
    return int(rest.split(":")[0])


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: str(value) for name, value in environment.items()}


def kubernetes_documents() -> dict[str, list[dict[str, Any]]]:
    """file name -> its documents, for every manifest in examples/kubernetes."""
    return {
        path.name: [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
        for path in sorted(KUBERNETES.glob("*.yaml"))
    }


def kubernetes_resources() -> list[dict[str, Any]]:
    documents = kubernetes_documents()
    kustomization = documents["kustomization.yaml"][0]
    return [document for name in kustomization["resources"] for document in documents[name]]


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in kubernetes_resources() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment_container() -> dict[str, Any]:
    (container,) = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    container_spec: dict[str, Any] = container
    return container_spec


_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def deployment_env(pod: Mapping[str, str]) -> dict[str, str]:
    """The container's variables as the kubelet sets them: ``fieldRef``s from
    ``pod`` (field path -> value), ``$(NAME)`` expanded from the variables
    defined before it (Kubernetes' rule), on top of the image's ENV."""
    env = dict(image_env())
    for variable in deployment_container()["env"]:
        if "valueFrom" in variable:
            path = variable["valueFrom"]["fieldRef"]["fieldPath"]
            env[variable["name"]] = pod[path]
        else:
            env[variable["name"]] = _REFERENCE.sub(lambda match, defined=dict(env): defined.get(match[1], match[0]), variable["value"])
    return env


def agent_settings(env: Mapping[str, str], args: list[str] | None = None) -> Settings:
    """What ``peer agent ARGS`` makes of ``env``: the agent's own argument
    parser and settings loader (a bad value raises ``ConfigError``). Every
    ``PEER_*`` variable must be one the agent reads: the loader would ignore
    a misspelt one."""
    known = {ENV_PREFIX + key.upper() for key in CONVERTERS if key != "membership"} | OTHER_AGENT_VARIABLES
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known)
    assert not unknown, f"not agent settings: {unknown}"
    parsed = _parser().parse_args(["agent", *(args or [])])
    flags = {key: getattr(parsed, key) for _, key, _ in (*AGENT_OPTIONS, *AGENT_SWITCHES)}
    return load(flags, environ=env, config_path=parsed.config)


def compose_settings() -> Settings:
    app = compose()["services"]["app"]
    return agent_settings({**image_env(), **compose_env(app)}, app.get("command"))


POD = {"metadata.name": "peer-5d8f7c9b4-x7k2p", "metadata.namespace": "default", "status.podIP": "10.244.1.7"}


def deployment_settings() -> Settings:
    return agent_settings(deployment_env(POD), deployment_container().get("args"))


def grace_needed(settings: Settings) -> float:
    return settings.drain_timeout + settings.membership_config().leave_timeout + GRACE_MARGIN


# -- the Dockerfile ---------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_apart_and_runs_it_slim_and_unprivileged() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: the wheel is built in a stage of its own"
    final = final_stage(instructions)
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim|python:3\.\d+-slim", final[0][1]), final[0][1]
    runs = " ".join(rest for word, rest in final if word == "RUN")
    assert not COMPILERS.search(runs), f"a build tool in the runtime image: {runs}"
    assert "--no-index" in runs and "/wheels" in runs, "the runtime installs the built wheels only"
    assert image_uid() > 0
    assert "useradd" in runs and f"--uid {image_uid()}" in runs
    assert entrypoint()[-2:] == AGENT_COMMAND, "the entry point is peer agent (flags after the image name)"
    assert [rest for word, rest in final if word == "STOPSIGNAL"] == ["SIGTERM"]


def test_dockerfile_copies_every_package_the_wheel_holds() -> None:
    """A package added to pyproject.toml but not copied would be missing
    from the image's wheel; one kept out by .dockerignore too."""
    build = dockerfile_instructions()[: len(dockerfile_instructions()) - len(final_stage(dockerfile_instructions()))]
    copied = set()
    for word, rest in build:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _destination = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                copied.add(source)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore lets in only what is listed (no venv, no secrets)"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed


def test_dockerfile_settings_are_agent_settings_and_match_its_ports() -> None:
    settings = agent_settings(image_env())
    exposed = {item for word, rest in final_stage(dockerfile_instructions()) if word == "EXPOSE" for item in rest.split()}
    gossip, api = settings.bind[1], settings.api[1]
    assert {f"{gossip}/udp", f"{gossip}/tcp", f"{api}/tcp"} <= exposed
    assert settings.bind[0] == settings.api[0] == "0.0.0.0", "reachable from outside the container"
    command = " ".join(healthcheck_command())
    assert "/health/ready" in command and "/health/ready" in PUBLIC_PATHS, "the probe needs no token"
    assert "PEER_API" in command, "the health check asks the port the API is on"


# -- docker-compose.yml -----------------------------------------------------------------


def test_compose_app_scales_finds_itself_and_stops_gracefully() -> None:
    document = compose()
    app = document["services"]["app"]
    assert "ports" not in app and "container_name" not in app, "--scale app=N: N containers cannot share a host port or a name"
    settings = compose_settings()
    (seed,) = [parse_seed(text) for text in settings.seeds]
    assert seed.dns and seed.host == "app" and seed.port == settings.bind[1], "dns: seed of the service's own name"
    assert app.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert parse_duration(app["stop_grace_period"]) >= grace_needed(settings)
    assert settings.key_file and settings.api_token_file and settings.encrypt == "on"
    secrets = {name: PurePosixPath("/run/secrets") / name for name in app["secrets"]}
    assert {PurePosixPath(settings.key_file), PurePosixPath(settings.api_token_file)} <= set(secrets.values())
    assert set(app["secrets"]) <= set(document["secrets"])
    assert all(
        str(ROOT / "examples" / "compose" / "secrets") in str((ROOT / spec["file"]).resolve()) for spec in document["secrets"].values()
    )
    assert "secrets/" in (ROOT / "examples" / "compose" / ".gitignore").read_text(), "generated secrets are never committed"


def mounts(service: Mapping[str, Any]) -> dict[PurePosixPath, str]:
    """Container path -> source, for a service's short-syntax volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_mode = volume.split(":")
        found[PurePosixPath(target)] = source
    return found


def source_of(service: Mapping[str, Any], path: str) -> tuple[str, PurePosixPath]:
    """(volume or host path, path inside it) of a file in a container."""
    for target, source in mounts(service).items():
        if PurePosixPath(path).is_relative_to(target):
            return source, PurePosixPath(path).relative_to(target)
    raise AssertionError(f"{path} is on no volume of the service")


def test_compose_jobs_file_journals_each_tick_where_the_checker_reads() -> None:
    document = compose()
    app, checker = document["services"]["app"], document["services"]["checker"]
    settings = compose_settings()
    assert settings.jobs is not None
    jobs_source, jobs_inside = source_of(app, settings.jobs)
    jobs_path = ROOT / jobs_source / jobs_inside if jobs_inside.parts else ROOT / jobs_source
    specs = load_jobs_file(str(jobs_path))
    journalled = [spec for spec in specs if isinstance(spec.target, CallTarget) and spec.target.function == JOURNAL_CALL]
    assert [(spec.mode, spec.schedule and spec.schedule.text) for spec in journalled] == [("one", "@every 1s")]
    journal = str(journalled[0].target.kwargs["path"])  # type: ignore[union-attr]
    volume, inside = source_of(app, journal)
    assert volume in document["volumes"], "the journal is on a volume every replica shares"
    assert checker["entrypoint"] == ["python", "-m", "peer.tools.ticks"]
    checker_journal, _, checker_jobs = checker["command"]
    assert source_of(checker, checker_journal) == (volume, inside)
    assert source_of(checker, checker_jobs) == source_of(app, settings.jobs)


# -- examples/kubernetes ----------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_no_secret_is_committed() -> None:
    documents = kubernetes_documents()
    listed = documents["kustomization.yaml"][0]["resources"]
    assert sorted(listed) == sorted(name for name in documents if name != "kustomization.yaml")
    assert not [doc for doc in kubernetes_resources() if doc["kind"] == "Secret"], "Secrets are made with kubectl (README)"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_kubernetes_schema(version: str) -> None:
    for document in kubernetes_resources():
        kubernetes_validate.validate(document, version, strict=True)  # raises ValidationError: unknown or mistyped fields


def test_the_schema_check_catches_a_misspelt_field() -> None:
    deployment = resource("Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def named_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [item["containerPort"] for item in container["ports"] if item["name"] == port]
    return int(number)


def test_deployment_probes_grace_and_security() -> None:
    deployment = resource("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = deployment_container()
    settings = deployment_settings()
    assert deployment["spec"]["replicas"] == 3
    assert settings.name == POD["metadata.name"]
    assert settings.advertise == (POD["status.podIP"], settings.bind[1]), "advertises the pod's IP (downward API)"
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (readiness["path"], liveness["path"]) == ("/health/ready", "/health")
    assert {readiness["path"], liveness["path"]} <= PUBLIC_PATHS, "the kubelet has no token"
    assert named_port(container, readiness["port"]) == named_port(container, liveness["port"]) == settings.api[1]
    assert settings.api[0] == "0.0.0.0" and settings.api_token_file, "the kubelet probes the pod's IP; beyond loopback, a token"
    protocols = {(item["containerPort"], item["protocol"]) for item in container["ports"]}
    assert {(settings.bind[1], "UDP"), (settings.bind[1], "TCP"), (settings.api[1], "TCP")} <= protocols
    assert pod["terminationGracePeriodSeconds"] >= grace_needed(settings)
    security, container_security = pod["securityContext"], container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == image_uid() > 0
    assert container_security["readOnlyRootFilesystem"] and not container_security["allowPrivilegeEscalation"]
    assert container_security["capabilities"]["drop"] == ["ALL"]
    assert "requests" in container["resources"] and "memory" in container["resources"]["limits"]
    assert settings.encrypt == "on" and settings.jobs


def test_deployment_reads_its_files_from_the_volumes_that_hold_them() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    container = deployment_container()
    settings = deployment_settings()
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounted = {PurePosixPath(mount["mountPath"]): volumes[mount["name"]] for mount in container["volumeMounts"]}

    def volume_of(path: str) -> tuple[dict[str, Any], str]:
        for target, volume in mounted.items():
            if PurePosixPath(path).is_relative_to(target):
                return volume, str(PurePosixPath(path).relative_to(target))
        raise AssertionError(f"{path} is on no volume")

    for path in (settings.key_file, settings.api_token_file):
        assert path is not None
        volume, inside = volume_of(path)
        items = [item["path"] for source in volume["projected"]["sources"] for item in source["secret"]["items"]]
        assert inside in items
    assert settings.jobs is not None
    volume, inside = volume_of(settings.jobs)
    configmap = resource("ConfigMap", volume["configMap"]["name"])
    assert inside in configmap["data"]
    assert pod["securityContext"]["fsGroup"] == image_uid(), "the secret files are readable by the agent's group"
    for writable in ("/tmp", "/var/lib/peer"):  # read-only root: where Python and the jobs may write
        assert "emptyDir" in volume_of(writable + "/x")[0]


def test_services_select_the_pods_and_the_headless_one_publishes_starting_pods() -> None:
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    settings = deployment_settings()
    (seed,) = [parse_seed(text) for text in settings.seeds]
    gossip = resource("Service", seed.host)
    assert seed.dns and seed.port == settings.bind[1]
    assert gossip["spec"]["clusterIP"] == "None" and gossip["spec"]["publishNotReadyAddresses"] is True
    assert {(port["port"], port["protocol"]) for port in gossip["spec"]["ports"]} == {(seed.port, "UDP"), (seed.port, "TCP")}
    for service in [doc for doc in kubernetes_resources() if doc["kind"] == "Service"]:
        assert service["spec"]["selector"].items() <= labels.items()
    api = resource("Service", "peer-api")
    assert api["metadata"]["name"] in settings.api_hosts, "the API answers to its Service's name"
    pdb = resource("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["maxUnavailable"] == 1


def test_the_tick_checker_reports_a_tick_run_twice_and_one_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (spec,) = load_jobs_file(str(ROOT / "examples" / "compose" / "jobs.toml"))
    start = (int(time.time()) - 12) * 1000
    lines = [
        JournalLine(tick_run_id(spec.id, start + second * 1000), 1, f"app-{second % 2}", start + second * 1000) for second in range(10)
    ]
    lines.append(JournalLine(tick_run_id(spec.id, start + 4000), 1, "app-3", start + 4100))  # twice
    del lines[6]  # never
    result = judge(spec, lines, now_ms=start + 9000, since_ms=None, slack_ms=0)
    assert (result.due, result.once) == (10, 8)
    assert result.missing == (tick_run_id(spec.id, start + 6000),)
    assert list(result.repeated) == [tick_run_id(spec.id, start + 4000)]
    journal = tmp_path / "ticks.log"
    journal.write_text("".join(f"{line.run} {line.attempt} {line.node} {line.start_ms}\n" for line in lines))
    assert ticks_main([str(journal), "--jobs", str(ROOT / "examples" / "compose" / "jobs.toml"), "--slack", "3"]) == 1
    report = capsys.readouterr().out
    assert f"ran 2 times: {tick_run_id(spec.id, start + 4000)}" in report and f"never ran: {tick_run_id(spec.id, start + 6000)}" in report


# -- the recipes at work ----------------------------------------------------------------


class Recipe:
    """A recipe's agents as real processes on 127.0.0.1: the recipe's
    variables, with what only a container has remapped (ports, addresses,
    the seed name, secrets, the in-container data directory)."""

    def __init__(self, workdir: Path, env: Mapping[str, str], *, data_dir: str, processes: Processes) -> None:
        self.workdir, self.env, self.processes = workdir, dict(env), processes
        self.ports = Ports()
        self.settings = agent_settings(self.env)
        (self.seed,) = [parse_seed(text) for text in self.settings.seeds]
        self.seed_port = self.ports.take()
        (workdir / "hosts").write_text(f"{LOOPBACK} {self.seed.host}\n")  # the Service's name: this machine
        (workdir / "cluster.key").write_text(generate_key() + "\n")
        self.token = generate_key()
        (workdir / "api.token").write_text(self.token + "\n")
        assert self.settings.jobs is not None
        jobs = Path(self.settings.jobs)
        source = self.jobs_source(jobs)
        self.jobs = workdir / jobs.name
        self.jobs.write_text(source.read_text().replace(data_dir.rstrip("/") + "/", f"{workdir}/"))
        self.agents: dict[str, tuple[subprocess.Popen[bytes], int]] = {}

    def jobs_source(self, jobs: Path) -> Path:
        raise NotImplementedError

    def start(self, name: str) -> None:
        first = not self.agents
        gossip = self.seed_port if first else self.ports.take()
        api = self.ports.take()
        env = dict(os.environ)
        for variable in [name for name in env if name.startswith(ENV_PREFIX)]:
            del env[variable]
        env.update(self.env)
        remapped = {
            "PEER_NAME": name,  # a container's host name, a pod's name
            "PEER_BIND": format_address((LOOPBACK, gossip)),
            "PEER_API": format_address((LOOPBACK, api)),
            "PEER_SEEDS": f"dns:{self.seed.host}:{self.seed_port}",
            "PEER_HOSTS_FILE": str(self.workdir / "hosts"),
            "PEER_KEY_FILE": str(self.workdir / "cluster.key"),
            "PEER_API_TOKEN_FILE": str(self.workdir / "api.token"),
            "PEER_JOBS": str(self.jobs),
        }
        if "PEER_ADVERTISE" in self.env:
            remapped["PEER_ADVERTISE"] = format_address((LOOPBACK, gossip))
        env.update(remapped)
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        with log:
            command = [sys.executable, "-m", "peer", "agent"]  # the image's `tini -- peer agent`
            process = self.processes.spawn(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.agents[name] = (process, api)

    def get(self, name: str, path: str, *, token: bool = True) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        return httpx.get(f"http://{LOOPBACK}:{self.agents[name][1]}{path}", headers=headers, timeout=5.0)

    def ready(self, name: str, path: str = "/health/ready") -> bool:
        process, _ = self.agents[name]
        assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.log(name)}"
        try:
            return self.get(name, path, token=False).status_code == 200
        except httpx.HTTPError:
            return False

    def view(self, name: str) -> dict[str, str]:
        return {member["name"]: member["status"] for member in self.get(name, "/members").json()["members"]}

    def wait_cluster(self, names: list[str], timeout: float = 60.0) -> None:
        expected = dict.fromkeys(names, "alive")
        wait_until(lambda: all(self.ready(name) for name in names), timeout, f"{names} ready:\n{self.logs()}")
        wait_until(lambda: all(self.view(name) == expected for name in names), timeout, f"{names} see each other:\n{self.logs()}")

    def stop(self, name: str, grace: float) -> int | None:
        """What ``docker stop`` and the kubelet do: SIGTERM, then wait the grace period."""
        process, _ = self.agents.pop(name)
        os.kill(process.pid, signal.SIGTERM)
        try:
            return process.wait(grace)
        except subprocess.TimeoutExpired:
            return None

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.agents)


class ComposeRecipe(Recipe):
    def jobs_source(self, jobs: Path) -> Path:
        source, inside = source_of(compose()["services"]["app"], str(jobs))
        return ROOT / source / inside if inside.parts else ROOT / source


class KubernetesRecipe(Recipe):
    def jobs_source(self, jobs: Path) -> Path:
        (self.workdir / "configmap").mkdir(exist_ok=True)
        configmap = resource("ConfigMap", "peer-jobs")
        path = self.workdir / "configmap" / jobs.name
        path.write_text(configmap["data"][jobs.name])
        return path


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def journal_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def processes() -> Iterator[Processes]:
    with Processes(reap_timeout=10.0) as tracked:
        yield tracked


def test_healthcheck_command_answers_for_a_ready_agent_only(tmp_path: Path, processes: Processes) -> None:
    """The Dockerfile's HEALTHCHECK, run as is (with the container's
    variables): exit 0 once the agent is ready, non-zero when no agent answers."""
    recipe = ComposeRecipe(
        tmp_path, {**image_env(), **compose_env(compose()["services"]["app"])}, data_dir="/var/lib/peer", processes=processes
    )
    recipe.start("app-1")
    command = [sys.executable if word == "python" else word for word in healthcheck_command()]
    wait_until(lambda: recipe.ready("app-1"), 60.0, f"app-1 ready:\n{recipe.logs()}")
    env = dict(os.environ, PEER_API=format_address((LOOPBACK, recipe.agents["app-1"][1])))
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0
    assert recipe.stop("app-1", 30.0) == 0
    down = subprocess.run(command, env=env, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_compose_recipe_scales_and_runs_each_tick_once(tmp_path: Path, processes: Processes) -> None:
    """`docker compose up --scale app=3`, then 4, then 3 again (one replica
    stopped as compose stops it), with the compose file's own settings; then
    the compose checker's own command judges the journal: every tick since
    the first ran exactly once."""
    document = compose()
    app = document["services"]["app"]
    recipe = ComposeRecipe(tmp_path, {**image_env(), **compose_env(app)}, data_dir="/var/lib/peer", processes=processes)
    names = ["app-1", "app-2", "app-3"]
    for name in names:
        recipe.start(name)
    recipe.wait_cluster(names)
    journal = tmp_path / "ticks.log"
    wait_until(lambda: len(journal_lines(journal)) >= 3, 30.0, "three ticks in the journal")
    recipe.start("app-4")  # scale up
    names.append("app-4")
    recipe.wait_cluster(names)
    seen = len(journal_lines(journal))
    wait_until(lambda: len(journal_lines(journal)) >= seen + 3, 30.0, "three more ticks")
    grace = parse_duration(app["stop_grace_period"])
    assert recipe.stop("app-2", grace) == 0, "a scaled-down replica leaves gracefully within stop_grace_period"
    names.remove("app-2")
    seen = len(journal_lines(journal))
    wait_until(lambda: len(journal_lines(journal)) >= seen + 8, 30.0, "eight ticks after the scale down")
    checker = document["services"]["checker"]
    journal_arg, flag, _jobs = checker["command"]
    command = [sys.executable, *checker["entrypoint"][1:], str(journal), flag, str(recipe.jobs)]
    checked = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, f"{checked.stdout}{checked.stderr}\n{recipe.logs()}"
    assert "OK: every tick ran exactly once" in checked.stdout
    for name in names:
        assert recipe.stop(name, grace) == 0


def test_kubernetes_recipe_forms_a_cluster_and_runs_its_jobs(tmp_path: Path, processes: Processes) -> None:
    """Three pods' worth of the Deployment's settings (downward API values
    filled in): the probes' paths answer, the pods see each other, the
    ConfigMap's job runs, and each pod leaves within its grace period."""
    pod = resource("Deployment")["spec"]["template"]["spec"]
    container = deployment_container()
    names = ["peer-0", "peer-1", "peer-2"]
    recipe = KubernetesRecipe(tmp_path, deployment_env({**POD, "status.podIP": LOOPBACK}), data_dir="/var/lib/peer", processes=processes)
    for name in names:
        recipe.start(name)
    for name in names:
        wait_until(lambda name=name: recipe.ready(name, container["livenessProbe"]["httpGet"]["path"]), 60.0, f"{name} alive")
    recipe.wait_cluster(names)
    assert all(recipe.ready(name, container["readinessProbe"]["httpGet"]["path"]) for name in names)
    (job,) = load_jobs_file(str(recipe.jobs))

    def succeeded() -> bool:
        runs = recipe.get(names[0], f"/runs?job={job.id}&state=succeeded").json()["runs"]
        return bool(runs) and runs[0]["result"]["node"] in names

    wait_until(succeeded, 30.0, f"a run of {job.id} to succeed:\n{recipe.logs()}")
    for name in names:
        assert recipe.stop(name, pod["terminationGracePeriodSeconds"]) == 0
