"""The gallery command and the README gallery it feeds."""

from __future__ import annotations

import re
from pathlib import Path

from trainmap.report.gallery import ITEMS, GalleryItem, main, regenerate

ROOT = Path(__file__).resolve().parents[1]


def _report_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("<!-- section:report -->", 1)[1].split("<!-- /section:report -->", 1)[0]


def test_regenerate_copies_existing_figures_and_skips_missing_commands(tmp_path):
    jac = next(it for it in ITEMS if it.key == "jacobian")
    (tmp_path / jac.folder).mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\nfake"
    (tmp_path / jac.folder / jac.figure).write_bytes(png)
    ghost = GalleryItem("ghost", ("no-such-lens",), "results/ghost", "x.png", "ghost.png", "")
    lines: list[str] = []
    status = regenerate([jac, ghost], root=tmp_path, echo=lines.append)
    assert status == {"jacobian": "copied", "ghost": "no command"}
    assert (tmp_path / "docs" / "img" / jac.image).read_bytes() == png
    assert not (tmp_path / "docs" / "img" / "ghost.png").exists()
    assert any("not available" in line for line in lines)


def test_no_run_skips_missing_folders(tmp_path):
    assert main(["--root", str(tmp_path), "--only", "jacobian", "--no-run"]) == 0
    assert not (tmp_path / "docs").exists() and not (tmp_path / "results").exists()


def test_list_mode_changes_nothing(tmp_path):
    assert main(["--root", str(tmp_path), "--only", "jacobian", "--list"]) == 0
    assert not (tmp_path / "docs").exists() and not (tmp_path / "results").exists()


def test_readme_gallery_images_exist():
    section = _report_section()
    images = re.findall(r"\]\((docs/img/[\w.-]+\.png)\)", section)
    assert "docs/img/jacobian_spectrum.png" in images
    missing = [p for p in images if not (ROOT / p).is_file()]
    assert missing == [], f"README gallery images missing (run python -m trainmap.report.gallery): {missing}"
    assert "python -m trainmap.report.gallery" in section
