"""The documentation site: `mkdocs build --strict` passes, and the tutorials' code runs.

Rule for a missing mkdocs: the build test FAILS under CI (``CI`` set to anything but ``""``,
``0`` or ``false``; CI installs ``.[dev]``, which includes the docs extra) and is skipped locally.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text.split("\nnav:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.M)


def test_every_nav_page_exists():
    pages = _nav_pages()
    assert {"index.md", "api/index.md", "tutorial_jax.md", "tutorial_pytorch.md", "report.md"} <= set(pages)
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert missing == [], f"mkdocs.yml names pages that do not exist in docs/: {missing}"
    # the API reference: one page per module, every page in the nav and every public package covered
    api_pages = {p for p in pages if p.startswith("api/") and p != "api/index.md"}
    assert api_pages == {f"api/{f.name}" for f in (DOCS / "api").glob("trainmap.*.md")}
    for package in ("recipe", "torch", "jacobian.analysis", "koopman.dmd", "ribbon.inpca", "record.store", "results"):
        assert f"api/trainmap.{package}.md" in api_pages, package


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        msg = 'mkdocs/mkdocstrings are not installed: pip install -e ".[docs]"'
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "Error" in line) + "\n" + log[-3000:]
    site = tmp_path / "site"
    api = " ".join(p.read_text() for p in (site / "api").rglob("index.html"))
    for name in ("make_recipe", "exact_jacobian", "write_report", "Trajectory", "DMD", "torch_recipe"):
        assert name in api, f"{name} missing from the API reference"
    assert "_gesdd" not in api and "_check_step" not in api  # public names only
    # formulas render offline: MathJax is served from the site itself
    assert (site / "js" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert not [p for p in site.rglob("*.html") if p.is_file() and "cdn.jsdelivr.net/npm/mathjax" in p.read_text()]
    assert (site / "tutorial_jax" / "index.html").exists() and (site / "img" / "jacobian_spectrum.png").exists()


def _run_blocks(page: str, cwd: Path, monkeypatch) -> dict:
    code = "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S))
    assert code.strip(), f"no python code in {page}"
    monkeypatch.chdir(cwd)
    namespace: dict = {"__name__": "__tutorial__"}
    exec(compile(code, str(DOCS / page), "exec"), namespace)
    return namespace


def test_tutorial_jax_runs(tmp_path, monkeypatch):
    ns = _run_blocks("tutorial_jax.md", tmp_path, monkeypatch)
    assert ns["summary"]["num_params"] == 610 and ns["traj"].shape == (3, 33, 610)
    assert len(ns["res"].pooled) == 6
    assert (tmp_path / "results" / "tutorial-jax" / "jacobian" / "report.html").exists()
    assert (tmp_path / "results" / "tutorial-jax" / "trajectory.zarr").exists()


def test_tutorial_pytorch_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    ns = _run_blocks("tutorial_pytorch.md", tmp_path, monkeypatch)
    assert ns["summary"]["num_params"] == 610 and ns["recipe"].num_steps == 32
    assert ns["traj"].shape == (1, 33, 610) and ns["ribbon"].shape == (1, 17, 64, 10)
    assert ns["inpca"].embedding_.shape == (17, 3)
    assert ns["both"].shape == (6, 9, 64, 10) and 0 < ns["res"].test.p_value <= 1
    for name in ("weights.zarr", "predictions.zarr", "jacobian/report.html"):
        assert (tmp_path / "results" / "tutorial-torch" / name).exists(), name


def test_sphinx_roles_become_plain_code():
    spec = importlib.util.spec_from_file_location("roles", DOCS / "hooks" / "roles.py")
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    html = "See :func:<code>~trainmap.recipe.make_recipe</code> and :class:<code>Recipe</code>; a:b:<code>x</code>."
    assert roles.on_page_content(html) == ("See <code>make_recipe</code> and <code>Recipe</code>; "
                                           "a:b:<code>x</code>.")
