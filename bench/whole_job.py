"""The main job end to end: `trainmap jacobian` as a process against the authors' route.

Each round runs two child processes one after the other, alternating which goes first:

* **trainmap**: ``trainmap jacobian --out DIR --overwrite`` (all of it: training, J, SVD, saving,
  figures, report);
* **baseline**: what the authors' script does, on the same setup (``trainmap.presets.digits_mlp()``):
  ``jax.jit(jax.jacfwd(recipe.train))(θ₀)``, ``jnp.linalg.svd``, saving J and σ with ``np.save``.

Both log their stages through ``TRAINMAP_STAGE_LOG`` (wall s, CPU s, the stage's own peak RSS);
the parent adds each child's total wall time, CPU time (``os.wait4``) and peak RSS. The first
trainmap round starts from an empty compilation cache ("first run"), later rounds reuse it
("cached"); the baseline never has one, as in the authors' script. Medians over rounds.

    python bench/whole_job.py --rounds 3            # reference run, ~8 min on 2 CPU cores
    python bench/whole_job.py --rounds 3 --quick    # MLP 64→32→10, 5 epochs (P = 2,410)

Writes bench/results/whole_job[_quick]_cpu.json atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
QUICK = ["--hidden", "32", "--epochs", "5"]


def _baseline_child(out: Path, quick: bool) -> None:
    import jax
    import jax.numpy as jnp

    from trainmap._progress import stage
    from trainmap.presets import digits_mlp

    with stage("setup"):
        s = digits_mlp(hidden=32, epochs=5) if quick else digits_mlp()
    with stage("Jacobian"):
        J = jax.jit(jax.jacfwd(s.recipe.train))(s.theta0).block_until_ready()
    with stage("SVD"):
        U, S, Vt = jnp.linalg.svd(J)
        S.block_until_ready()
    with stage("saving"):
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "jacobian.npy", np.asarray(J))
        np.save(out / "singular_values.npy", np.asarray(S))


def _run(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}


def _stages(path: Path) -> dict:
    out: dict = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        out[d.pop("stage")] = d
    return out


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline-child", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.baseline_child:
        _baseline_child(a.baseline_child, a.quick)
        return {}
    work = Path(tempfile.mkdtemp(prefix="trainmap-whole-job-"))
    cache = work / "cache"
    runs: dict[str, list[dict]] = {"trainmap": [], "baseline": []}
    try:
        for r in range(a.rounds):
            order = ["trainmap", "baseline"] if r % 2 == 0 else ["baseline", "trainmap"]
            for who in order:
                log = work / f"{who}_{r}.jsonl"
                env = {**os.environ, "TRAINMAP_STAGE_LOG": str(log), "TRAINMAP_CACHE_DIR": str(cache)}
                if who == "trainmap":
                    cmd = ["trainmap", "jacobian", *(QUICK if a.quick else []), "--out", str(work / "tm"),
                           "--overwrite"]
                else:
                    env["TRAINMAP_NO_COMPILE_CACHE"] = "1"
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-child", str(work / "base"),
                           *(["--quick"] if a.quick else [])]
                row = _run(cmd, env)
                row["stages"] = _stages(log)
                if who == "baseline":  # jnp.linalg.svd returns NaN where LAPACK does not converge
                    row["sigma_finite"] = bool(np.all(np.isfinite(np.load(work / "base" / "singular_values.npy"))))
                # resetting the high-water mark per stage also resets what wait4 reports: the
                # process's peak is the largest of its stages' peaks
                row["peak_rss_mib"] = max([row["peak_rss_mib"]] + [v["peak_rss_mib"] or 0 for v in row["stages"].values()])
                row["round"] = r
                row["cache"] = ("first run" if r == 0 else "cached") if who == "trainmap" else "none"
                runs[who].append(row)
                print(f"round {r} {who:8s}: {row['wall_s']:6.1f} s wall, σ finite {row.get('sigma_finite', True)}, {row['cpu_s']:6.1f} s CPU, "
                      f"{row['peak_rss_mib']:6.0f} MiB peak; " +
                      ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in row["stages"].items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tm, base = runs["trainmap"], runs["baseline"]
    cached = tm[1:] or tm

    def stage_medians(rows: list[dict]) -> dict:
        names = list(rows[0]["stages"])
        return {n: {k: statistics.median(r["stages"][n][k] for r in rows if n in r["stages"])
                    for k in ("wall_s", "cpu_s", "peak_rss_mib")} for n in names}

    result = {
        "command": "python bench/whole_job.py --rounds %d%s" % (a.rounds, " --quick" if a.quick else ""),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rounds": runs,
        "median": {
            "trainmap_first_run": {k: tm[0][k] for k in ("wall_s", "cpu_s", "peak_rss_mib")},
            "trainmap_cached": {k: _median(cached, k) for k in ("wall_s", "cpu_s", "peak_rss_mib")},
            "baseline": {k: _median(base, k) for k in ("wall_s", "cpu_s", "peak_rss_mib")},
            "trainmap_stages": stage_medians(cached),
            "baseline_stages": stage_medians(base),
        },
    }
    m = result["median"]
    result["ratios"] = {
        "speedup_wall_cached": m["baseline"]["wall_s"] / m["trainmap_cached"]["wall_s"],
        "speedup_wall_first_run": m["baseline"]["wall_s"] / m["trainmap_first_run"]["wall_s"],
        "cpu_ratio_cached": m["trainmap_cached"]["cpu_s"] / m["baseline"]["cpu_s"],
        "peak_rss_ratio": m["trainmap_cached"]["peak_rss_mib"] / m["baseline"]["peak_rss_mib"],
        "jacobian_speedup": m["baseline_stages"]["Jacobian"]["wall_s"] / m["trainmap_stages"]["Jacobian"]["wall_s"],
    }
    print(json.dumps(result["ratios"], indent=1))
    out = HERE / "results" / f"whole_job{'_quick' if a.quick else ''}_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return result


if __name__ == "__main__":
    main()
