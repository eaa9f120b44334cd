"""``trainmap jacobian``: the exact training Jacobian of the reference (or a configured) MLP."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer

from trainmap.commands._common import run_lens
from trainmap.commands._recipe import builtin_run, load_recipe
from trainmap.optimizers import OPTIMIZERS

app = typer.Typer(help="Training-Jacobian lens: J = dθ_T/dθ₀, its SVD and chaotic/bulk/stable regions.")


def _choices(name: str, values: Any) -> type[Enum]:
    """A str Enum of option choices (typer shows them as ``<a|b|c>``)."""
    return Enum(name, {v: v for v in values}, type=str)


# Choice lists. Their sources of truth import JAX, which ``trainmap --help`` should not pay for;
# tests/test_cli_jacobian.py checks that each list equals its source.
#: trainmap.optimizers.OPTIMIZERS, read directly (that module imports no JAX)
Optimizer = _choices("Optimizer", OPTIMIZERS)
Gelu = _choices("Gelu", ("tanh", "erf"))
#: trainmap.models.mlp.INITS
Init = _choices("Init", ("authors", "flax", "torch"))
#: trainmap.data.digits.SPLITS
Split = _choices("Split", ("sklearn", "permutation"))
DType = _choices("DType", ("float32", "float64"))
#: trainmap.jacobian.exact.plan.MODES / PRIMALS
Mode = _choices("Mode", ("auto", "forward", "reverse"))
Primal = _choices("Primal", ("auto", "shared", "per_chunk"))
Method = _choices("Method", ("exact", "lanczos", "slq"))
#: trainmap.jacobian.matrix_free.pipeline.BASES
Basis = _choices("Basis", ("auto", "memory", "disk", "half", "none"))


@app.callback(invoke_without_command=True)
def jacobian(
    ctx: typer.Context,
    hidden: int = typer.Option(64, help="Hidden width of the MLP 64→hidden→10."),
    epochs: int = typer.Option(25, help="Training epochs over the 1,600 training digits."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate, cosine-decayed to 0 (default: 0.1 for "
                                       "sgd, 3e-3 for adam, as the authors)."),
    optimizer: Optimizer = typer.Option(Optimizer.sgd, help="sgd (momentum 0.9) or adam."),
    activation: str = typer.Option("gelu", help="gelu (see --gelu), relu, tanh, or a registered activation."),
    gelu: Gelu = typer.Option(Gelu.tanh, help="The GELU of --activation gelu: tanh approximation (flax's "
                              "nn.gelu, the authors' code) or exact erf (PyTorch's default)."),
    init: Init = typer.Option(Init.authors, help="authors: LeCun-normal weights, N(0, 1/64) biases (their "
                              "code); flax: nn.Dense defaults (zero biases); torch: nn.Linear's uniform."),
    split: Split = typer.Option(Split.sklearn, help="sklearn: train_test_split(test_size=197, random_state=0) "
                                "(their code); permutation: trainmap's earlier seeded permutation."),
    shuffle: bool = typer.Option(False, "--shuffle/--no-shuffle", help="A new batch order every epoch "
                                 "(default: the same order every epoch, as the authors)."),
    seed: int = typer.Option(0, help="Seed of the initialisation."),
    data_seed: Optional[int] = typer.Option(None, help="Seed of the per-epoch batch order with --shuffle "
                                            "(default: --seed)."),
    eps_root: Optional[float] = typer.Option(None, help="Adam's eps_root (default 1e-8); > 0 keeps J finite "
                                             "where a gradient is exactly 0."),
    dtype: DType = typer.Option(DType.float32, help="Precision of the Jacobian and its SVD."),
    bulk_tol: Optional[List[float]] = typer.Option(
        None, help="Bulk tolerance; give it more than once for several. The regions use the largest; "
                   "summary.json counts |σ−1| ≤ tol for each (default 0.1, 0.01, 0.001, as the paper)."),
    chunk_size: int = typer.Option(0, help="Tangents per chunk (0: automatic, see the engine docs)."),
    memory_gb: Optional[float] = typer.Option(
        None, help="Memory budget (GiB). exact: for the stored step linearisations plus one chunk (default 2). "
        "lanczos/slq: for the process's peak resident memory (default 80% of the machine); the Krylov basis "
        "moves to disk when it would not fit."),
    basis: Basis = typer.Option(Basis.auto, help="lanczos/slq: keep the Krylov basis in memory, on disk (the "
                                "checkpoint files), or auto (memory while it fits --memory-gb); slq: half "
                                "keeps all but the last two blocks in float16, in memory (a quarter of the "
                                "memory; the loss of orthogonality is bounded and reported), none keeps three "
                                "blocks only (counts and top σ, no vectors; the counts can be biased)."),
    mode: Mode = typer.Option(Mode.auto, help="exact: forward (columns of J), reverse (rows) or auto "
                              "(forward)."),
    primal: Primal = typer.Option(Primal.auto, help="exact: shared (train once, store every step's "
                                  "linearisation), per_chunk (recompute training per chunk) or auto."),
    out: Path = typer.Option(Path("results/jacobian"), help="Results folder."),
    save_vectors: bool = typer.Option(True, "--save-vectors/--no-save-vectors", help="exact: write the singular "
                                      "vectors svd_U.npy and svd_Vt.npy (2 P² floats; cos(u, v) and the "
                                      "change's projection are written either way)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out."),
    overwrite: bool = typer.Option(False, help="Replace a previous results folder at --out."),
    method: Method = typer.Option(Method.exact, help="exact (full J and SVD), or matrix-free: lanczos "
                                  "(extreme singular triplets) or slq (spectral density and region counts)."),
    rank: int = typer.Option(20, help="lanczos/slq: extreme singular triplets reported at each end."),
    probes: int = typer.Option(8, help="lanczos/slq: Rademacher probe vectors (the Lanczos block size)."),
    lanczos_steps: int = typer.Option(0, help="lanczos/slq: block Lanczos steps (0: 30 for slq, "
                                      "max(30, 5·rank/probes) for lanczos)."),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Your own run instead of the digits MLP: path/to/file.py:function or "
        "package.module:function returning (recipe, theta0); its file hash and arguments go to config.json."),
    recipe_arg: Optional[List[str]] = typer.Option(
        None, "--recipe-arg", help="name=value passed to the --recipe function (repeatable; values read as JSON)."),
    local_processes: int = typer.Option(0, help="lanczos/slq: run as N processes of one jax.distributed job on "
                                        "this machine (CPU collectives through gloo), the probe block split "
                                        "between them."),
    coordinator: Optional[str] = typer.Option(None, help="lanczos/slq: host:port of process 0 of a "
                                              "jax.distributed job (with --num-processes and --process-id)."),
    num_processes: Optional[int] = typer.Option(None, help="lanczos/slq: processes in the jax.distributed job."),
    process_id: Optional[int] = typer.Option(None, help="lanczos/slq: this process's index in the job (0 writes "
                                             "the results)."),
    distributed: bool = typer.Option(False, help="lanczos/slq: join a jax.distributed job detected from the "
                                     "environment (SLURM, Open MPI); see docs/distributed.md."),
) -> None:
    """Run the exact training-Jacobian analysis (no options: the reference experiment)."""
    exact_memory_gb = 2.0 if memory_gb is None else memory_gb  # the exact engine's default budget
    tols = sorted(set(bulk_tol), reverse=True) if bulk_tol else [0.1, 0.01, 0.001]
    if min(tols) <= 0:
        typer.secho(f"error: --bulk-tol must be > 0, got {min(tols)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    bulk_tol = tols[0]
    if data_seed is not None and not shuffle:
        typer.secho("error: --data-seed sets the batch order of --shuffle; add --shuffle or drop it",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    recipe_kwargs = dict(hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer.value,
                         activation="gelu_tanh" if activation == "gelu" and gelu is Gelu.tanh else activation,
                         init=init.value, split=split.value, shuffle=shuffle, seed=seed, data_seed=data_seed,
                         eps_root=eps_root)
    if ctx.invoked_subcommand is not None:
        from trainmap.commands.jacobian_experiments import JacobianSetup

        if recipe:
            typer.secho("error: --recipe is read by `trainmap jacobian` itself (exact, lanczos, slq), not yet by "
                        f"`trainmap jacobian {ctx.invoked_subcommand}`; call the experiment's Python function with "
                        "your recipe", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)

        ctx.obj = JacobianSetup(recipe_kwargs, dtype=dtype.value, bulk_tol=bulk_tol, out=out,
                                chunk_size=chunk_size or None, memory_gb=exact_memory_gb)
        return
    _refuse_ignored(ctx, method)
    if local_processes:
        raise typer.Exit(_launch_local(local_processes))
    if distributed or any(v is not None for v in (coordinator, num_processes, process_id)):
        from trainmap.jacobian.matrix_free.distributed import initialize

        run_lens(lambda: initialize(coordinator, num_processes, process_id))
    run = _user_run(ctx, recipe, recipe_arg) if recipe else run_lens(lambda: builtin_run(recipe_kwargs))
    if method is not Method.exact:
        if _serves(run, seed=seed, probes=probes, dtype=dtype.value):
            return
        _run_matrix_free(method.value, run, seed=seed, dtype=dtype.value, bulk_tol=bulk_tol, out=out,
                         resume=resume, overwrite=overwrite, rank=rank, probes=probes, steps=lanczos_steps,
                         memory_gb=memory_gb, basis=basis.value)
        return
    from trainmap.jacobian.analysis import analyze
    from trainmap.jacobian.regions import Thresholds

    summary = run_lens(lambda: analyze(
        run.recipe, run.theta0, out, eval_sets=run.eval_sets,
        dtype=dtype.value, thresholds=Thresholds.symmetric(bulk_tol), bulk_tolerances=tols,
        chunk_size=chunk_size or None,
        memory_budget_gb=exact_memory_gb, resume=resume, overwrite=overwrite, mode=mode.value,
        primal=primal.value, config=run.source and {"recipe_source": run.source}, save_vectors=save_vectors))
    _write_report(out)
    _print_summary(summary, out)


#: options that build the digits MLP (and so mean nothing with --recipe)
SETUP_OPTIONS = ("hidden", "epochs", "batch_size", "lr", "optimizer", "activation", "gelu", "init", "split",
                 "shuffle", "data_seed", "eps_root")


def _given(ctx: typer.Context, names: Any) -> list[str]:
    return [n for n in names
            if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")]


def _user_run(ctx: typer.Context, spec: str, args: Optional[List[str]]) -> Any:
    """The run of ``--recipe``; one error line for the digits-MLP options it makes meaningless."""
    given = _given(ctx, SETUP_OPTIONS)
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        one = len(given) == 1
        typer.secho(f"error: {flags} {'sets' if one else 'set'} up the digits MLP and {'is' if one else 'are'} "
                    "not read with --recipe; set it in your recipe function (or pass it with --recipe-arg)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return run_lens(lambda: load_recipe(spec, args or []))


#: options that only one family of methods reads
EXACT_ONLY = ("chunk_size", "mode", "primal", "save_vectors")
MATRIX_FREE_ONLY = ("rank", "probes", "lanczos_steps", "basis", "local_processes", "coordinator",
                    "num_processes", "process_id", "distributed")


def _launch_local(n: int) -> int:
    """``--local-processes N``: this command line again, as N processes of one job."""
    import sys

    from trainmap.commands._common import usage_error
    from trainmap.jacobian.matrix_free.distributed import launch_local

    argv = list(sys.argv[1:])
    flag = next((i for i, a in enumerate(argv) if a == "--local-processes" or a.startswith("--local-processes=")),
                None)
    if flag is None:
        usage_error("--local-processes relaunches the trainmap command line; run it from a shell")
    del argv[flag:flag + (1 if "=" in argv[flag] else 2)]  # type: ignore[index]
    if any(a.split("=")[0] in ("--coordinator", "--num-processes", "--process-id", "--distributed") for a in argv):
        usage_error("--local-processes starts its own job; drop --coordinator/--num-processes/--process-id/"
                    "--distributed")
    return run_lens(lambda: launch_local(n, argv))


def _serves(run: Any, *, seed: int, probes: int, dtype: str) -> bool:
    """True on a process other than 0 of a jax.distributed job, after it has served process 0's products."""
    import jax

    if jax.process_count() == 1 or jax.process_index() == 0:
        return False
    from trainmap.jacobian.matrix_free.pipeline import serve_scale

    run_lens(lambda: serve_scale(run.recipe, run.theta0, probes=probes, seed=seed, dtype=dtype))
    return True


def _refuse_ignored(ctx: typer.Context, method: "Method") -> None:
    """One error line for an option the chosen --method would silently ignore."""
    ignored = MATRIX_FREE_ONLY if method is Method.exact else EXACT_ONLY
    given = _given(ctx, ignored)
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        other = "--method lanczos|slq" if method is Method.exact else "--method exact"
        typer.secho(f"error: {flags} {'is' if len(given) == 1 else 'are'} not read by --method {method.value}; "
                    f"drop {'it' if len(given) == 1 else 'them'} or use {other}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


def _run_matrix_free(method: str, run: Any, *, seed: int, dtype: str, bulk_tol: float,
                     out: Path, resume: bool, overwrite: bool, rank: int, probes: int,
                     steps: int, memory_gb: Optional[float], basis: str) -> None:
    """``--method lanczos|slq``: the matrix-free estimates (see trainmap.jacobian.matrix_free.pipeline)."""
    from trainmap.jacobian.matrix_free.pipeline import analyze_scale
    from trainmap.jacobian.regions import Thresholds

    s = run_lens(lambda: analyze_scale(
        run.recipe, run.theta0, out, method=method, rank=rank, probes=probes, steps=steps or None,
        seed=seed, dtype=dtype, thresholds=Thresholds.symmetric(bulk_tol), eval_sets=run.eval_sets,
        resume=resume, overwrite=overwrite, memory_gb=memory_gb, basis=basis,
        config=run.source and {"recipe_source": run.source}))
    _write_report(out)
    P = s["num_params"]
    lz = s["lanczos"]
    typer.echo(f"\n{P} parameters ({method}, {lz['block_size']} probes × {lz['steps']} steps = "
               f"{lz['vector_products']} products with JᵀJ); σ_max ≈ {s['sigma_max']:.3f}")
    for r in ("chaotic", "bulk", "stable"):
        c = s[r]
        lo, hi = c["quadrature_range"]
        typer.echo(f"  {r:8s} ≈ {c['count']:9.0f} ± {c['std_err']:.0f} ({100 * c['fraction']:5.1f}%), "
                   f"quadrature range [{lo:.0f}, {hi:.0f}]")
    typer.echo(f"  top {s['top']['count']} σ: {s['top']['converged']} converged; "
               f"σ_1..3 = {', '.join(f'{x:.3f}' for x in s['top']['sigma'][:3])}")
    for w in s.get("warnings", []):
        typer.secho(f"  warning: {w}", fg=typer.colors.YELLOW)
    book = lz.get("bookkeeping_fraction_of_products")
    if book is not None:
        where = {"none": "not stored", "half": "in memory in float16"}.get(
            lz["basis"]["mode"], "on disk" if lz["basis"]["on_disk"] else "in memory")
        typer.echo(f"  products {lz['product_s']:.1f} s, Lanczos bookkeeping {100 * book:.1f}% of that; "
                   f"basis {where}; peak memory {s['peak_memory_mb'] / 1024:.2f} of "
                   f"{s['memory_budget_mb'] / 1024:.2f} GiB")
    typer.echo(f"  wall time {s['wall_time_s']['total']:.1f} s; results in {out}/ (open report.html)")


def _write_report(out: Path) -> None:
    """The report of a finished folder, with a line saying what is happening (it takes seconds)."""
    from trainmap._progress import stage
    from trainmap.report.html import write_report

    with stage("report.html"):
        write_report(out)


def _print_summary(s: dict, out: Path) -> None:
    P = s["num_params"]
    typer.echo(f"\n{P} parameters; σ_max = {s['sigma_max']:.3f}, σ_min = {s['sigma_min']:.3g}")
    for r in ("chaotic", "bulk", "stable"):
        c = s[r]
        cos = c["median_abs_cos_uv"]
        typer.echo(f"  {r:8s} {c['count']:5d} ({100 * c['fraction']:5.1f}%)  median |cos(u,v)| = "
                   f"{cos if cos is None else round(cos, 4)}")
    a = s.get("authors")
    if a:
        counts = ", ".join(f"|σ−1| ≤ {t}: {c['count']}" for t, c in a["bulk_counts"].items())
        near = a["near_one"]
        cos = near["median_abs_cos_uv"]
        typer.echo(f"  authors' statistics: {counts}; median |cos(u,v)| over |σ−1| < {near['tol']:g} "
                   f"({near['count']} values) = {cos if cos is None else round(cos, 4)}")
    for name, m in s["metrics"].items():
        typer.echo(f"  {name}: loss {m['before']['loss']:.3f} -> {m['after']['loss']:.3f}, "
                   f"accuracy {m['before']['accuracy']:.3f} -> {m['after']['accuracy']:.3f}")
    for w in s.get("warnings", []):
        typer.secho(f"  warning: {w}", fg=typer.colors.YELLOW)
    typer.echo(f"  wall time {s['wall_time_s']['total']:.1f} s; results in {out}/ (open report.html)")


from trainmap.commands import jacobian_experiments  # noqa: E402

jacobian_experiments.register(app)
