"""The architecture is enforced, not just described: import contracts, one trainer, one results
writer, lint, and an import graph in the docs that matches the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "trainmap"


def _sources() -> dict[Path, str]:
    return {p: p.read_text() for p in SRC.rglob("*.py")}


def test_import_contracts_hold():
    """lint-imports: lenses independent, no lens imports report/cli/commands, the core imports no lens."""
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint) if lint.exists() else "lint-imports", "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_ruff_is_clean():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "bench", "tools"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_updates_are_applied_only_by_the_recipe():
    """One trainer per backend: optimizer updates are applied in trainmap/recipe.py (JAX, optax) and
    trainmap/torch/recipe.py (PyTorch, the torch.optim mirrors), and nowhere else."""
    pattern = re.compile(r"apply_updates|\.update\(\s*grads|optimizer\.update\(")
    trainers = {Path("recipe.py"), Path("torch") / "recipe.py"}
    hits = {p.relative_to(SRC) for p, text in _sources().items() if pattern.search(text)}
    assert hits == trainers, sorted(map(str, hits ^ trainers))


def test_results_folders_are_written_only_by_the_results_module():
    """One results writer: summary.json and manifests are written in results.py only."""
    pattern = re.compile(r"""["']summary\.json["']\s*\)?\s*,|/\s*["']summary\.json["']""")
    writers = [str(p.relative_to(SRC)) for p, text in _sources().items()
               if pattern.search(text) and "atomic_write_json" in text and p.name != "results.py"]
    assert writers == []


def test_import_graph_in_the_docs_matches_the_code():
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_contract_is_not_vacuous(tmp_path):
    """A lens importing another lens breaks the contract (so the check above can fail)."""
    import grimp

    graph = grimp.build_graph("trainmap")
    assert graph.find_modules_directly_imported_by("trainmap.jacobian.analysis")  # the graph sees imports
    assert not graph.chain_exists("trainmap.jacobian", "trainmap.koopman", as_packages=True)
    assert graph.chain_exists("trainmap.commands", "trainmap.jacobian", as_packages=True)
