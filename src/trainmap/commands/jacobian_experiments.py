"""``trainmap jacobian <experiment>`` subcommands (registered on the ``jacobian`` group).

The recipe is chosen by the group's options, written *before* the subcommand, e.g.
``trainmap jacobian --hidden 32 --epochs 5 --dtype float64 perturb``: the group callback parses
them into one :class:`JacobianSetup` (``ctx.obj``) that every subcommand receives. The group's
``--out`` (default ``results/jacobian``) is where the main Jacobian analysis lives: a finished
one is reused (after checking it belongs to the same setup and precision), a missing one is
computed there first.

    perturb     1. perturbation response along a chaotic, a bulk and a stable direction
    ood         2. in- vs out-of-distribution KL of every singular direction
    restricted  3. training restricted to k singular directions
    labels      4. data and label dependence (shuffled labels, noise inputs)
    seeds       5. bulk overlap across seeds
    change      6. θ_T − θ₀ in the singular basis
    linearized  7. bulk vs null space of the output Jacobian
    reproduce   all seven on the configured setup, one results folder
    scaling     regions against the parameter count (MLP, CNN, transformer; its own setups)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

#: ``reproduce --only`` takes the subcommand names; the experiment each one runs
ONLY_NAMES = {"perturb": "perturbation", "labels": "dependence"}

from trainmap.commands._common import run_lens


@dataclass(frozen=True)
class JacobianSetup:
    """The ``trainmap jacobian`` group's options, handed explicitly to every experiment subcommand.

    Attributes:
        recipe_kwargs: keyword arguments of :func:`trainmap.presets.digits_mlp`.
        dtype: precision of the main Jacobian and of the Jacobians the experiments compute.
        bulk_tol: bulk is |σ−1| ≤ bulk_tol.
        out: the folder of the main Jacobian analysis (reused when finished).
        chunk_size: tangents per chunk (None: automatic).
        memory_gb: memory budget of the exact engine (GiB).
    """

    recipe_kwargs: dict
    dtype: str = "float32"
    bulk_tol: float = 0.1
    out: Path = Path("results/jacobian")
    chunk_size: int | None = None
    memory_gb: float = 2.0

    @property
    def thresholds(self) -> Any:
        from trainmap.jacobian.regions import Thresholds

        return Thresholds.symmetric(self.bulk_tol)


def _setup(ctx: typer.Context) -> JacobianSetup:
    """The group's :class:`JacobianSetup` (``ctx.obj``, set by the ``trainmap jacobian`` callback)."""
    obj = ctx.find_object(JacobianSetup)
    if obj is None:  # called outside the group: its defaults
        obj = JacobianSetup({})
    return obj


def _context(ctx: typer.Context):
    """(setup, main-Jacobian SVD, thresholds, recipe kwargs) for a subcommand."""
    from trainmap.jacobian.experiments import _common as C
    from trainmap.presets import digits_mlp

    js = _setup(ctx)
    setup = run_lens(lambda: digits_mlp(**js.recipe_kwargs))
    d = setup.data
    jdir = js.out
    typer.echo(f"main Jacobian: {jdir}/ ({'reusing' if C.finished(jdir) is not None else 'computing'}, "
               f"{js.dtype})")
    dec = C.jacobian_svd(setup.recipe, setup.theta0, jdir, thresholds=js.thresholds,
                         chunk_size=js.chunk_size, memory_budget_gb=js.memory_gb, dtype=js.dtype,
                         eval_sets={"train": (d.x_train, d.y_train), "test": (d.x_test, d.y_test)})
    return setup, dec, js.thresholds, dict(js.recipe_kwargs, dtype=js.dtype)


def _run(fn: Callable[[], dict], out: Path) -> dict:
    from trainmap.report.html import write_reports

    summary = run_lens(fn)
    write_reports(out)
    f = summary.get("finding")
    if f:
        mark = {True: "holds", False: "does NOT hold", None: "undecided"}[f.get("holds")]
        typer.echo(f"finding ({mark}): {f['claim']}\n  {f['statement']}")
    typer.echo(f"results in {out}/ (open report.html)")
    return summary


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"{name} must be comma-separated integers, got {text!r}") from exc


OUT_HELP = "Results folder of this experiment."


def register(app: typer.Typer) -> None:
    """Add the experiment subcommands to the ``trainmap jacobian`` group."""

    @app.command("perturb")
    def perturb(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_perturb"), help=OUT_HELP),
        eps_min: float = typer.Option(1e-3, help="Smallest ε."),
        eps_max: float = typer.Option(1e3, help="Largest ε."),
        points: int = typer.Option(31, help="Number of log-spaced ε."),
        tol: float = typer.Option(0.1, help="Relative error at which linearity counts as failed."),
        resume: bool = typer.Option(False, help="Reuse a finished folder."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """1. Retrain from θ₀ + ε v_i (chaotic, bulk, stable v_i) and compare with ε σ_i u_i."""
        import numpy as np

        from trainmap.jacobian.experiments import perturbation_response

        def go() -> dict:
            setup, dec, th, kw = _context(ctx)
            return perturbation_response(
                setup.recipe, setup.theta0, out, dec=dec, eval_set=(setup.data.x_test, setup.data.y_test),
                eps=np.logspace(np.log10(eps_min), np.log10(eps_max), points), tol=tol,
                thresholds=th, resume=resume, overwrite=overwrite, config={"setup": kw})
        _run(go, out)

    @app.command("ood")
    def ood(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_ood"), help=OUT_HELP),
        n_probe: int = typer.Option(512, help="Training-subset and white-noise probe sizes."),
        probe_seed: int = typer.Option(0, help="Seed of the probe sets."),
        resume: bool = typer.Option(False, help="Reuse a finished folder."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """2. KL of every singular direction on train / test / white-noise / inverted inputs."""
        from trainmap.jacobian.experiments import ood_effect, probe_sets

        def go() -> dict:
            setup, dec, th, kw = _context(ctx)
            d = setup.data
            probes = probe_sets(d.x_train, d.x_test, n_train=n_probe, n_noise=n_probe, seed=probe_seed)
            return ood_effect(setup.recipe, setup.theta0, out, dec=dec, probes=probes, seed=probe_seed,
                              thresholds=th, resume=resume, overwrite=overwrite, config={"setup": kw})
        _run(go, out)

    @app.command("restricted")
    def restricted(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_restricted"), help=OUT_HELP),
        ks: str = typer.Option("", help="Comma-separated k grid (default 16,64,256,1024,2048 + bulk size)."),
        subspace_seed: int = typer.Option(0, help="Seed of the random subspaces."),
        resume: bool = typer.Option(False, help="Reuse a finished folder."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """3. Train only in the span of k right singular vectors (bulk, complement, top, bottom, random)."""
        from trainmap.jacobian.experiments import restricted_training

        grid = _ints(ks, "--ks") or None

        def go() -> dict:
            setup, dec, th, kw = _context(ctx)
            return restricted_training(setup.recipe, setup.theta0, out, dec=dec, ks=grid,
                                       eval_set=(setup.data.x_test, setup.data.y_test),
                                       seed=subspace_seed, thresholds=th, resume=resume,
                                       overwrite=overwrite, config={"setup": kw})
        _run(go, out)

    @app.command("labels")
    def labels(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_labels"), help=OUT_HELP),
        variant_seed: int = typer.Option(0, help="Seed of the label permutation and of the noise inputs."),
        resume: bool = typer.Option(False, help="Reuse finished Jacobians and results."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """4. Spectra for real data, shuffled labels and white-noise inputs (same θ₀); bulk overlaps."""
        from trainmap.jacobian.experiments import data_label_dependence

        def go() -> dict:
            setup, dec, th, kw = _context(ctx)
            return data_label_dependence(setup.recipe, setup.theta0, out, dec=dec, seed=variant_seed,
                                         thresholds=th, resume=resume, overwrite=overwrite,
                                         chunk_size=_setup(ctx).chunk_size,
                                         jacobian_dtype=_setup(ctx).dtype, config={"setup": kw})
        _run(go, out)

    @app.command("seeds")
    def seeds(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_seeds"), help=OUT_HELP),
        seeds: str = typer.Option("0,1,2", help="Comma-separated seeds (init and data order)."),
        resume: bool = typer.Option(False, help="Reuse finished Jacobians and results."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """5. Overlap of bulk subspaces across seeds (principal angles vs the k/P baseline)."""
        from trainmap.jacobian.experiments import seed_overlap
        from trainmap.presets import digits_mlp

        seed_list = _ints(seeds, "--seeds")

        def go() -> dict:
            setup, dec, th, kw = _context(ctx)
            js = _setup(ctx)
            main_seed = int(js.recipe_kwargs.get("seed", 0))
            return seed_overlap(lambda s: tuple(digits_mlp(**{**js.recipe_kwargs, "seed": s})[:2]), seed_list,
                                out, known={main_seed: dec}, thresholds=th, resume=resume,
                                overwrite=overwrite, chunk_size=js.chunk_size, jacobian_dtype=js.dtype,
                                config={"setup": kw})
        _run(go, out)

    @app.command("change")
    def change(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_change"), help=OUT_HELP),
        resume: bool = typer.Option(False, help="Reuse a finished folder."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """6. The parameter change θ_T − θ₀ in the right-singular basis, per region."""
        from trainmap.jacobian.experiments import parameter_change

        def go() -> dict:
            setup, dec, th, kw = _context(ctx)
            return parameter_change(setup.recipe, setup.theta0, out, dec=dec, thresholds=th,
                                    resume=resume, overwrite=overwrite, config={"setup": kw})
        _run(go, out)

    @app.command("linearized")
    def linearized(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_linearized"), help=OUT_HELP),
        n_inputs: int = typer.Option(512, help="Training inputs stacked into the output Jacobian (0: all)."),
        points: int = typer.Option(5, help="Trajectory points in the trajectory Gram."),
        resume: bool = typer.Option(False, help="Reuse a finished folder."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """7. Compare the bulk with the null space of the output Jacobian (θ₀ and trajectory)."""
        from trainmap.jacobian.experiments import linearized_explanation

        def go() -> dict:
            setup, dec, th, kw = _context(ctx)
            return linearized_explanation(setup.recipe, setup.theta0, out, dec=dec,
                                          n_inputs=n_inputs or None, n_points=points, thresholds=th,
                                          resume=resume, overwrite=overwrite, config={"setup": kw})
        _run(go, out)

    @app.command("scaling")
    def scaling(
        out: Path = typer.Option(Path("results/jacobian_scaling"), help="Results folder of the study."),
        families: str = typer.Option("mlp,cnn,transformer", help="Comma-separated: mlp, cnn, transformer "
                                     "(Adam), transformer-sgd (the same with SGD momentum)."),
        mlp_widths: str = typer.Option("40,300,1000,3200", help="Hidden widths w of the digits MLP 64→w→w→10."),
        cnn_widths: str = typer.Option("20,64,256,512", help="Channels of the residual 1-D CNN on MNIST-1D."),
        transformer_widths: str = typer.Option("16,64,256,512", help="d_model of the 2-layer transformer on "
                                               "modular addition (both transformer families)."),
        epochs: int = typer.Option(2, help="Training epochs of every model."),
        exact_max: int = typer.Option(10_000, help="Largest parameter count computed exactly (J and its SVD); "
                                      "larger models use the matrix-free SLQ route."),
        probes: int = typer.Option(8, help="Matrix-free points: Rademacher probes (the Lanczos block size)."),
        lanczos_steps: int = typer.Option(0, help="Matrix-free points: block Lanczos steps (0: the default, 30)."),
        resume: bool = typer.Option(False, help="Continue the study in --out (finished points are reused)."),
        overwrite: bool = typer.Option(False, help="Replace a previous study folder."),
    ) -> None:
        """Regions, σ_max and the bulk's |cos(u, v)| against the parameter count, for MLP, CNN and transformer."""
        from trainmap.jacobian.scaling import FAMILIES, Point, scaling_study

        fams = [f.strip() for f in families.split(",") if f.strip()]
        bad = [f for f in fams if f not in FAMILIES]
        if bad or not fams:
            raise typer.BadParameter(f"--families takes {', '.join(FAMILIES)}; got {families!r}")
        widths = {"mlp": _ints(mlp_widths, "--mlp-widths"), "cnn": _ints(cnn_widths, "--cnn-widths"),
                  "transformer": _ints(transformer_widths, "--transformer-widths")}
        widths["transformer-sgd"] = widths["transformer"]
        points = [Point(f, w, epochs) for f in fams for w in widths[f]]
        summary = _run(lambda: scaling_study(out, points, exact_max=exact_max, probes=probes,
                                             steps=lanczos_steps or None, resume=resume, overwrite=overwrite),
                       out)
        for r in summary["points"]:
            err = "" if r["route"] == "exact" else f" ± {100 * r['bulk_fraction_err']:.1f}"
            typer.echo(f"  {r['family']:11s} P = {r['num_params']:>10,}  {r['route']:5s}  bulk "
                       f"{100 * r['bulk_fraction']:5.1f}%{err}  σ_max {r['sigma_max']:.3g}")

    @app.command("reproduce")
    def reproduce_cmd(
        ctx: typer.Context,
        out: Path = typer.Option(Path("results/jacobian_reproduce"), help="Results folder (sub-folder per experiment)."),
        seeds: str = typer.Option("0,1,2", help="Seeds of the seed-overlap experiment."),
        jacobian_dir: Optional[Path] = typer.Option(
            None, help="A finished `trainmap jacobian` folder of the same setup to reuse."),
        only: str = typer.Option("", help="Comma-separated subset, by subcommand name: change, perturb, ood, "
                                          "restricted, linearized, labels, seeds."),
        resume: bool = typer.Option(False, help="Continue a killed run: reuse finished Jacobians and experiments."),
        overwrite: bool = typer.Option(False, help="Replace a previous results folder."),
    ) -> None:
        """All seven experiments on the configured setup (no options: the reference run)."""
        from trainmap.jacobian.experiments import reproduce
        from trainmap.jacobian.experiments.reproduce import headline_table

        seed_list = _ints(seeds, "--seeds")
        # the subcommands' names; the experiments' own names (perturbation, dependence) work too
        subset = [ONLY_NAMES.get(s.strip(), s.strip()) for s in only.split(",") if s.strip()] or None

        def go() -> dict:
            js = _setup(ctx)
            return reproduce(out, setup_kwargs=js.recipe_kwargs, seeds=seed_list,
                             jacobian_dir=jacobian_dir, only=subset, thresholds=js.thresholds,
                             chunk_size=js.chunk_size, memory_budget_gb=js.memory_gb, dtype=js.dtype,
                             resume=resume, overwrite=overwrite, log=typer.echo)

        s = _run(go, out)
        typer.echo(headline_table(s))
        typer.echo(f"{s['findings_hold']} findings hold, {s['findings_fail']} do not; "
                   f"wall time {s['wall_time_s']['total']:.0f} s")
