"""Benchmark: trainmap's exact training-Jacobian engine against ``jax.jacfwd`` of the training run.

Usage::

    python bench/exact_jacobian.py            # the reference experiment (MLP 64, 25 epochs)
    python bench/exact_jacobian.py --quick    # MLP 32, 5 epochs: a few minutes

Every measurement runs in its own child process, one after the other on the same machine:

* ``peak``: the float32 GEMM rate of this machine (best of several 2048×2048×2048 matmuls with
  JAX on all cores), the yardstick for the FLOP-rate fraction;
* ``baseline``: ``jax.jit(jax.jacfwd(recipe.train))(theta0)``, all P tangents at once;
* ``engine``: :func:`trainmap.jacobian.exact_jacobian` with its defaults.

Each child reports the wall time and CPU time of the call that produces J (compilation
included), its peak resident memory (``VmHWM`` read right after J is ready, before the
singular values are computed), and J's singular values (float64 SVD). The parent prints the
ratios and the largest relative difference of the singular values, and writes
``bench/results/exact_jacobian[_quick][_skip_streamed]_<tag>.json`` (tag: ``cpu`` by default)
atomically.

Tangent FLOPs are counted analytically for the MLP (the useful work of one Hessian-vector product
per direction per step; see ``tangent_flops``), identical for both methods.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIGMA_FLOOR = 1e-6

QUICK = dict(hidden=32, epochs=5)
FULL = dict(hidden=64, epochs=25)


# ----------------------------------------------------------------------------- helpers
def vm_hwm_bytes() -> int:
    """Peak resident set size of this process so far (Linux ``VmHWM``; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def tangent_flops(sizes: list[int], batch: int, num_params: int, steps: int) -> float:
    """Useful FLOPs of the exact Jacobian of an MLP trained by T steps of a first-order optimizer.

    Per direction and step, the Hessian-vector product of the batch loss costs (multiply-adds)
    ``B·d0·d1`` for ``X dW1``, ``B·d0·d1`` for ``Xᵀ dδ1``, and for every later layer l
    ``6·B·d_{l-1}·d_l`` (``dh W``, ``h dW``, ``hᵀ dδ``, ``dhᵀ δ``, ``dδ Wᵀ``, ``δ dWᵀ``).
    Elementwise work, the loss's curvature and the optimizer are not counted.

    Returns:
        2 · multiply-adds · P directions · T steps.
    """
    macs = 2 * batch * sizes[0] * sizes[1]
    macs += sum(6 * batch * a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    return 2.0 * macs * num_params * steps


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- children
def child_peak(out: Path) -> None:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = np.inf
    for _ in range(8):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    out.write_text(json.dumps({"gemm_n": n, "gflops": 2 * n**3 / best / 1e9}))


def _setup(hidden: int, epochs: int):
    from trainmap.presets import TORCH_DEFAULTS, digits_mlp  # the setup the recorded numbers were measured on

    return digits_mlp(hidden=hidden, epochs=epochs, **TORCH_DEFAULTS)


def child_run(which: str, hidden: int, epochs: int, out: Path, sv_path: Path, engine_kw: dict) -> None:
    import jax
    import jax.numpy as jnp

    setup = _setup(hidden, epochs)
    recipe, theta0 = setup.recipe, jnp.asarray(setup.theta0)
    info: dict = {"num_params": recipe.num_params, "num_steps": recipe.num_steps,
                  "devices": [str(d) for d in jax.devices()]}
    rss0 = vm_hwm_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    if which == "baseline":
        J = np.asarray(jax.jit(jax.jacfwd(recipe.train))(theta0))
    else:
        from trainmap.jacobian.exact import exact_jacobian, plan_engine

        kw = dict(engine_kw)
        stream = kw.pop("stream", False)
        dtype = kw.pop("dtype", "float32")
        if stream:  # J streamed into a file beside the report, not held in memory
            kw["out"] = str(out) + ".stream.npy"
        J = exact_jacobian(recipe, theta0, progress=False, dtype=dtype, **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_peak = vm_hwm_bytes()
    if which != "baseline":  # the plan the call used, read after the timing (its checks are cached)
        kw.pop("out", None)
        plan = plan_engine(recipe, theta0, **kw)
        info["plan"] = {"mode": plan.mode, "primal": plan.primal, "rules": plan.rules, "chunk": plan.chunk,
                        "n_devices": plan.n_devices, "residual_MiB": plan.residual_bytes / 2**20}
    info.update(wall_s=wall, cpu_s=cpu, peak_rss_bytes=rss_peak, rss_before_bytes=rss0,
                finite=bool(np.isfinite(J).all()))
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats:  # accelerators: the device's own peak (host RSS does not see it)
        info["device_peak_bytes"] = int(stats.get("peak_bytes_in_use", 0))
    sv = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    np.save(sv_path, sv)
    np.save(str(sv_path).replace(".sv.npy", ".J.npy"), J)
    out.write_text(json.dumps(info))


def run_child(args: list[str], env_extra: dict | None = None) -> tuple[dict, float]:
    """Run this script as a child; returns (its JSON report, its ru_maxrss in bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = {**os.environ, **(env_extra or {})}
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args, "--child-out", str(out)]
        subprocess.run(cmd, check=True, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rep = json.loads(out.read_text())
        sv_file = Path(str(out) + ".sv.npy")
        if sv_file.exists():
            rep["_sv"] = np.load(sv_file)
            rep["_J"] = np.load(str(out) + ".J.npy")
        # RUSAGE_CHILDREN holds the largest child so far: it only tells us about a child that set a
        # new maximum, so VmHWM from inside the child is the number we report.
        return rep, float(max(after, before)) * 1024


def sigma_agreement(s: np.ndarray, s_ref: np.ndarray, floor: float = SIGMA_FLOOR) -> dict:
    """max_i |σ_i − σ_i^ref| / σ_i^ref over σ_i^ref ≥ floor (both sorted descending)."""
    keep = s_ref >= floor
    rel = np.abs(s[keep] - s_ref[keep]) / s_ref[keep]
    worst = int(np.flatnonzero(keep)[np.argmax(rel)])
    return {"max_rel_diff": float(rel.max()), "at_index": worst, "sigma_there": float(s_ref[worst]),
            "median_rel_diff": float(np.median(rel)), "compared": int(keep.sum()),
            "excepted_below_floor": int((~keep).sum()), "floor": floor}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="MLP 32, 5 epochs instead of MLP 64, 25 epochs")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--engine-devices", type=int, default=1,
                    help="host devices for the engine's process (XLA_FLAGS "
                         "--xla_force_host_platform_device_count); 0: one per CPU core; "
                         "default 1, the same JAX setup as the baseline")
    ap.add_argument("--chunk-size", type=int, default=0, help="engine chunk size (0: automatic)")
    ap.add_argument("--mode", default="auto", choices=["auto", "forward", "reverse"])
    ap.add_argument("--primal", default="auto", choices=["auto", "shared", "per_chunk"])
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of (engine, streamed engine, baseline); ratios are reported per "
                         "round and as their median (the machine's speed drifts by several %%)")
    ap.add_argument("--skip-streamed", action="store_true",
                    help="do not run the engine a second time with J streamed to disk (out=)")
    ap.add_argument("--float64-reference", action="store_true",
                    help="also compute J in float64 (engine) and compare both float32 spectra to it")
    ap.add_argument("--tag", default="cpu", help="results file suffix, e.g. cpu or gpu")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: bench/results/...)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--engine-kw", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    size = dict(QUICK if a.quick else FULL)
    if a.hidden:
        size["hidden"] = a.hidden
    if a.epochs:
        size["epochs"] = a.epochs

    if a.child:
        sys.path.insert(0, str(HERE.parent / "src"))
        if a.child == "peak":
            child_peak(a.child_out)
        else:
            child_run(a.child, size["hidden"], size["epochs"], a.child_out,
                      Path(str(a.child_out) + ".sv.npy"), json.loads(a.engine_kw))
        return

    n_dev = a.engine_devices or (os.cpu_count() or 1)
    engine_kw = {"mode": a.mode, "primal": a.primal}
    if a.chunk_size:
        engine_kw["chunk_size"] = a.chunk_size
    size_args = ["--hidden", str(size["hidden"]), "--epochs", str(size["epochs"])]
    flags = os.environ.get("XLA_FLAGS", "")
    engine_env = ({"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n_dev}".strip()}
                  if n_dev > 1 else {})
    load_before = os.getloadavg()
    t_start = time.time()

    print(f"[bench] MLP 64→{size['hidden']}→10, {size['epochs']} epochs; engine on {n_dev} host device(s)")
    peak, _ = run_child(["peak"])
    print(f"[bench] measured float32 GEMM peak: {peak['gflops']:.1f} GFLOP/s")
    rounds: list[dict] = []
    for rnd in range(a.repeat):
        tag = f" (round {rnd + 1}/{a.repeat})" if a.repeat > 1 else ""
        e, _ = run_child(["engine", *size_args, "--engine-kw", json.dumps(engine_kw)], engine_env)
        print(f"[bench] engine{tag}:   {e['wall_s']:8.1f} s wall, {e['cpu_s']:8.1f} s CPU, "
              f"peak RSS {e['peak_rss_bytes'] / 2**20:7.0f} MiB  {e.get('plan')}")
        st = None
        if not a.skip_streamed:
            st, _ = run_child(["engine", *size_args, "--engine-kw",
                               json.dumps({**engine_kw, "stream": True})], engine_env)
            print(f"[bench] engine, J streamed to disk (out=){tag}: {st['wall_s']:8.1f} s wall, "
                  f"{st['cpu_s']:8.1f} s CPU, peak RSS {st['peak_rss_bytes'] / 2**20:7.0f} MiB")
        b = None
        if not a.skip_baseline:
            b, _ = run_child(["baseline", *size_args])
            print(f"[bench] baseline{tag}: {b['wall_s']:8.1f} s wall, {b['cpu_s']:8.1f} s CPU, "
                  f"peak RSS {b['peak_rss_bytes'] / 2**20:7.0f} MiB  (jax.jacfwd)")
        if rnd == 0:
            eng, streamed, base = e, st, b
        rounds.append({name: ({k: v for k, v in rep.items() if not k.startswith("_")}
                              if rep is not None else None)
                       for name, rep in (("engine", e), ("engine_streamed", st), ("baseline", b))})
    ref64 = None
    if a.float64_reference:
        ref64, _ = run_child(["engine", *size_args, "--engine-kw",
                              json.dumps({**engine_kw, "dtype": "float64"})], engine_env)
        print(f"[bench] float64 reference (engine): {ref64['wall_s']:8.1f} s wall")
    load_after = os.getloadavg()

    P, T = eng["num_params"], eng["num_steps"]
    flops = tangent_flops([64, size["hidden"], 10], 64, P, T)
    result: dict = {
        "benchmark": "exact training Jacobian",
        "command": " ".join(["python", "bench/exact_jacobian.py", *sys.argv[1:]]),
        "case": {"model": f"mlp 64-{size['hidden']}-10 gelu", "epochs": size["epochs"], "batch": 64,
                 "optimizer": "sgd momentum 0.9, cosine lr 0.1", "num_params": P, "num_steps": T,
                 "dtype": "float32"},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_avg_before": load_before,
                    "load_avg_after": load_after},
        "peak": {"definition": "best of 8 float32 2048x2048x2048 matmuls (jnp, all cores), "
                               "measured in this run", **peak},
        "engine": {k: v for k, v in eng.items() if not k.startswith("_")},
        "engine_streamed": ({k: v for k, v in streamed.items() if not k.startswith("_")}
                            if streamed is not None else None),
        "engine_settings": {**engine_kw, "host_devices": n_dev},
        "tangent_flops": flops,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)),
    }
    for name, rep in (("engine", eng), ("engine_streamed", streamed), ("baseline", base)):
        if rep is not None:
            result.setdefault("flop_rate", {})[name] = {
                "gflops": flops / rep["wall_s"] / 1e9,
                "fraction_of_peak": flops / rep["wall_s"] / 1e9 / peak["gflops"],
                "gflops_per_cpu_second": flops / rep["cpu_s"] / 1e9}
    if base is not None:
        result["baseline"] = {k: v for k, v in base.items() if not k.startswith("_")}
        result["ratios"] = {"speedup_wall": base["wall_s"] / eng["wall_s"],
                            "speedup_cpu": base["cpu_s"] / eng["cpu_s"],
                            "peak_rss_engine_over_baseline": eng["peak_rss_bytes"] / base["peak_rss_bytes"]}
        result["sigma"] = sigma_agreement(eng["_sv"], base["_sv"])
        result["sigma_by_floor"] = {f"{f:g}": sigma_agreement(eng["_sv"], base["_sv"], f)["max_rel_diff"]
                                    for f in (1e-6, 1e-5, 1e-4, 1e-3)}
        dJ = np.abs(eng["_J"].astype(np.float64) - base["_J"])
        result["J_difference"] = {"max_abs": float(dJ.max()), "max_abs_J": float(np.abs(base["_J"]).max()),
                                  "fro_rel": float(np.linalg.norm(dJ) / np.linalg.norm(base["_J"])),
                                  "float32_resolution_of_sigma": float(np.finfo(np.float32).eps
                                                                       * base["_sv"][0])}
        inc = lambda r: r["peak_rss_bytes"] - r["rss_before_bytes"]  # noqa: E731
        result["ratios"]["peak_rss_increase_engine_over_baseline"] = inc(eng) / inc(base)
        result["acceptance"] = {
            "speedup_at_least_2x": result["ratios"]["speedup_wall"] >= 2.0,
            "memory_at_most_half": result["ratios"]["peak_rss_engine_over_baseline"] <= 0.5,
            "sigma_within_1e-4": result["sigma"]["max_rel_diff"] <= 1e-4}
        if streamed is not None:
            r = result["ratios"]
            r["speedup_wall_streamed"] = base["wall_s"] / streamed["wall_s"]
            r["peak_rss_streamed_over_baseline"] = streamed["peak_rss_bytes"] / base["peak_rss_bytes"]
            r["peak_rss_increase_streamed_over_baseline"] = inc(streamed) / inc(base)
            result["sigma_streamed"] = sigma_agreement(streamed["_sv"], base["_sv"])
            result["streamed_equals_in_memory"] = bool(np.array_equal(streamed["_J"], eng["_J"]))
            result["acceptance"].update({
                "streamed_speedup_at_least_2x": r["speedup_wall_streamed"] >= 2.0,
                "streamed_memory_at_most_half": r["peak_rss_streamed_over_baseline"] <= 0.5})
        if ref64 is not None:  # how far each float32 spectrum is from the float64 one
            floors = (1e-6, 1e-5, 1e-4, 1e-3)
            result["vs_float64"] = {
                name: {f"{f:g}": sigma_agreement(rep["_sv"], ref64["_sv"], f)["max_rel_diff"]
                       for f in floors}
                for name, rep in (("engine", eng), ("baseline", base))}
            print(f"[bench] max rel |σ − σ_float64| by floor: {result['vs_float64']}")
        per_round = []
        for rd in rounds:
            e, st, b = rd["engine"], rd["engine_streamed"], rd["baseline"]
            per_round.append({"speedup_wall": b["wall_s"] / e["wall_s"],
                              "peak_rss_engine_over_baseline": e["peak_rss_bytes"] / b["peak_rss_bytes"],
                              **({"speedup_wall_streamed": b["wall_s"] / st["wall_s"],
                                  "peak_rss_streamed_over_baseline":
                                      st["peak_rss_bytes"] / b["peak_rss_bytes"]} if st else {})})
        result["rounds"] = rounds
        result["ratios_per_round"] = per_round
        result["ratios_median"] = {k: float(np.median([pr[k] for pr in per_round]))
                                   for k in per_round[0]}
        if len(rounds) > 1:  # acceptance on the medians over rounds
            med = result["ratios_median"]
            result["acceptance"].update({
                "speedup_at_least_2x": med["speedup_wall"] >= 2.0,
                "memory_at_most_half": med["peak_rss_engine_over_baseline"] <= 0.5})
            if "speedup_wall_streamed" in med:
                result["acceptance"].update({
                    "streamed_speedup_at_least_2x": med["speedup_wall_streamed"] >= 2.0,
                    "streamed_memory_at_most_half": med["peak_rss_streamed_over_baseline"] <= 0.5})
            print(f"[bench] per round: {[{k: round(v, 2) for k, v in pr.items()} for pr in per_round]}")
            print(f"[bench] medians over {len(rounds)} rounds: "
                  f"{ {k: round(v, 3) for k, v in med.items()} }")
        r = result["ratios"]
        print(f"[bench] speed-up {r['speedup_wall']:.2f}x wall ({r['speedup_cpu']:.2f}x CPU time); "
              f"peak memory ratio {r['peak_rss_engine_over_baseline']:.2f}; "
              f"max rel |Δσ| {result['sigma']['max_rel_diff']:.2e} "
              f"(σ ≥ {SIGMA_FLOOR:g}; {result['sigma']['compared']} compared); by floor "
              f"{ {k: f'{v:.1e}' for k, v in result['sigma_by_floor'].items()} }; memory increase ratio "
              f"{r['peak_rss_increase_engine_over_baseline']:.2f}")
        if streamed is not None:
            print(f"[bench] J streamed to disk: speed-up {r['speedup_wall_streamed']:.2f}x wall; peak "
                  f"memory ratio {r['peak_rss_streamed_over_baseline']:.2f}; identical matrix: "
                  f"{result['streamed_equals_in_memory']}")
    fr = result["flop_rate"]["engine"]
    print(f"[bench] engine tangent FLOP rate {fr['gflops']:.1f} GFLOP/s = "
          f"{100 * fr['fraction_of_peak']:.0f}% of measured peak ({flops / 1e12:.2f} TFLOP counted)")
    # a run without the streamed engine does not overwrite the full benchmark's file
    variant = ("_quick" if a.quick else "") + ("_skip_streamed" if a.skip_streamed else "")
    out = a.out or HERE / "results" / f"exact_jacobian{variant}_{a.tag}.json"
    sys.path.insert(0, str(HERE.parent / "src"))
    from trainmap._io import atomic_write_json

    atomic_write_json(out, result)
    print(f"[bench] wrote {out.relative_to(HERE.parent) if out.is_relative_to(HERE.parent) else out}")


if __name__ == "__main__":
    main()
