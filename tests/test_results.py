"""The one results-folder writer: what it refuses, what --overwrite removes, what it verifies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainmap.results import FolderError, IntegrityError, open_results, reopen, verify


def _finished(path, kind="jacobian", config=None):
    f = open_results(path, "new", kind=kind, config=config or {"a": 1})
    f.save_array("x", np.arange(4.0))
    (f.dir("checkpoint") / "chunk.npy").write_bytes(b"0")
    f.finish({"n": 4})
    return f


def test_overwrite_refuses_a_folder_trainmap_did_not_write_and_deletes_nothing(tmp_path):
    """The reported case: a folder with a config.json but also the user's own files."""
    p = tmp_path / "P"
    (p / "src").mkdir(parents=True)
    (p / "config.json").write_text("{}")
    (p / "src" / "a.py").write_text("print(1)")
    (p / "data.csv").write_text("1,2")
    for mode in ("overwrite", "new", "resume"):
        with pytest.raises(FolderError, match="not written by trainmap"):
            open_results(p, mode, kind="jacobian", config={"a": 1})
    assert (p / "src" / "a.py").read_text() == "print(1)" and (p / "data.csv").exists()
    assert json.loads((p / "config.json").read_text()) == {}


def test_overwrite_removes_only_what_trainmap_wrote(tmp_path):
    p = tmp_path / "run"
    _finished(p)
    f = open_results(p, "overwrite", kind="jacobian", config={"a": 2})
    assert sorted(x.name for x in p.iterdir()) == ["config.json", "manifest.json"]
    assert f.summary is None
    # a user file dropped into a trainmap folder blocks the overwrite, nothing is deleted
    _finished(tmp_path / "run2")
    (tmp_path / "run2" / "notes.txt").write_text("mine")
    with pytest.raises(FolderError, match="notes.txt"):
        open_results(tmp_path / "run2", "overwrite", kind="jacobian")
    assert (tmp_path / "run2" / "x.npy").exists() and (tmp_path / "run2" / "notes.txt").exists()


def test_a_refused_run_writes_nothing(tmp_path):
    p = tmp_path / "run"
    _finished(p)
    before = {x.name: x.read_bytes() for x in p.iterdir() if x.is_file()}
    with pytest.raises(FolderError, match="--resume"):
        open_results(p, "new", kind="jacobian", config={"a": 99})
    with pytest.raises(FolderError, match=r"a: 1 -> 99"):
        open_results(p, "resume", kind="jacobian", config={"a": 99})
    with pytest.raises(FolderError, match="'jacobian' results, not 'koopman-spectrum'"):
        open_results(p, "overwrite", kind="koopman-spectrum")
    assert {x.name: x.read_bytes() for x in p.iterdir() if x.is_file()} == before


def test_edited_arrays_fail_their_checksum(tmp_path):
    p = tmp_path / "run"
    _finished(p)
    assert verify(p) == []
    np.save(p / "x.npy", np.arange(4.0) + 1)  # a finite, plausible edit
    with pytest.raises(IntegrityError, match="checksum"):
        reopen(p).load_array("x")
    assert any("x.npy" in line for line in verify(p))
    (p / "x.npy").unlink()
    assert any("missing" in line for line in verify(p))


def test_resume_with_the_same_config_continues(tmp_path):
    p = tmp_path / "run"
    f = open_results(p, "new", kind="jacobian", config={"a": 1})
    f.save_array("part", np.ones(2))  # interrupted before finish
    g = open_results(p, "resume", kind="jacobian", config={"a": 1})
    assert g.resumed and g.has("part.npy") and g.summary is None
    np.testing.assert_array_equal(g.load_array("part"), np.ones(2))


def test_bad_mode_and_file_paths_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        open_results(tmp_path / "x", "append", kind="jacobian")
    (tmp_path / "file").write_text("")
    with pytest.raises(FolderError, match="is a file"):
        open_results(tmp_path / "file", "new", kind="jacobian")


def test_a_lens_refuses_to_write_into_another_lens_folder(tmp_path):
    """koopman spectrum --out onto a Jacobian results folder is refused (its summary survives)."""
    from trainmap.koopman.results import write_results

    p = tmp_path / "run"
    _finished(p)
    with pytest.raises(FolderError, match="'jacobian' results"):
        write_results(p, {"c": 1}, {"s": 1}, kind="koopman-spectrum")
    assert json.loads((p / "summary.json").read_text())["n"] == 4


def test_config_records_the_environment_and_a_resume_may_change_it(tmp_path):
    from importlib.metadata import version

    out = tmp_path / "env"
    open_results(out, "new", kind="test", config={"lr": 0.1})
    cfg = json.loads((out / "config.json").read_text())
    env = cfg["environment"]
    assert env["packages"]["jax"] == version("jax") and env["packages"]["numpy"] == version("numpy")
    assert env["python"] and env["platform"]
    cfg["environment"]["packages"]["numpy"] = "0.0-other"  # an upgraded package
    (out / "config.json").write_text(json.dumps(cfg))
    open_results(out, "resume", kind="test", config={"lr": 0.1})  # allowed
    with pytest.raises(FolderError, match="lr"):
        open_results(out, "resume", kind="test", config={"lr": 0.2})
