"""Joint InPCA embedding of prediction trajectories, with the P₀/P* references (one pipeline for
``trainmap ribbon embed`` and the deep-network experiment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from trainmap.results import open_results


class JointEmbedding(NamedTuple):
    """A joint InPCA of trajectory points and, optionally, the references P₀ and P*.

    Attributes:
        model: the fitted :class:`~trainmap.ribbon.inpca.InPCA`.
        num_points: n, the trajectory points (the first n rows of the embedding).
        references: ``{"P0": (k,), "P*": (k,)}`` coordinates, or empty.
        geodesic: (21, k) the P₀→P* geodesic in the embedding, or None.
        progress: (n,) progress of each point along the geodesic, or None.
    """

    model: Any
    num_points: int
    references: dict
    geodesic: np.ndarray | None
    progress: np.ndarray | None


def joint_embedding(probs: np.ndarray, targets: np.ndarray | None, components: int = 10,
                    references: bool = False, progress: bool = True, **inpca: Any) -> JointEmbedding:
    """Embed (n, N, C) predicted probabilities, optionally jointly with P₀ (uniform) and P* (one-hot truth).

    The references are added only when asked (``references=True``, the same default as
    ``InPCA().fit`` and ``trainmap ribbon embed --references``) and ``targets`` ((N,) classes) are
    given; the InPCA eigenvalues then include them, as in Mao et al. (2024).
    """
    from trainmap.ribbon.inpca import InPCA
    from trainmap.ribbon.measures import geodesic_points, geodesic_progress, onehot_prediction, uniform_prediction

    n, N, C = probs.shape
    use_refs = references and targets is not None
    points = probs
    if use_refs:
        refs = np.stack([uniform_prediction(N, C), onehot_prediction(targets, C)]).astype(probs.dtype)
        points = np.concatenate([probs, refs])
    model = InPCA(n_components=components, progress=progress, **inpca).fit(points)
    if not use_refs:
        return JointEmbedding(model, n, {}, None, None)
    emb = model.embedding_
    geo = model.transform(geodesic_points(targets, C, 21).astype(probs.dtype))
    return JointEmbedding(model, n, {"P0": emb[n], "P*": emb[n + 1]}, geo, geodesic_progress(probs, targets))


def stress_summary(model: Any) -> dict[str, Any]:
    """Headline numbers of an InPCA fit: χ_1..3, eigenvalues, their decay, widths, total stress."""
    from trainmap.ribbon.measures import decay_fit, widths

    chi = model.explained_stress_
    lam = model.eigenvalues_
    fit = decay_fit(lam) if len(lam) > 1 else None
    return dict(chi_1=float(chi[0]), chi_2=float(chi[min(1, len(chi) - 1)]), chi_3=float(chi[min(2, len(chi) - 1)]),
                explained_stress=[float(v) for v in chi], eigenvalues=[float(v) for v in lam],
                num_negative_eigenvalues_in_top=int(np.sum(lam < 0)),
                eigenvalue_decay_ratio=fit.ratio if fit else None,
                eigenvalue_decay_r2=fit.r2 if fit else None,
                widths=[float(v) for v in widths(model.embedding_)], total_stress=model.total_stress_)


def embed_stores(paths: Sequence[Any], out: str | Path, *, components: int = 10,
                 references: bool = False, block: int = 256, float64: bool = False,
                 mode: str = "new", progress: bool = True, config: dict | None = None) -> dict[str, Any]:
    """``trainmap ribbon embed``: one joint embedding of prediction-trajectory stores.

    Args:
        paths: PredictionTrajectory stores recorded on one probe set (paths, or trajectories in
            memory; ``config`` then says where they came from).
        out: results folder.
        components: InPCA components kept.
        references: add P₀ and P* when the stores carry targets.
        block: checkpoints per Bhattacharyya block.
        float64: float64 products.
        mode: results-folder mode (see :func:`trainmap.results.open_results`).

    Returns:
        The summary (also in ``summary.json``).
    """
    from trainmap.record.predictions import check_compatible
    from trainmap.record.store import PredictionTrajectory
    from trainmap.ribbon.figures import embed_figures

    trajs = [p if isinstance(p, PredictionTrajectory) else PredictionTrajectory.load(p) for p in paths]
    paths = [Path("predictions") if isinstance(p, PredictionTrajectory) else Path(p) for p in paths]
    config = dict(command="ribbon embed", inputs=[str(p) for p in paths], components=components,
                  references=references, block=block, float64=float64, **(config or {}))
    check_compatible(trajs, [str(p) for p in paths])
    folder = open_results(out, mode, kind="ribbon-embed", config=config)
    probs = np.concatenate([np.asarray(t.probs).reshape(-1, *t.shape[2:]) for t in trajs])
    run_of_point = np.concatenate([np.repeat(np.arange(t.shape[0]), t.shape[1]) + sum(u.shape[0] for u in trajs[:i])
                                   for i, t in enumerate(trajs)])
    labels = [f"{Path(p).stem}:{lab}" for p, t in zip(paths, trajs) for lab in t.labels]
    N, C = probs.shape[1:]
    je = joint_embedding(probs, trajs[0].targets, components, references, progress, block=block,
                         dtype=np.float64 if float64 else np.float32)
    emb = je.model.embedding_
    arrays = {"embedding": emb, "eigenvalues": je.model.eigenvalues_}
    summary = dict(num_points=int(emb.shape[0]), samples=int(N), classes=int(C), **stress_summary(je.model))
    if je.progress is not None:
        arrays.update(geodesic=je.geodesic, progress=je.progress)
        summary["progress_final_mean"] = float(np.mean([je.progress[run_of_point == r][-1]
                                                        for r in np.unique(run_of_point)]))
    for name, arr in arrays.items():
        folder.save_array(name, arr)
    embed_figures(folder, emb[:je.num_points], je.model.eigenvalues_, je.model.explained_stress_,
                  run_of_point, labels, je.progress, dict(je.references))
    return folder.finish(summary)
