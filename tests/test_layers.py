"""Dependencies run one way: core <- bridges <- ASE layer (jaxpto.md), workflows, CLI, benchmarks.

Checked on the source (every ``import`` statement, also those inside functions) and at run time
(importing the core loads no bridge, and no torch).
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ["jaxpto/model.py", "jaxpto/state.py", "jaxpto/neighbors.py", "jaxpto/simulate.py", "jaxpto/validation.py",
        "jaxpto/calculator.py", "jaxpto/host_allocator.py", "jaxpto/integrators", "jaxpto/potentials"]
ABOVE_CORE = ("bridges", "jaxpto.md", "jaxpto.workflows", "jaxpto.cli", "jaxpto.verify", "benchmarks")
ABOVE_BRIDGES = ("jaxpto.md", "jaxpto.workflows", "jaxpto.cli", "jaxpto.verify", "benchmarks")


def _files(entries):
    for entry in entries:
        path = ROOT / entry
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def _imports(path: pathlib.Path):
    """Every module named by an import in ``path`` (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:  # "from jaxpto import md" imports jaxpto.md
                yield node.lineno, f"{base}.{alias.name}"


def _violations(entries, forbidden):
    bad = []
    for path in _files(entries):
        for line, name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


def test_core_imports_nothing_above_it():
    assert _violations(CORE, ABOVE_CORE) == []


def test_bridges_import_neither_the_ase_layer_nor_the_workflows():
    assert _violations(["bridges"], ABOVE_BRIDGES) == []


def test_the_checker_sees_a_violation():
    """Negative control: the checker finds the upward imports that the ASE layer does make."""
    assert any("imports bridges" in v for v in _violations(["jaxpto/md.py"], ("bridges",)))
    assert any("jaxpto.workflows" in v for v in _violations(["jaxpto/cli.py"], ("jaxpto.workflows",)))


@pytest.mark.parametrize("module", ["jaxpto", "jaxpto.simulate", "jaxpto.integrators", "jaxpto.potentials"])
def test_importing_the_core_loads_no_bridge(module):
    code = (f"import sys, {module}; bad = sorted(m for m in sys.modules if m == 'bridges' or m.startswith('bridges.') "
            "or m == 'torch' or m.startswith('jaxpto.workflows') or m == 'jaxpto.md'); print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
