"""Benchmark: the exact training Jacobian of a PyTorch run, three ways, in one run.

Usage::

    python bench/torch_backend.py               # MLP 64-64-10, 5 epochs (125 steps): about 2 min
    python bench/torch_backend.py --epochs 25   # the reference run (625 steps)
    python bench/torch_backend.py --micro       # the chunk-size sweep and torch.func.linearize, 20 steps

The setup is the published digits MLP (GELU, tanh form, SGD momentum 0.9, cosine lr from 0.1, batch 64),
θ₀ and batch order taken from trainmap's JAX preset, the same weights loaded into an
``nn.Sequential`` for the torch routes. Every route runs in its own child process, one after the
other:

* ``torch``: ``trainmap.torch.torch_recipe`` (the user's ``torch.optim.SGD`` and
  ``CosineAnnealingLR``) through ``trainmap.jacobian.exact_jacobian``, default settings;
* ``naive``: what a user writes by hand: a functional copy of the loop with ``torch.func``
  (``functional_call``, ``grad``) and ``torch.func.jacfwd`` of it (every column in one vmap);
* ``jax``: trainmap's JAX engine on the JAX recipe of the same run.

Each child reports wall and CPU time of the call that produces J and its peak RSS (``VmHWM``); the
parent prints the ratios, how far the three J agree (relative Frobenius), and writes
``bench/results/torch_backend[_E<epochs>]_cpu.json`` atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from exact_jacobian import cpu_model, vm_hwm_bytes  # noqa: E402


def _setup(epochs: int):
    from trainmap.presets import digits_mlp

    return digits_mlp(hidden=64, epochs=epochs)


def _torch_model(setup):
    """nn.Sequential(Linear, GELU, Linear) holding the JAX preset's θ₀ (w: (in, out) -> weight (out, in))."""
    import torch
    from torch import nn

    params = setup.recipe.unravel(setup.theta0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(approximate="tanh"), nn.Linear(64, 10))  # flax's nn.gelu
    with torch.no_grad():
        for lin, layer in zip((model[0], model[2]), params):
            lin.weight.copy_(torch.tensor(np.asarray(layer["w"]).T))
            lin.bias.copy_(torch.tensor(np.asarray(layer["b"])))
    return model


def _to_jax_perm(model) -> np.ndarray:
    """perm with theta_jax = theta_torch[perm] (trainmap's MLP flattens each layer as b, then w (in, out))."""
    start, perm = 0, []
    for lin in (model[0], model[2]):
        w = np.arange(start, start + lin.weight.numel()).reshape(lin.weight.shape)
        b = np.arange(start + w.size, start + w.size + lin.bias.numel())
        perm += [b, w.T.reshape(-1)]
        start += w.size + b.size
    return np.concatenate(perm)


def child(which: str, epochs: int, out: Path) -> None:
    setup = _setup(epochs)
    recipe = setup.recipe
    x, y, batches, T = np.asarray(recipe.x), np.asarray(recipe.y), np.asarray(recipe.batches), recipe.num_steps
    info: dict = {"num_params": recipe.num_params, "num_steps": T}
    if which == "jax":
        import jax.numpy as jnp

        from trainmap.jacobian.exact import exact_jacobian

        rss0 = vm_hwm_bytes()
        t0, c0 = time.perf_counter(), time.process_time()
        J = exact_jacobian(recipe, jnp.asarray(setup.theta0), progress=False)
        perm = None
    else:
        import torch
        from torch import nn

        torch.set_num_threads(os.cpu_count() or 1)
        model = _torch_model(setup)
        perm = _to_jax_perm(model)
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        rss0 = vm_hwm_bytes()
        t0, c0 = time.perf_counter(), time.process_time()
        if which == "torch":
            from trainmap.jacobian.exact import exact_jacobian
            from trainmap.torch import torch_recipe

            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T)
            trecipe, theta0 = torch_recipe(model, opt, nn.CrossEntropyLoss(), xt, yt, batches, scheduler=sched)
            J = exact_jacobian(trecipe, theta0, progress=False)
            info["chunk"] = trecipe.default_chunk(2 * 2**30)
        else:  # the hand-written route
            from torch.func import functional_call, grad, jacfwd

            names = [n for n, _ in model.named_parameters()]
            shapes = [p.shape for p in model.parameters()]
            sizes = [p.numel() for p in model.parameters()]
            lrs = [0.05 * (1 + np.cos(np.pi * t / T)) for t in range(T)]
            bt = torch.tensor(batches)

            def train(theta):
                params = [c.view(s) for c, s in zip(torch.split(theta, sizes), shapes)]
                buf = None
                for t in range(T):
                    xb, yb = xt[bt[t]], yt[bt[t]]
                    g = grad(lambda p: nn.functional.cross_entropy(
                        functional_call(model, dict(zip(names, p)), (xb,)), yb))(params)
                    buf = g if buf is None else [0.9 * b + gi for b, gi in zip(buf, g)]
                    params = [p - lrs[t] * b for p, b in zip(params, buf)]
                return torch.cat([p.reshape(-1) for p in params])

            theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            J = jacfwd(train)(theta0).numpy()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    info.update(wall_s=wall, cpu_s=cpu, peak_rss_bytes=vm_hwm_bytes(), rss_before_bytes=rss0)
    J = np.asarray(J)
    if perm is not None:  # into the JAX layout, to compare
        J = J[np.ix_(perm, perm)]
    np.save(str(out) + ".J.npy", J)
    out.write_text(json.dumps(info))


def micro(steps: int = 20) -> dict:
    """Where the backend's time goes, on the first ``steps`` steps of the reference run: the time per
    step and tangent of one vmapped jvp through the loop at several widths K (K = P is what
    ``jacfwd`` does), and one step's ``torch.func.linearize`` (trace once, then apply) against its
    ``jvp``, both at 128 tangents."""
    import torch
    from torch import nn
    from torch.func import jvp, linearize, vmap

    from trainmap.torch import torch_recipe

    torch.set_num_threads(os.cpu_count() or 1)
    setup = _setup(1)
    model = _torch_model(setup)
    recipe = setup.recipe
    batches = np.asarray(recipe.batches)[:steps]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    r, theta0 = torch_recipe(model, opt, nn.CrossEntropyLoss(), torch.tensor(np.asarray(recipe.x)),
                             torch.tensor(np.asarray(recipe.y), dtype=torch.long), batches)
    P, th = r.num_params, r.theta_tensor(theta0)
    sweep = {}
    for K in (64, 256, 512, 1024, P):
        V = torch.eye(P)[:K]
        t0 = time.perf_counter()
        vmap(lambda v: jvp(r._train, (th,), (v,))[1])(V)
        sweep[str(K)] = (time.perf_counter() - t0) / steps / K * 1e6
        print(f"[bench] K = {K:5d}: {sweep[str(K)]:6.1f} µs per step and tangent", flush=True)

    def one_step(z: torch.Tensor) -> torch.Tensor:  # (θ, momentum) -> the next (θ, momentum)
        p, buf = r.split(z[:P]), r.split(z[P:])
        p2, s2, _ = r.step(1, p, [[b] for b in buf])
        return torch.cat([r.flat(p2), r.flat([s[0] for s in s2])])

    z = torch.cat([th, torch.zeros(P)])
    Z = torch.eye(2 * P)[:128]
    times = {}
    for name, fn in (("linearize_trace_s", lambda: linearize(one_step, z)),):
        t0 = time.perf_counter()
        _, lin = fn()
        times[name] = time.perf_counter() - t0
    for name, fn in (("linearized_apply_s", lambda: vmap(lin)(Z)),
                     ("jvp_step_s", lambda: vmap(lambda v: jvp(one_step, (z,), (v,))[1])(Z))):
        fn()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        times[name] = (time.perf_counter() - t0) / 5
    print(f"[bench] one step, 128 tangents: linearize traces in {times['linearize_trace_s']:.3f} s, then "
          f"applies in {times['linearized_apply_s'] * 1e3:.1f} ms; jvp {times['jvp_step_s'] * 1e3:.1f} ms")
    return {"steps": steps, "num_params": P, "us_per_step_and_tangent": sweep, "one_step_128_tangents": times}


def run_child(which: str, epochs: int) -> tuple[dict, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", which, "--epochs", str(epochs),
                        "--child-out", str(out)], check=True)
        return json.loads(out.read_text()), np.load(str(out) + ".J.npy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--micro", action="store_true", help="only the chunk-size sweep and the linearize measurement")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))
    if a.child:
        child(a.child, a.epochs, a.child_out)
        return
    if a.micro:
        from trainmap._io import atomic_write_json

        res = {"benchmark": "torch backend: chunk width and linearize", "command": "python bench/torch_backend.py --micro",
               "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_before": os.getloadavg()},
               **micro()}
        atomic_write_json(a.out or HERE / "results" / "torch_backend_micro_cpu.json", res)
        return
    load_before = os.getloadavg()
    reps, Js = {}, {}
    for which in ("torch", "jax") + (() if a.skip_naive else ("naive",)):
        reps[which], Js[which] = run_child(which, a.epochs)
        r = reps[which]
        print(f"[bench] {which:6s} {r['wall_s']:8.1f} s wall {r['cpu_s']:8.1f} s CPU  "
              f"peak RSS {r['peak_rss_bytes'] / 2**20:6.0f} MiB", flush=True)
    ref = Js["jax"].astype(np.float64)
    agree = {w: float(np.linalg.norm(Js[w] - ref) / np.linalg.norm(ref)) for w in Js if w != "jax"}
    t = reps["torch"]
    ratios = {"torch_speedup_over_jax_engine": reps["jax"]["wall_s"] / t["wall_s"],
              "torch_peak_rss_over_jax_engine": t["peak_rss_bytes"] / reps["jax"]["peak_rss_bytes"]}
    if "naive" in reps:
        n = reps["naive"]
        ratios.update(torch_speedup_over_naive=n["wall_s"] / t["wall_s"],
                      torch_cpu_ratio_over_naive=n["cpu_s"] / t["cpu_s"],
                      torch_peak_rss_over_naive=t["peak_rss_bytes"] / n["peak_rss_bytes"])
    result = {"benchmark": "exact training Jacobian of a PyTorch run",
              "command": f"python bench/torch_backend.py --epochs {a.epochs}" + (" --skip-naive" if a.skip_naive else ""),
              "case": {"model": "mlp 64-64-10 gelu_tanh (nn.Sequential)", "epochs": a.epochs, "batch": 64,
                       "optimizer": "SGD momentum 0.9, cosine lr from 0.1", "num_params": t["num_params"],
                       "num_steps": t["num_steps"], "dtype": "float32"},
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
              "routes": reps, "ratios": ratios, "J_rel_fro_vs_jax_engine": agree,
              "acceptance": {"torch_faster_than_naive": ratios.get("torch_speedup_over_naive", 0) > 1}}
    print(f"[bench] ratios {json.dumps({k: round(v, 3) for k, v in ratios.items()})}")
    print(f"[bench] J relative Frobenius difference to the JAX engine's: {agree}")
    from trainmap._io import atomic_write_json

    out = a.out or HERE / "results" / f"torch_backend{'' if a.epochs == 5 else f'_E{a.epochs}'}_cpu.json"
    atomic_write_json(out, result)
    print(f"[bench] wrote {out.relative_to(HERE.parent) if out.is_relative_to(HERE.parent) else out}")


if __name__ == "__main__":
    main()
