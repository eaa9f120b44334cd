"""report.html of a small run, opened in headless Chromium: every figure loads, no console error.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
``selenium`` (test extra). Rule: when they are missing the tests FAIL under CI (``CI`` set to
anything but ``""``, ``0`` or ``false``) and are skipped on a developer machine.

A full-page screenshot of the report is saved as ``report_screenshot.png`` in the run folder and
copied, with the report, to ``results/ci-artifacts/report/`` (or ``$TRAINMAP_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_recipe
from trainmap.report.html import write_report

CHROMIUM = os.environ.get("TRAINMAP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TRAINMAP_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("TRAINMAP_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "results" / "ci-artifacts" / "report"))
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(why: str) -> None:
    msg = (f"headless Chromium is needed for the report test but {why}. Install it with "
           "`apt-get install chromium chromium-driver` (Debian) and `pip install -e .[test]`.")
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            _unavailable(f"{exe} is missing")
    profile = tempfile.mkdtemp(prefix="trainmap-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(180)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def inspect_page(driver, path: Path, screenshot: Path | None = None, wait_s: float = 90.0) -> dict:
    """Open ``path``; return broken images, console errors, views drawn, and non-local requests."""
    driver.get_log("browser")  # drop earlier messages
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + wait_s
    pending = -1
    while time.monotonic() < deadline:
        pending = driver.execute_script(
            "if (document.readyState !== 'complete') return -1;"
            "return Array.from(document.images).filter(i => !i.complete).length +"
            " Array.from(document.querySelectorAll('.plotly-view')).filter("
            "   e => !e.classList.contains('js-plotly-plot') && !e.classList.contains('failed')).length;")
        if pending == 0:
            break
        time.sleep(0.25)
    result = driver.execute_script(
        "return {images: Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0]),"
        " views: Array.from(document.querySelectorAll('.plotly-view')).map("
        "   e => [e.id, e.classList.contains('js-plotly-plot') && !e.classList.contains('failed')"
        "         && e.querySelectorAll('svg.main-svg').length > 0]),"
        " requests: performance.getEntriesByType('resource').map(r => r.name)"
        "   .filter(u => !u.startsWith('data:') && !u.startsWith('file:') && !u.startsWith('blob:'))};")
    result["settled"] = pending == 0
    result["errors"] = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if screenshot is not None:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1200, min(int(height) + 50, 16000))
        driver.save_screenshot(str(screenshot))
        driver.set_window_size(1200, 900)
    return result


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A real (tiny) training-Jacobian run, plus Koopman-style eigenvalues and an embedding."""
    from trainmap.jacobian.analysis import analyze

    out = tmp_path_factory.mktemp("report") / "small-run"
    recipe, theta0 = tiny_recipe(epochs=1)
    analyze(recipe, theta0, out, progress=False, chunk_size=64)
    rng = np.random.default_rng(0)
    np.save(out / "eigenvalues_small.npy", np.exp(1j * rng.uniform(-1, 1, 8)) * rng.uniform(0.6, 1, 8))
    t = np.linspace(0, 1, 40)[None, :, None]
    np.save(out / "inpca_embedding.npy", np.concatenate([t, t ** 2, np.sin(3 * t), t ** 3], -1).repeat(2, 0))
    write_report(out)
    return out


def test_report_renders_in_chromium(browser, small_run):
    shot = small_run / "report_screenshot.png"
    res = inspect_page(browser, small_run / "report.html", screenshot=shot)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for f in (shot, small_run / "report.html"):
        shutil.copy2(f, ARTIFACTS / f.name)
    assert res["settled"], res
    pngs = sorted(p.stem for p in small_run.glob("*.png") if p.name != shot.name)
    assert sorted(alt for alt, _ in res["images"]) == pngs and len(pngs) >= 3
    assert [alt for alt, ok in res["images"] if not ok] == [], "figures that did not load"
    assert len(res["views"]) == 2 and all(ok for _, ok in res["views"]), res["views"]
    assert res["errors"] == [], "console errors"
    assert res["requests"] == [], "the report fetched something from outside its file"
    assert shot.stat().st_size > 10_000


def test_the_check_catches_broken_figures_and_console_errors(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><img alt="ok" src="data:image/gif;base64,'
                    'R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==">'
                    '<img alt="broken" src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom from the page")</script></body></html>')
    res = inspect_page(browser, page)
    assert dict(res["images"]) == {"ok": True, "broken": False}
    assert any("boom from the page" in e for e in res["errors"])


def test_docs_formulas_render_offline(browser, tmp_path):
    """The docs' MathJax is the copy docs/hooks/mathjax.py puts into the site: no network needed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mathjax_hook", Path(__file__).resolve().parents[1] / "docs" /
                                                  "hooks" / "mathjax.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    hook.on_post_build({"site_dir": str(tmp_path)})
    config = (Path(__file__).resolve().parents[1] / "docs" / "js" / "mathjax-config.js").read_text()
    config = config.replace("document$.subscribe", "void 0 && document$.subscribe")  # no mkdocs-material here
    page = tmp_path / "page.html"
    page.write_text(f"<html><body><p class='arithmatex'>\\(\\sigma_i = \\|J v_i\\|\\)</p>"
                    f"<script>{config}</script><script src='js/mathjax/tex-mml-chtml.js'></script></body></html>")
    browser.get(page.as_uri())
    for _ in range(100):
        if browser.execute_script("return document.querySelectorAll('mjx-container').length") > 0:
            break
        time.sleep(0.1)
    assert browser.execute_script("return document.querySelectorAll('mjx-container').length") == 1


def test_analyze_a_user_recipe_joint_report_in_chromium_shared_plotly_and_rerun(browser, tmp_path, monkeypatch):
    """Issue acceptance: a model trainmap does not ship, `trainmap analyze --recipe file.py:make`, the
    three lens folders, the joint report in a real browser, the reports sharing one plotly.js, and
    `trainmap rerun` reproducing summary.json."""
    import json
    import sys

    from typer.testing import CliRunner

    from test_cli_analyze import USER_FILE
    from trainmap import results
    from trainmap.cli import app, main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_net.py").write_text(USER_FILE)
    monkeypatch.setitem(results.RUN_COMMAND, "args", None)
    monkeypatch.setattr(sys, "argv", ["trainmap", "analyze", "--recipe", "my_net.py:make", "--recipe-arg",
                                      "hidden=4", "--out", "an"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    out = tmp_path / "an"
    for lens in ("jacobian", "koopman", "ribbon"):
        assert json.loads((out / lens / "summary.json").read_text()), lens
    res = inspect_page(browser, out / "report.html")
    assert res["settled"] and res["errors"] == [] and res["requests"] == [], res
    assert [alt for alt, ok in res["images"] if not ok] == [] and len(res["images"]) >= 3
    assert res["views"] and all(ok for _, ok in res["views"]), res["views"]
    inline_size = (out / "ribbon" / "report.html").stat().st_size
    # one shared plotly.min.js for the whole tree: the nested reports load it by a relative path
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(out), "--shared-plotly"])
    assert r.exit_code == 0, r.output
    assert (out / "plotly.min.js").exists() and not (out / "ribbon" / "plotly.min.js").exists()
    nested = out / "ribbon" / "report.html"
    assert nested.stat().st_size < inline_size - 2_000_000 and "../plotly.min.js" in nested.read_text()
    res = inspect_page(browser, nested)
    assert res["settled"] and res["errors"] == [] and res["views"] and all(ok for _, ok in res["views"]), res
    r = runner.invoke(app, ["rerun", str(out), "--out", str(tmp_path / "again")])
    assert r.exit_code == 0 and "the same as the original" in r.output, r.output
