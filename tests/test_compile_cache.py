"""JAX's persistent compilation cache for the commands: where it lives, how it is turned off, and
that a command run fills it (in a fresh process, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainmap import _cache


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TRAINMAP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == tmp_path / "xdg" / "trainmap" / "jax"
    monkeypatch.setenv("TRAINMAP_CACHE_DIR", str(tmp_path / "mine"))
    assert _cache.cache_dir() == tmp_path / "mine"


def test_off_switches(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINMAP_CACHE_DIR", str(tmp_path / "c"))
    assert _cache.enable_compilation_cache(False) is None
    monkeypatch.setenv("TRAINMAP_NO_COMPILE_CACHE", "1")
    assert _cache.enable_compilation_cache(True) is None
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # opt-in (two CLI processes; the cache helpers are unit-tested above and every CLI test uses the cache)
def test_a_command_fills_the_cache_and_no_compile_cache_leaves_it_empty(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "TRAINMAP_NO_COMPILE_CACHE"}
    args = ["jacobian", "--hidden", "2", "--epochs", "1", "--batch-size", "800"]
    code = "import sys; from trainmap.cli import main; sys.argv = ['trainmap', *sys.argv[1:]]; main()"
    for flag, cache in (("--no-compile-cache", tmp_path / "off"), ("--compile-cache", tmp_path / "on")):
        env["TRAINMAP_CACHE_DIR"] = str(cache)
        res = subprocess.run([sys.executable, "-c", code, flag, *args, "--out", str(tmp_path / flag)],
                             env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "off").exists()
    assert any((tmp_path / "on").iterdir())
