"""The package's import rules (docs/architecture.md), read from the source with ``ast``.

Every import counts, also those inside functions: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lora_audit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the lora_audit modules it imports (``from a import b`` counts a.b when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("lora_audit"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lora_audit"):
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                             for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


GRAPH = _imports()


def _area(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_the_graph_sees_the_package():
    assert "lora_audit.scan.engine" in GRAPH and "lora_audit.weights.lora_file" in GRAPH["lora_audit.scan.engine"]
    assert "lora_audit.toyworld.pipeline" in GRAPH["lora_audit.toyworld.family"]  # a lazy import counts


def test_only_the_registry_and_the_cli_reach_into_the_toy_world():
    allowed = {"toyworld", "families", "cli", "testing"}  # testing: fixture generators, not the product
    offenders = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _area(m) not in allowed
                       for d in deps if _area(d) == "toyworld")
    assert not offenders


def test_the_toy_world_does_not_import_its_own_lab():
    offenders = sorted(f"{m} -> {d}" for m, deps in GRAPH.items()
                       if m.startswith("lora_audit.toyworld.") and not m.startswith("lora_audit.toyworld.lab")
                       for d in deps if d.startswith("lora_audit.toyworld.lab"))
    assert not offenders


# The layers of docs/architecture.md: a module imports only from its own layer or lower ones.
LAYERS = {"": 0, "errors": 0, "versioned": 0, "results": 0, "evidence": 0, "rules": 0, "policy": 0, "images": 0,
          "figures": 0, "weights": 1, "identity": 2, "diffusion": 2, "families": 3, "attack": 4, "federated": 4, "scan": 5,
          "reports": 6, "toyworld": 7, "testing": 7, "cli": 8, "__main__": 8}


def test_every_area_has_a_layer():
    assert {_area(m) for m in GRAPH} <= set(LAYERS)


def test_imports_run_one_way():
    offenders = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
                       if LAYERS[_area(d)] > LAYERS[_area(m)])
    assert not offenders


def test_the_reader_does_not_import_the_rules():
    allowed = {"lora_audit.errors", "lora_audit.results", "lora_audit.evidence"}
    assert not [d for m, deps in GRAPH.items() if _area(m) == "weights" for d in deps
                if _area(d) != "weights" and d not in allowed]


def test_no_import_cycles_between_modules():
    visiting, done, cycles = set(), set(), []

    def visit(module, path):
        visiting.add(module)
        for dep in sorted(GRAPH[module]):
            if dep in visiting:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [module, dep])
            elif dep not in done:
                visit(dep, path + [dep])
        visiting.discard(module)
        done.add(module)

    for module in sorted(GRAPH):
        if module not in done:
            visit(module, [module])
    # A package's __init__ that re-exports its modules is not a cycle of behaviour; everything else is.
    real = [c for c in cycles if not any(m == c[0].rsplit(".", 1)[0] for m in c[1:])]
    assert not real
