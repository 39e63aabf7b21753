"""Profile post-processing chains: named steps applied in order to a feature set's annotated well profiles.

A chain (config key profiles.chains.NAME) is a list of step names from STEPS. Each step maps the current feature
matrix to a new one and reports what it did, so the report can show per chain how many features went in and out and
what each fitted step saw (e.g. controls per feature for the whitening). Every step keeps the Metadata_ columns and
the row order (heldout, which keeps the fine-tuning split's held-out side, drops rows), and keeps values finite where
they were finite: downstream retrieval has no use for an inf.

Steps that fit on wells (the whitening, PCA, Harmony) fill a missing value with its feature's mean over all wells
first (recorded in the step's detail): CellProfiler leaves a few NaNs that feature selection's na_cutoff allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from paintbench.metadata import NEGCON, unknown_name_message
from paintbench.profiles import feature_columns, normalize, select_features

log = logging.getLogger(__name__)

PLATE, WELL, CONTROL, COUNT = "Metadata_Plate", "Metadata_Well", "Metadata_control_type", "Metadata_Object_Count"
LAYOUT = "Metadata_Plate_Map_Name"
PERT = PERT_COLUMN = "Metadata_broad_sample"
AUTO_GRID = np.logspace(-5, 3, 25)  # the consortium recipe's sphering regularization grid
HARMONY_DIMENSIONS = 50  # Harmony corrects an embedding: wider inputs are first reduced to this many PCs
RECORD_COLUMNS = ["step", "n_features_in", "n_features_out", "fitted_on", "n_fit_wells", "controls_per_feature",
                  "detail"]

StepResult = tuple[pd.DataFrame, str]  # (the new feature columns, indexed like the input; a short detail)


@dataclass(frozen=True)
class StepSpec:
    """What a step needs and does. `required`: columns it reads; `column_options`: options whose value names a
    column it reads (harmony's batch); `fitted_on`: 'negcon', 'all wells' or 'none' (what the report shows)."""

    run: Callable[[pd.DataFrame, list[str], dict[str, Any]], StepResult]
    fitted_on: str
    required: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    column_options: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ helpers
def _frame(values: np.ndarray, columns: list[str], table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(values, columns=columns, index=table.index)


def _negcon(table: pd.DataFrame) -> np.ndarray:
    return (table[CONTROL] == NEGCON).to_numpy()


def _dense(table: pd.DataFrame, features: list[str]) -> tuple[np.ndarray, int]:
    """The feature matrix with each missing value set to its feature's mean (matrix steps cannot take NaN)."""
    values = table[features].to_numpy(np.float64, copy=True)
    missing = np.isnan(values)
    if missing.any():
        values[missing] = np.take(np.nanmean(values, axis=0), np.nonzero(missing)[1])
    return values, int(missing.sum())


def _filled(n_missing: int) -> str:
    return f"; {n_missing} missing value(s) set to the feature mean" if n_missing else ""


# ------------------------------------------------------------------------------------------------ steps
def _none(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Identity: the consortium's published profiles are normalized and feature-selected already."""
    return table[features], "identity"


def variance_operations() -> list[str]:
    """pycytominer's near-constant filters. In pycytominer 1.7 'variance_threshold' is sklearn's minimum variance
    (1e-6) and the freq_cut / unique_cut rule is 'frequency_threshold'; older releases ran that rule under
    'variance_threshold' alone, so freq_cut / unique_cut act in both."""
    from importlib.util import find_spec

    has_frequency = find_spec("pycytominer.operations.frequency_threshold") is not None
    return ["variance_threshold", "frequency_threshold"] if has_frequency else ["variance_threshold"]


def _var(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """pycytominer's near-constant filters (variance_operations): such features carry no signal and break the
    whitening."""
    from pycytominer import feature_select

    operations = variance_operations()
    selected = feature_select(table[features], features=features, operation=operations,
                              freq_cut=options["freq_cut"], unique_cut=options["unique_cut"])
    kept = [c for c in features if c in selected.columns]
    return table[kept], f"{'+'.join(operations)}: freq_cut={options['freq_cut']:g}, unique_cut={options['unique_cut']:g}"


def _mad(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """The per-plate robust z-score on that plate's negative controls (paintbench.profiles.normalize)."""
    return normalize(table, features)[features], "robust z-score per plate on negcon"


def _standardize(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Per plate (x - mean_negcon) / std_negcon (ddof 0, as sklearn's StandardScaler in pycytominer); a feature
    whose controls are constant on a plate is 0 there (pycytominer would leave it uncentred-unscaled: x - mean)."""
    values, controls = table[features].to_numpy(np.float64), _negcon(table)
    out = np.empty_like(values)
    for plate, rows in table.groupby(PLATE).indices.items():
        reference = values[rows][controls[rows]]
        if len(reference) < 2:
            raise ValueError(f"plate {plate}: {len(reference)} negative-control well(s); standardize needs at least 2")
        centre, scale = np.nanmean(reference, axis=0), np.nanstd(reference, axis=0)
        ok = scale > 0
        block = (values[rows] - centre) / np.where(ok, scale, 1.0)
        block[:, ~ok] = 0.0
        out[rows] = block
    return _frame(out, features, table), "z-score per plate on negcon"


def _int(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Rank inverse normal transform (Blom): heavy tails and skew of CellProfiler features stop dominating
    distances. Ties share their average rank, so tied values map to one value and a constant feature to 0."""
    from scipy.stats import norm, rankdata

    values = table[features].to_numpy(np.float64)
    ranks = rankdata(values, axis=0, nan_policy="omit")
    n = (~np.isnan(values)).sum(axis=0)
    return _frame(norm.ppf((ranks - 3 / 8) / (n + 1 / 4)), features, table), "Blom rank-normal over all wells"


def _featselect(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """The consortium's feature selection (paintbench.profiles.select_features), fitted on all wells."""
    kept = select_features(table, features, corr_threshold=options["corr_threshold"], na_cutoff=options["na_cutoff"])
    return table[kept], f"corr_threshold={options['corr_threshold']:g}, na_cutoff={options['na_cutoff']:g}"


def _wellpos(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Subtract each well position's mean over the plates that share its layout (Metadata_Plate_Map_Name when the
    table has it, else every plate): the same position on a plate of another layout holds something else.

    Removes position (edge, gradient) effects. CPJUMP1's replicate plates share one layout, so a position's mean
    also holds the treatment signal its replicates share: this step removes true signal too (with two plates of a
    layout, the two wells of a position become exact opposites). It is a bake-off member and a layout control, its
    effect measured by the benchmark, not assumed to help."""
    position = [c for c in (LAYOUT, WELL) if c in table.columns]
    plates = table.groupby(position)[PLATE].transform("nunique")
    if (plates < 2).all():
        raise ValueError("step 'wellpos': every well position is on one plate only; its mean over plates would be "
                         "the well itself (wellpos needs plates that share a layout)")
    alone = plates < 2  # a position on one plate keeps its values: its mean is the well itself
    means = table.groupby(position)[features].transform("mean").where(~alone, 0.0)
    detail = f"per-position mean over the plates of a layout removed ({' x '.join(position)})"
    if alone.any():
        detail += f"; {int(alone.sum())} well(s) at a position no other plate of their layout has left as they were"
    return table[features] - means, detail


def _cc(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Regress out log1p(cell count): per feature, least squares x ~ a + b log1p(count) over all wells, minus
    b (log1p(count) - its mean), so the feature mean stays. Cell density moves many features at once."""
    counts = table[COUNT].to_numpy(np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"step 'cc': column {COUNT} has missing or negative counts")
    values = table[features].to_numpy(np.float64)
    present = ~np.isnan(values)
    log_count = np.log1p(counts)[:, None] * np.ones_like(values)
    log_count[~present] = np.nan
    centred = log_count - np.nanmean(log_count, axis=0)
    spread = np.nansum(centred**2, axis=0)
    slope = np.nansum(centred * (values - np.nanmean(values, axis=0)), axis=0) / np.where(spread > 0, spread, 1.0)
    slope[~(spread > 0)] = 0.0
    out = values - slope * np.nan_to_num(centred)
    return _frame(out, features, table), f"log1p({COUNT}) regressed out; median |slope| {np.median(np.abs(slope)):.3g}"


def _outlier(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Clip every value to [-clip, clip]: a few extreme wells (debris, failed segmentation) would dominate."""
    clip = float(options["clip"])
    values = table[features].to_numpy(np.float64)
    clipped = int((np.abs(values) > clip).sum())
    return _frame(np.clip(values, -clip, clip), features, table), f"clip={clip:g}; {clipped} value(s) clipped"


@dataclass(frozen=True)
class Whitening:
    """ZCA-cor fitted on control wells as pycytominer's Spherize: standardize (mean, std ddof 0), SVD of the
    standardized controls; singular values beyond the rank are set to the last nonzero one; W = V diag(sqrt(n-1) /
    (s + epsilon)) V^T. `basis` holds the rank's right singular vectors: the rest share one scale (`s_pad`)."""

    mean: np.ndarray
    std: np.ndarray
    singular: np.ndarray
    basis: np.ndarray
    s_pad: float
    n: int

    @classmethod
    def fit(cls, controls: np.ndarray) -> "Whitening":
        mean, std = controls.mean(axis=0), controls.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # only in held-out folds: the fit itself drops zero-std features
        _, singular, vt = np.linalg.svd((controls - mean) / std, full_matrices=False)
        rank = int((singular > singular.max() * max(controls.shape) * np.finfo(np.float64).eps).sum())
        return cls(mean, std, singular[:rank], vt[:rank], float(singular[rank - 1]), len(controls))

    def scales(self, epsilon: float) -> tuple[np.ndarray, float]:
        root = np.sqrt(self.n - 1)
        return root / (self.singular + epsilon), root / (self.s_pad + epsilon)

    def apply(self, values: np.ndarray, epsilon: float) -> np.ndarray:
        scale, pad = self.scales(epsilon)
        z = (values - self.mean) / self.std
        coords = z @ self.basis.T
        return (coords * scale) @ self.basis + pad * (z - coords @ self.basis)

    def log_likelihood(self, values: np.ndarray, epsilon: float) -> float:
        """Mean Gaussian log-density of `values` under N(mean, (W_total W_total^T)^-1), the whitening's model."""
        scale, pad = self.scales(epsilon)
        z = (values - self.mean) / self.std
        coords = z @ self.basis.T
        rest = np.maximum((z**2).sum(axis=1) - (coords**2).sum(axis=1), 0.0)
        quadratic = (coords**2 * scale**2).sum(axis=1) + pad**2 * rest
        d, r = z.shape[1], len(scale)
        log_det = np.log(scale).sum() + (d - r) * np.log(pad) - np.log(self.std).sum()
        return float(np.mean(-0.5 * quadratic + log_det - 0.5 * d * np.log(2 * np.pi)))


def auto_regularization(controls: np.ndarray, plates: np.ndarray, grid: np.ndarray = AUTO_GRID) -> float:
    """The epsilon of `grid` maximizing the mean held-out log-likelihood of control wells: leave one plate out, or
    5 folds of the control wells with a single plate. Uses controls only, no task label, so it cannot overfit a
    benchmark; fewer controls per feature overfit the covariance and so pick a larger epsilon."""
    if len(np.unique(plates)) > 1:
        folds = [plates == p for p in np.unique(plates)]
    else:
        from sklearn.model_selection import KFold

        if len(controls) < 10:
            raise ValueError(f"sphering regularization auto: {len(controls)} control wells on one plate; "
                             "5-fold selection needs at least 10 (give a number)")
        splits = KFold(5, shuffle=True, random_state=0).split(controls)
        folds = [np.isin(np.arange(len(controls)), test) for _, test in splits]
    scores = np.zeros(len(grid))
    for held in folds:
        fitted = Whitening.fit(controls[~held])
        scores += [fitted.log_likelihood(controls[held], eps) for eps in grid]
    return float(grid[int(np.argmax(scores))])


def _sphering(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """ZCA-cor whitening fitted on the negative controls of all plates pooled (pycytominer's Spherize): removes
    the correlation structure controls share, so no block of redundant features dominates distances."""
    values, n_missing = _dense(table, features)
    controls = _negcon(table)
    if controls.sum() < 2:
        raise ValueError(f"step 'sphering': {controls.sum()} negative-control well(s); it needs at least 2")
    keep = values[controls].std(axis=0) > 0
    kept = [f for f, k in zip(features, keep) if k]
    values = values[:, keep]
    regularization = options["regularization"]
    if regularization == "auto":
        epsilon = auto_regularization(values[controls], table[PLATE].to_numpy()[controls])
        detail = f"regularization={epsilon:g} (auto)"
    else:
        epsilon = float(regularization)
        detail = f"regularization={epsilon:g}"
    whitened = Whitening.fit(values[controls]).apply(values, epsilon)
    dropped = f"; {int((~keep).sum())} feature(s) constant across controls dropped" if (~keep).any() else ""
    return _frame(whitened, kept, table), detail + dropped + _filled(n_missing)


def _pca(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Principal components fitted on all wells, as many as explain `variance` of it: a compact, decorrelated set."""
    from sklearn.decomposition import PCA

    values, n_missing = _dense(table, features)
    share = float(options["variance"])
    pca = PCA(n_components=share if share < 1 else None, svd_solver="full").fit(values)
    k = pca.n_components_
    detail = f"{k} component(s) explain {pca.explained_variance_ratio_.sum():.3f} (target {share:g})"
    return _frame(pca.transform(values), [f"PC{i}" for i in range(1, k + 1)], table), detail + _filled(n_missing)


def _harmony(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Harmony batch correction (harmonypy) on the current features. Harmony corrects an embedding, so more than
    50 features are first reduced to 50 principal components fitted on all wells. One batch: identity."""
    batch = options["batch"]
    groups = table[batch].astype(str)
    if groups.nunique() < 2:
        return table[features], f"one batch ({batch}): identity"
    from harmonypy import run_harmony
    from sklearn.decomposition import PCA

    values, n_missing = _dense(table, features)
    reduced = ""
    if values.shape[1] > HARMONY_DIMENSIONS:
        values = PCA(min(HARMONY_DIMENSIONS, len(values)), svd_solver="full").fit_transform(values)
        reduced = f"; PCA to {values.shape[1]} components first"
    state = np.random.get_state()  # harmonypy seeds numpy's global generator: leave the caller's as it was
    try:
        fitted = run_harmony(values.T, pd.DataFrame({batch: groups.to_numpy()}), vars_use=[batch],
                             max_iter_harmony=int(options["max_iterations"]), random_state=int(options["seed"]),
                             verbose=False)
    finally:
        np.random.set_state(state)
    corrected = np.asarray(fitted.Z_corr).T
    names = [f"harmony_{i}" for i in range(1, corrected.shape[1] + 1)]
    detail = f"batch={batch} ({groups.nunique()} batches), max_iterations={options['max_iterations']}"
    return _frame(corrected, names, table), detail + reduced + _filled(n_missing)


def _heldout(table: pd.DataFrame, features: list[str], options: dict[str, Any]) -> StepResult:
    """Keep the negative controls and the held-out side of the fine-tuning split (paintbench.holdout): what a
    fine-tuned feature set and its parent are scored on. A step on rows: the features pass through."""
    if not options["split"]:
        raise ValueError("step 'heldout' needs the fine-tuning split (the workflow passes it; "
                         "paintbench profile-chain --step-options '{\"heldout\": {\"split\": \"split.tsv\"}}')")
    from paintbench.atomic import read_table

    split = read_table(options["split"])
    train = set(split.loc[split["side"] == "train", PERT])
    dropped = table[PERT_COLUMN].isin(train) & ~_negcon(table)
    return table.loc[~dropped, features], (f"{int(dropped.sum())} well(s) of training-side perturbations dropped; "
                                           f"{int((~dropped).sum())} kept")


STEPS: dict[str, StepSpec] = {
    "none": StepSpec(_none, "none"),
    "var": StepSpec(_var, "all wells", defaults={"freq_cut": 0.05, "unique_cut": 0.01}),
    "mad": StepSpec(_mad, "negcon", (PLATE, CONTROL)),
    "standardize": StepSpec(_standardize, "negcon", (PLATE, CONTROL)),
    "int": StepSpec(_int, "all wells"),
    "featselect": StepSpec(_featselect, "all wells", defaults={"corr_threshold": 0.9, "na_cutoff": 0.05}),
    "wellpos": StepSpec(_wellpos, "all wells", (WELL,)),
    "cc": StepSpec(_cc, "all wells", (COUNT,)),
    "outlier": StepSpec(_outlier, "none", defaults={"clip": 100}),
    "sphering": StepSpec(_sphering, "negcon", (PLATE, CONTROL), defaults={"regularization": "auto"}),
    "pca": StepSpec(_pca, "all wells", defaults={"variance": 0.99}),
    "harmony": StepSpec(_harmony, "all wells", defaults={"batch": PLATE, "max_iterations": 20, "seed": 0},
                        column_options=("batch",)),
    "heldout": StepSpec(_heldout, "none", (PERT_COLUMN, CONTROL), defaults={"split": None}),
}


# ------------------------------------------------------------------------------------------------ chains
def step_options(step: str, options: dict[str, dict] | None) -> dict[str, Any]:
    """A step's options: its defaults updated by options[step]; an unknown option is an error, not ignored."""
    given = (options or {}).get(step) or {}
    unknown = set(given) - set(STEPS[step].defaults)
    if unknown:
        raise ValueError(f"step {step!r}: unknown option(s) {sorted(unknown)} "
                         f"(known: {', '.join(STEPS[step].defaults) or 'none'})")
    return {**STEPS[step].defaults, **given}


def check_chain(steps: list[str], columns: list[str], name: str = "chain",
                options: dict[str, dict] | None = None) -> None:
    """Every step is known and the profiles have the columns it reads: fail before any work, naming the chain,
    the step and the column."""
    if not steps:
        raise ValueError(f"{name}: a chain needs at least one step (none for the identity)")
    unknown_sections = set(options or {}) - set(STEPS)
    if unknown_sections:
        raise ValueError(f"{name}: options for unknown step(s) {sorted(unknown_sections)} (known: {', '.join(STEPS)})")
    present = set(columns)
    for step in steps:
        if step not in STEPS:
            raise ValueError(f"{name}: " + unknown_name_message("step", step, list(STEPS)))
        spec = STEPS[step]
        chosen = step_options(step, options)
        for column in (*spec.required, *(chosen[o] for o in spec.column_options)):
            if column not in present:
                raise ValueError(f"{name}: step {step!r} needs column {column}, which the feature set's profiles lack")


def few_features_fix(name: str, step: str) -> str:
    """What to change when a step leaves too little: the data, or the chains of the feature set."""
    return (f". Its wells do not differ enough for it (too few distinct wells, perturbations or plates?); or run a "
            f"chain without {step} for {name.split('/')[0]} (config key profiles.feature_sets, or its entry's chains)")


def _record(step: str, table: pd.DataFrame, n_in: int, n_out: int, detail: str) -> dict[str, Any]:
    fitted_on = STEPS[step].fitted_on
    n_fit = {"negcon": int(_negcon(table).sum()) if fitted_on == "negcon" else 0, "all wells": len(table),
             "none": 0}[fitted_on]
    per_feature = n_fit / n_in if fitted_on == "negcon" and n_in else np.nan
    return {"step": step, "n_features_in": n_in, "n_features_out": n_out, "fitted_on": fitted_on,
            "n_fit_wells": n_fit, "controls_per_feature": per_feature, "detail": detail}


def apply_chain(table: pd.DataFrame, steps: list[str], options: dict[str, dict] | None = None, name: str = "chain",
                min_features: int = 1) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Run `steps` in order: (the processed table, Metadata_ columns and row order kept; its features; one record
    per step: features in/out, what it fitted on and how many wells, controls per feature, detail). A step that
    fails, or leaves fewer than `min_features`, stops the chain with a message naming `name` (FS/CHAIN) and the
    step, and saying what to change."""
    check_chain(steps, list(table.columns), name=name, options=options)
    metadata = [c for c in table.columns if c.startswith("Metadata_")]
    features = [c for c in feature_columns(table) if table[c].notna().any()]
    current = pd.concat([table[metadata], table[features].astype(np.float64)], axis=1)
    if len(features) < min_features:
        raise ValueError(f"{name}: the profiles have {len(features)} feature(s), fewer than config key "
                         f"'profiles.min_features' ({min_features})")
    records = []
    for step in steps:
        try:
            values, detail = STEPS[step].run(current, features, step_options(step, options))
        except ValueError as error:
            raise ValueError(f"{name}: step {step!r} on {len(current)} wells x {len(features)} features: {error}"
                             f"{few_features_fix(name, step)}") from error
        if values.shape[1] < min_features:
            raise ValueError(f"{name}: step {step!r} kept {values.shape[1]} of {len(features)} features, fewer than "
                             f"config key 'profiles.min_features' ({min_features}){few_features_fix(name, step)}")
        finite_in = np.isfinite(current[features].to_numpy()).all()
        if finite_in and not np.isfinite(values.to_numpy(np.float64)).all():
            raise ValueError(f"step {step!r} produced non-finite values from finite profiles")
        records.append(_record(step, current, len(features), values.shape[1], detail))
        log.info("step %s: %d -> %d features (%s)", step, len(features), values.shape[1], detail)
        features = list(values.columns)
        current = pd.concat([current.loc[values.index, metadata], values.astype(np.float64)], axis=1)  # heldout drops rows
    return current, features, pd.DataFrame(records, columns=RECORD_COLUMNS)
