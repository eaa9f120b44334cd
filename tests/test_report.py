"""report.html from a results folder: content, warnings, interactive views, CLI (no browser)."""

from __future__ import annotations

import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from trainmap._io import atomic_savefig, atomic_write_json  # noqa: E402
from trainmap.cli import app  # noqa: E402
from trainmap.report.html import FLOAT32_NOTE, derived_warnings, render_report, write_report  # noqa: E402
from trainmap.report.interactive import (  # noqa: E402
    MAX_POINTS,
    eigenvalue_figure,
    embedding_figure,
    find_views,
    save_plotly,
)


def _png(path, color="C0"):
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2], color=color)
    atomic_savefig(fig, path, dpi=50)


def make_folder(d, *, clean=False):
    """A results folder with two figures, complex eigenvalues, an embedding and a plotly spec."""
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / "config.json", {"model": "mlp", "dtype": "float32", "lr": 0.1,
                                          "optimizer": {"name": "sgd", "momentum": 0.9}, "chunk_size": None})
    summary = {"sigma_max": 15.25, "bulk": {"count": 2937, "fraction": 0.611},
               "warnings": ["lens says: 3 values near a boundary"]}
    if not clean:
        summary.update({"distance": float("nan"), "dmd": {"converged": False}})
    atomic_write_json(d / "summary.json", summary)
    atomic_write_json(d / "captions.json", {"b_second.png": "look at the second one first",
                                            "a_first.png": "the dip at x = 1 is the point"})
    _png(d / "a_first.png")
    _png(d / "b_second.png", "C1")
    rng = np.random.default_rng(0)
    lam = np.exp(1j * rng.uniform(-1, 1, (3, 6))) * rng.uniform(0.5, 1.0, (3, 6))
    lam[1, 4:] = np.nan  # ragged padding
    np.save(d / "eigenvalues_h5.npy", lam)
    np.save(d / "eigenvalues_h10.npy", rng.normal(size=5) + 0.1j)
    np.save(d / "inpca_embedding.npy", rng.normal(size=(2, 20, 4)))
    np.save(d / "inpca_eigenvalues.npy", np.array([3.0, -1.0, 0.5]))  # real: no complex-plane view
    losses = np.linspace(2.0, 0.5, 30) if clean else np.r_[np.linspace(2.0, 0.5, 20), np.full(10, 50.0)]
    np.save(d / "train_losses.npy", losses)
    save_plotly({"data": [{"type": "bar", "x": ["a", "b"], "y": [1, 2]}], "layout": {}}, d, "bars",
                caption="taller bar wins")
    return d


def test_report_holds_config_summary_captions_figures_and_views(tmp_path):
    d = make_folder(tmp_path / "run")
    page = write_report(d).read_text()
    # headline numbers and config, flattened
    assert "sigma_max" in page and "15.25" in page and "2,937" in page
    # grouped by meaning: a titled block per section, fractions as percentages, nulls never "NaN"
    bulk = page.split('<tr class="group"><th colspan="2">bulk</th></tr>')[1]
    assert bulk.startswith("<tr><th>count</th>") and "<th>fraction</th><td>61.1 %</td>" in bulk
    assert '<th>chunk_size</th><td class="muted">auto</td>' in page
    assert "NaN / not available" not in page
    assert "optimizer.momentum" in page and "0.9" in page
    # every PNG inlined once, in captions.json order, with its caption
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert imgs == ["b_second", "a_first"]
    assert "look at the second one first" in page and "the dip at x = 1 is the point" in page
    # interactive views: explicit spec, the eigenvalue plane and the embedding; plotly.js inlined once
    assert page.count("Plotly.newPlot(") == 3
    assert page.count("<script>") == 4 and len(page) > 1_000_000
    assert "taller bar wins" in page and "unit circle" in page and "scatter3d" in page
    # arrays listed with shapes
    assert "inpca_embedding.npy" in page and "2×20×4" in page


def test_report_needs_no_network(tmp_path):
    page = write_report(make_folder(tmp_path / "run")).read_text()
    external = re.findall(r'<(?:img|script|link|iframe)[^>]+(?:src|href)="(?:https?:)?//', page)
    assert external == []


def test_warnings_from_the_lens_and_derived(tmp_path):
    d = make_folder(tmp_path / "run")
    page = render_report(d)
    warn = page.split('id="warnings"')[1].split("</div>")[0]
    assert "lens says: 3 values near a boundary" in warn
    assert "NaN, infinite or missing: distance" in warn
    assert "dmd.converged is false" in warn
    assert "train_losses.npy" in warn and "diverged" in warn
    assert FLOAT32_NOTE.split(":")[0] in page


def test_a_clean_folder_has_no_derived_warnings(tmp_path):
    d = make_folder(tmp_path / "run", clean=True)
    warns, notes = derived_warnings(d, json.loads((d / "config.json").read_text()),
                                    json.loads((d / "summary.json").read_text()))
    assert warns == [] and notes == [FLOAT32_NOTE]
    (d / "config.json").write_text('{"dtype": "float64"}')
    assert derived_warnings(d, {"dtype": "float64"}, {}) == ([], [])


def test_broken_files_become_warnings_not_broken_images(tmp_path):
    d = make_folder(tmp_path / "run", clean=True)
    (d / "c_corrupt.png").write_bytes(b"not a png")
    (d / "bad.plotly.json").write_text("{nope")
    page = render_report(d)
    assert 'alt="c_corrupt"' not in page
    assert "c_corrupt.png is not a valid PNG" in page and "bad.plotly.json could not be shown" in page


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a results folder"):
        write_report(tmp_path / "nope")


def test_interactive_can_be_switched_off_and_skipped(tmp_path):
    d = make_folder(tmp_path / "run", clean=True)
    assert "Plotly.newPlot(" not in render_report(d, interactive=False)
    caps = json.loads((d / "captions.json").read_text())
    caps["interactive_skip"] = ["inpca_embedding.npy"]
    (d / "captions.json").write_text(json.dumps(caps))
    views, problems = find_views(d, caps)
    assert [v.name for v in views] == ["bars", "eigenvalues"] and problems == []


def test_eigenvalue_figure_drops_padding_and_keeps_values():
    lam = np.array([[0.5 + 0.5j, np.nan], [1.0 + 0j, -0.25j]])
    fig = eigenvalue_figure({"run": lam})
    trace = fig["data"][1]
    assert trace["x"] == [0.5, 1.0, 0.0] and trace["y"] == [0.5, 0.0, -0.25]
    np.testing.assert_allclose([c[0] for c in trace["customdata"]], [np.sqrt(0.5), 1.0, 0.25], atol=1e-6)
    assert fig["layout"]["yaxis"]["scaleanchor"] == "x"  # circles stay circles


def test_embedding_figure_shapes():
    pts = embedding_figure(np.arange(12.0).reshape(6, 2))
    assert pts["data"][0]["type"] == "scatter" and pts["data"][0]["y"] == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    runs = embedding_figure(np.zeros((3, MAX_POINTS, 5)))
    assert len(runs["data"]) == 3 and runs["data"][0]["type"] == "scatter3d"
    assert sum(len(t["x"]) for t in runs["data"]) <= MAX_POINTS + 3
    with pytest.raises(ValueError, match="embedding must have shape"):
        embedding_figure(np.zeros(5))


def test_cli_report_command(tmp_path):
    d = make_folder(tmp_path / "run", clean=True)
    res = CliRunner().invoke(app, ["report", str(d)])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and (d / "report.html").stat().st_size > 1_000_000
    res = CliRunner().invoke(app, ["report", str(d), "--no-interactive"])
    assert res.exit_code == 0, res.output
    assert (d / "report.html").stat().st_size < 200_000
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "not a results folder" in res.output


def test_plotly_pages_are_drawn_inline_and_replace_the_automatic_view(tmp_path):
    import plotly.graph_objects as go

    d = make_folder(tmp_path / "run", clean=True)
    fig = go.Figure(go.Scatter3d(x=[0, 1], y=[1, 0], z=[0.5, float("nan")], mode="lines", name="ribbon"))
    fig.write_html(d / "embedding3d.html", include_plotlyjs=True)
    (d / "notes.html").write_text("<html><body>not a plot</body></html>")
    views, problems = find_views(d, json.loads((d / "captions.json").read_text()))
    assert problems == []
    names = [v.name for v in views]
    assert names == ["bars", "embedding3d", "eigenvalues"]  # inpca_embedding.npy: covered by embedding3d
    page_view = views[1]
    assert page_view.source == "embedding3d.html" and page_view.figure["data"][0]["name"] == "ribbon"
    page = render_report(d)
    assert 'href="./embedding3d.html"' in page and page.count("Plotly.newPlot(") == 3
    (d / "broken.html").write_text("<script>Plotly.newPlot('x', [{oops</script>")
    _, problems = find_views(d, {})
    assert problems and "broken.html" in problems[0]


def test_nested_results_folders_are_linked(tmp_path):
    top = make_folder(tmp_path / "reproduce", clean=True)
    for name in ("perturb", "ood"):
        write_report(make_folder(top / name, clean=True), interactive=False)
    page = render_report(top, interactive=False)
    assert 'href="./ood/report.html"' in page and 'href="./perturb/report.html"' in page


def test_reports_below_skip_a_chunk_checkpoint_manifest(tmp_path):
    """A study keeps an interrupted exact point's chunk checkpoint (its own manifest.json, not a
    results folder's): the reports of the folders below are still written, the checkpoint skipped."""
    from trainmap.report.html import write_reports
    from trainmap.results import open_results

    top = tmp_path / "study"
    open_results(top, "new", kind="study", config={}).finish({"points": 1})
    done = top / "points" / "a"
    open_results(done, "new", kind="point", config={}).finish({"sigma_max": 2.0})
    stale = top / "points" / "b" / "checkpoint"
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text(json.dumps(  # the chunk store's own format
        {"fingerprint": "f", "num_params": 10, "chunk": 8, "dtype": "float32", "checksums": {}}))
    write_reports(top, interactive=False)
    assert (done / "report.html").exists() and (top / "report.html").exists()
    assert not (stale / "report.html").exists()


def test_a_jacobian_report_puts_the_run_beside_the_paper(tmp_path):
    from trainmap.jacobian.regions import region_summary, svd

    S = np.r_[np.full(3, 4.0), np.full(5, 1.0005), np.full(2, 1.05), np.full(4, 0.5)]  # P = 14
    d = tmp_path / "run"
    d.mkdir()
    atomic_write_json(d / "summary.json", region_summary(svd(np.diag(S))))
    page = render_report(d, interactive=False)
    table = page[page.index('id="paper"'):page.index('id="summary"')]
    for cell in ("<td>3 (21.4%)</td>", "<td>7 (50.0%)</td>", "<td>4 (28.6%)</td>", "<td>5 (35.7%)</td>",
                 "<td>4.00</td>", "<td>1.0000</td>", "≈ 62%", "3,021 (62.8%)"):
        assert cell in table, cell
    assert 'id="paper"' not in render_report(make_folder(tmp_path / "other"), interactive=False)
