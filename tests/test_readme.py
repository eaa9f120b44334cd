"""The README's contract: CI runs its commands, and its Python example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_install_and_test_commands():
    block = re.search(r"```bash\n(.*?)```", _readme(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    install, main_job, tests = commands[:3]
    assert main_job == "trainmap jacobian"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci.splitlines() or any(line.strip().endswith(install) or line.strip().startswith(install)
                                             for line in ci.splitlines())
    assert any(line.strip() == tests for line in ci.splitlines())


def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = re.search(r"### Your own model.*?```python\n(.*?)```", _readme(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    summary = namespace["summary"]
    assert summary["num_params"] == 64 * 16 + 16 * 10 + 64 * 10
    assert (tmp_path / "results" / "my-model" / "report.html").exists()


def test_readme_flax_example_runs_and_takes_the_fast_path(tmp_path, monkeypatch):
    code = re.search(r"### Your own model.*?```python\n.*?```.*?```python\n(.*?)```", _readme(), re.S).group(1)
    assert "recipe_from_flax" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    summary = namespace["summary"]
    assert summary["num_params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert (summary["engine"]["rules"], summary["engine"]["activation"]) == ("mlp", "gelu_tanh")


def test_readme_pytorch_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    code = re.search(r"A PyTorch run goes through the same engines.*?```python\n(.*?)```", _readme(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["summary"]["num_params"] == 1210 and ns["recipe"].num_steps == 1600 // 64
    assert (tmp_path / "results" / "my-torch-model" / "summary.json").exists()
