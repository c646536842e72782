"""The layers of ``peer/`` (CONTRIBUTING.md): arrows point down only, and the
sans-IO layers touch no clock, socket, thread or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top: a module may import its own layer and those below it.
LAYERS = ("membership", "crdt", "peer.jobs", "peer.core", "peer.runtime", "peer.control", "peer.testing", "peer.tools", "peer")
SANS_IO = ("membership", "crdt", "peer.jobs", "peer.core")
# What a sans-IO module may not import: the clock, I/O, threads, event loops.
FORBIDDEN_IN_SANS_IO = (
    "time", "socket", "select", "selectors", "subprocess", "asyncio", "trio", "urllib.request", "http.client", "httpx", "os"
)
# Calls that read the clock or draw global randomness.
FORBIDDEN_CALLS = {
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
    ("random", "random"), ("random", "randint"), ("random", "choice"), ("random", "shuffle"),
    ("random", "uniform"), ("random", "sample"), ("random", "randrange"), ("random", "getrandbits"),
}


def layer_of(module: str) -> int | None:
    best = None
    for index, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            if best is None or len(name) > len(LAYERS[best]):
                best = index
    return best


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("membership", "crdt", "peer"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_every_module_is_in_a_layer() -> None:
    stray = [name for name, _ in modules() if layer_of(name) is None]
    assert not stray
    flat = [path.name for _, path in modules() if path.parent == ROOT / "peer" and path.name not in ("__init__.py", "__main__.py")]
    assert flat == [], "a module of peer/ belongs in a layer's folder"


def upward_imports(name: str, path: Path) -> list[str]:
    """The imports of module ``name`` (at ``path``) from a layer above its own."""
    own = layer_of(name)
    found = []
    for line, imported in imports_of(path):
        target = layer_of(imported)
        if target is not None and own is not None and target > own:
            found.append(f"{path.name}:{line}: {name} ({LAYERS[own]}) imports {imported} ({LAYERS[target]})")
    return found


def clock_io_or_randomness(path: Path) -> list[str]:
    """What in the module at ``path`` a sans-IO layer may not hold."""
    found = []
    for line, imported in imports_of(path):
        if any(imported == bad or imported.startswith(bad + ".") for bad in FORBIDDEN_IN_SANS_IO):
            found.append(f"{path.name}:{line}: imports {imported}")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            if (node.func.value.id, node.func.attr) in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno}: calls {node.func.value.id}.{node.func.attr}()")
    return found


def test_imports_point_down() -> None:
    assert [fault for name, path in modules() for fault in upward_imports(name, path)] == []


def test_sans_io_layers_touch_no_clock_io_or_global_randomness() -> None:
    sans_io = [path for name, path in modules() if LAYERS[layer_of(name) or 0] in SANS_IO]
    assert len(sans_io) > 20  # membership, crdt, peer.jobs, peer.core
    assert [fault for path in sans_io for fault in clock_io_or_randomness(path)] == []


def test_the_checks_see_the_faults_they_look_for(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import trio\nfrom peer.control.api import HttpControlPlane\nx = datetime.now()\ny = random.random()\n")
    assert upward_imports("peer.jobs.m", module) == ["m.py:2: peer.jobs.m (peer.jobs) imports peer.control.api (peer.control)"]
    assert upward_imports("peer.tools.m", module) == []
    assert clock_io_or_randomness(module) == ["m.py:1: imports trio", "m.py:3: calls datetime.now()", "m.py:4: calls random.random()"]
