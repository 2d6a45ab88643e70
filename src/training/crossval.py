"""k-fold cross-validation (``ainode cross-validate``): every real case is scored only by a model that did
not train on it.

The real cases are dealt into k folds (round robin over the sorted names, so cases from one source spread
over the folds); for each fold a model trains on the other folds' cases and the phantoms, with the same
plan, and scores the fold's own cases by the full inference path. Each fold lives in its own folder
(weights, model file, checkpoint, report), so an interrupted run resumes at the fold and step it reached.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.augment import Augmentation
from training.cases import PreparedCase
from training.evaluate import CaseScore, evaluate
from training.nifti import CasePair
from training.report import summary, write_report
from training.train import TrainingPlan, train
from worker.models.spec import UNetSpec, load_spec


def deal_folds(names: list[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` folds of case names: sorted, shuffled within each source (the name before its first hyphen
    and digits), then dealt round robin so that every fold holds cases of every source it can."""
    if not 2 <= k <= len(names):
        raise ValueError(f"{k} folds of {len(names)} cases: choose 2 to {len(names)} folds")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(re.split(r"[-_]\d", name)[0], []).append(name)
    order = [n for g in groups.values() for n in rng.permutation(g).tolist()]
    return [order[i::k] for i in range(k)]


def fold_model(spec: UNetSpec, folder: Path) -> Path:
    """A copy of the model file beside the fold's weights."""
    folder.mkdir(parents=True, exist_ok=True)
    text = re.sub(r'(?m)^weights\s*=.*$', 'weights = "weights.pt"', spec.path.read_text())
    path = folder / "model.toml"
    path.write_text(text)
    return path


def cross_validate(spec: UNetSpec, pairs: list[CasePair], real: list[PreparedCase], phantoms: list[PreparedCase],
                   validation: list[PreparedCase], out: Path, k: int, plan: TrainingPlan,
                   augmentation: Augmentation = Augmentation(), device: str = "auto", init: Path | None = None,
                   log: Callable[[str], None] = print) -> list[CaseScore]:
    """Train and score k fold models; writes ``out/report.md`` with every real case's held-out score.

    ``init``: weights every fold starts from (e.g. a model trained on phantoms only, which saw no real case).
    """
    folds = deal_folds([p.name for p in pairs], k, plan.seed)
    scores: list[CaseScore] = []
    for n, held_out in enumerate(folds):
        folder = out / f"fold-{n + 1}"
        weights = folder / "weights.pt"
        model = fold_model(spec, folder)
        log(f"fold {n + 1} of {k}: scoring {', '.join(held_out)}")
        if not weights.exists():
            train(spec, weights, [c for c in real if c.name not in held_out], phantoms, validation, plan,
                  augmentation, resume=True, init=init, log=log)
        fold_spec = load_spec(model)
        fold_scores = evaluate(fold_spec, [p for p in pairs if p.name in held_out], out=folder, device=device)
        write_report(fold_scores, fold_spec, folder, f"Fold {n + 1} of {k}: held-out cases", [])
        scores += [replace(s, fold=n + 1, overlay=f"fold-{n + 1}/{s.overlay}" if s.overlay else None)
                   for s in fold_scores]
    notes = [f"{k}-fold cross-validation on {len(pairs)} real cases: each case is scored by the model of its "
             f"fold, which trained on the other {k - 1} folds and {len(phantoms)} phantoms, never on the case"
             + (f" (starting from {init.name}, which saw no real case)." if init else "."),
             f"Plan: {plan}."]
    write_report(scores, spec, out, f"{k}-fold cross-validation of {spec.name}", notes)
    for label in spec.labels:
        figures = summary(scores, label.name)
        log(f"{label.name}: cross-validated Dice mean {figures['mean_dice']:.3f}, min {figures['min_dice']:.3f}")
    return scores
