"""Layout and batch controls for one table of scored well profiles: how much of a feature set's retrieval could
come from where a well sits (its plate, its position) rather than from what was put in it.

CPJUMP1's replicate plates share one layout: a perturbation's replicates sit in the same well position on every
plate, so a feature set that sees position (illumination, edge effects) can win replicate retrieval by
recognizing position. Each control below is one small function returning one row per condition (the CONDITION
columns of paintbench.retrieval); `layout_controls` runs them all.

1. same_position_controls: negative-control wells only. A query is a negcon well; its positives: the negcon wells
   in the same Metadata_Well on the other plates of the condition; its negatives: the query plate's other negcon
   wells (other positions); cosine; scored per well position with retrieval's machinery (BH within the
   condition). There is no treatment here, so anything retrieved is position (or position x plate) signal.
2. different_position_replicates: replicate retrieval with positives restricted to replicate wells in another
   position (pos_diff Metadata_Well, as the paper's ORF notebook 1.2 does); negatives as in replicate retrieval
   (the query plate's negcon wells).
3. shuffled_replicates: replicate retrieval after permuting Metadata_broad_sample and its annotation among the
   query wells of each condition (seeded). Nothing is retrievable by construction: its fraction retrieved is the
   rate of false discoveries the whole chain (features, normalization, statistic) produces.
4. plate_predictability: cross-validated nearest-centroid classification of Metadata_Plate from the
   negative-control profiles (see its docstring), with a label-permutation p-value.
5. nearest_neighbour_target_accuracy: Kim et al. 2025's drug target classification: compound consensus
   profiles, 1-NN by cosine among compounds that share no well position, correct when they share a target;
   chance from permuting the target lists.

Columns of every row (COLUMNS): control, the CONDITION columns, n (units scored: well positions, perturbations,
wells or compounds; 0 when the control cannot run, `detail` then says why), mean_average_precision and
null_mean_average_precision (the mAP of random rankings with the same list configurations) and
fraction_retrieved (retrieval controls; NaN otherwise), accuracy (classification controls; NaN otherwise),
chance (retrieval: ALPHA, the fraction retrieved expected when nothing is retrievable, BH keeping it at most
alpha; classification: the accuracy expected without signal), p_value, detail.

The retrieval controls' p_value is that of the pooled mAP over all their queries (is anything retrievable at all?)
against the null of the mean of independent random rankings, one per query with its own list configuration
(pooled_p). Not copairs' mAP null, which shares one draw among the queries of a configuration: that is the null of
a single query, and would call a pooled mAP of 36 queries at 0.54 against a null of 0.31 unremarkable (p 0.17).
"""

from __future__ import annotations

import contextlib
import zlib

import numpy as np
import pandas as pd

from paintbench.metrics import BLOCK_ELEMENTS, retrieval_ap
from paintbench.retrieval import (ANNOTATION, CONDITION, PERT, TARGETS, score_condition, consensus, is_negcon, is_query,
                                  with_condition_columns)
from paintbench.significance import Protocol, config_null, fraction_retrieved, p_from_null

WELL, PLATE = "Metadata_Well", "Metadata_Plate"
ALPHA = 0.05
POOLED_BLOCK = 4_000_000  # resampled null values held at once by pooled_p (32 MB of float64)
CONTROLS = ("same_position_controls", "different_position_replicates", "shuffled_replicates",
            "plate_predictability", "nearest_neighbour_target_accuracy")
COLUMNS = ["control", *CONDITION, "n", "mean_average_precision", "null_mean_average_precision",
           "fraction_retrieved", "accuracy", "chance", "p_value", "detail"]
NO_POSITION_CHANGE = "replicates never change well position in this layout"


# --- shared helpers ---------------------------------------------------------------------------------------------

def _row(control: str, condition: dict, n: int = 0, detail: str = "", **values: float) -> dict:
    row = {"control": control, **condition, "n": int(n)}
    for column in COLUMNS[len(CONDITION) + 2 : -1]:
        row[column] = float(values.get(column, np.nan))
    row["detail"] = detail
    return row


def _table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["n"] = table["n"].astype("int64")
    return table


def _conditions(profiles: pd.DataFrame):
    """(condition dict, its rows: query and negcon wells only, fresh index) per condition, in sorted order."""
    profiles = with_condition_columns(profiles)
    for key, sub in profiles.groupby(CONDITION, sort=True):
        sub = sub[is_query(sub) | is_negcon(sub)].reset_index(drop=True)
        yield dict(zip(CONDITION, key)), sub


def _condition_seed(seed: int, condition: dict, salt: str) -> np.random.Generator:
    """A stream that depends on (seed, control, condition) only, never on which other conditions are present."""
    text = "|".join([salt, *(str(condition[c]) for c in CONDITION)])
    return np.random.default_rng([seed, zlib.crc32(text.encode())])


def _single_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency of scikit-learn too
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _expected_ap(ap: pd.DataFrame, null_size: int, seed: int) -> np.ndarray:
    """Per query: the mean AP of its configuration's null (a random ranking of the same list)."""
    k = ap["n_pos_pairs"].to_numpy(np.int64)
    n = ap["n_total_pairs"].to_numpy(np.int64)
    out = np.empty(len(ap))
    for kk, nn in set(zip(k.tolist(), n.tolist())):
        out[(k == kk) & (n == nn)] = float(config_null(kk, nn, null_size, seed).mean())
    return out


def pooled_p(ap: pd.DataFrame, null_size: int, seed: int) -> float:
    """p of the mean AP of every query of `ap` against the null of the mean of independent random rankings, one
    per query: each query's null value is drawn with replacement from its configuration's null (n_pos_pairs,
    n_total_pairs), independently of every other query's. (1 + #null >= observed) / (1 + null_size)."""
    k = ap["n_pos_pairs"].to_numpy(np.int64)
    n = ap["n_total_pairs"].to_numpy(np.int64)
    rng = np.random.default_rng([seed, 0x9001])
    total = np.zeros(null_size)
    configs, counts = np.unique(np.stack([k, n], axis=1), axis=0, return_counts=True)
    per_block = max(1, POOLED_BLOCK // null_size)
    for (kk, nn), count in zip(configs.tolist(), counts.tolist()):
        null = np.asarray(config_null(kk, nn, null_size, seed), np.float64)
        for start in range(0, count, per_block):
            rows = min(per_block, count - start)
            total += null[rng.integers(0, len(null), (rows, null_size))].sum(axis=0)
    observed = float(ap["average_precision"].mean())
    return float(p_from_null(np.sort(total / len(ap)), observed))


def _retrieval_row(control: str, condition: dict, ap: pd.DataFrame, group: list[str], unit: str,
                   protocol: Protocol, null_size: int, seed: int, note: str = "") -> dict:
    """Score per-query APs per `group` with retrieval's machinery and summarize them in one row."""
    ap, scored = score_condition(ap, group, condition, protocol, null_size, seed)
    if scored.empty:
        return _row(control, condition, 0, f"no {unit} with a positive pair to score")
    null_per_query = ap[group].assign(_null=_expected_ap(ap, null_size, seed))
    null_map = float(null_per_query.groupby(group, sort=True)["_null"].mean().mean())
    untestable = int((~scored["testable"]).sum())
    detail = f"{len(scored)} {unit} from {len(ap)} queries"
    if untestable:
        detail += f"; {untestable} untestable (a perfect ranking cannot reach p < {ALPHA})"
    if note:
        detail += f"; {note}"
    return _row(control, condition, len(scored), detail,
                mean_average_precision=scored["mean_average_precision"].mean(),
                null_mean_average_precision=null_map, fraction_retrieved=fraction_retrieved(scored, ALPHA),
                chance=ALPHA, p_value=pooled_p(ap, null_size, seed))


# --- 1. same position -------------------------------------------------------------------------------------------

def same_position_controls(profiles: pd.DataFrame, features: list[str], protocol: Protocol = "cpjump1",
                           null_size: int = 100_000, seed: int = 0) -> pd.DataFrame:
    """Per condition: do negative-control wells retrieve the negcon wells at their position on other plates?

    Queries: negcon wells whose Metadata_Well holds a negcon well on another plate of the condition; positives:
    those wells; negatives: the query plate's negcon wells at other positions; cosine; scored per well position
    (retrieval.score_condition, BH within the condition). High mAP / fraction retrieved: the features see position.
    """
    control, rows = "same_position_controls", []
    for condition, sub in _conditions(profiles):
        if WELL not in sub.columns:
            rows.append(_row(control, condition, 0, f"no {WELL} column: positions unknown"))
            continue
        neg = sub[is_negcon(sub)].reset_index(drop=True)
        n_plates = neg[PLATE].nunique()
        if n_plates < 2:
            rows.append(_row(control, condition, 0, f"negative controls on {n_plates} plate(s): same-position "
                                                    "pairs need negcon wells at one position on >= 2 plates"))
            continue
        plates_per_well = neg.groupby(WELL)[PLATE].nunique()
        shared = plates_per_well.index[plates_per_well >= 2]
        if not len(shared):
            rows.append(_row(control, condition, 0, "no negative-control position is shared by two plates"))
            continue
        ap = retrieval_ap(neg, features, query_mask=neg[WELL].isin(shared).to_numpy(), pos_same=[WELL],
                          pos_diff=[PLATE], neg_same=[PLATE], neg_diff=[WELL])
        rows.append(_retrieval_row(control, condition, ap, [WELL], "well positions", protocol, null_size, seed,
                                   f"negcon wells on {n_plates} plates"))
    return _table(rows)


# --- 2. replicates in other positions ---------------------------------------------------------------------------

def different_position_replicates(profiles: pd.DataFrame, features: list[str], protocol: Protocol = "cpjump1",
                                  null_size: int = 100_000, seed: int = 0) -> pd.DataFrame:
    """Replicate retrieval with positives only among replicate wells in another Metadata_Well (pos_diff), negatives
    the query plate's negcon wells. n = 0 where no perturbation ever changes position (a shared layout)."""
    control, rows = "different_position_replicates", []
    for condition, sub in _conditions(profiles):
        query, negcon = is_query(sub), is_negcon(sub)
        if WELL not in sub.columns:
            rows.append(_row(control, condition, 0, f"no {WELL} column: positions unknown"))
            continue
        if not query.any() or not negcon.any():
            rows.append(_row(control, condition, 0, f"{query.sum()} queries, {negcon.sum()} negative controls"))
            continue
        ap = retrieval_ap(sub, features, query_mask=query, pos_same=[PERT], pos_diff=[WELL], neg_mask=negcon,
                          neg_same=[PLATE])
        if not (ap["n_pos_pairs"] > 0).any():
            rows.append(_row(control, condition, 0, NO_POSITION_CHANGE))
            continue
        rows.append(_retrieval_row(control, condition, ap, [PERT], "perturbations", protocol, null_size, seed,
                                   "positives: replicates in another well position"))
    return _table(rows)


# --- 3. label-shuffled replicates -------------------------------------------------------------------------------

def shuffle_query_labels(sub: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """`sub` with Metadata_broad_sample and its annotation permuted (as one block) among its query wells."""
    rows = np.flatnonzero(is_query(sub))
    columns = [c for c in [PERT, *ANNOTATION] if c in sub.columns]
    out = sub.copy()
    moved = sub.iloc[rng.permutation(rows)][columns].to_numpy()
    for j, column in enumerate(columns):
        out[column] = out[column].astype(object)
        out.loc[out.index[rows], column] = moved[:, j]
    return out


def shuffled_replicates(profiles: pd.DataFrame, features: list[str], protocol: Protocol = "cpjump1",
                        null_size: int = 100_000, seed: int = 0) -> pd.DataFrame:
    """Replicate retrieval (positives: same perturbation; negatives: the query plate's negcon wells) after
    shuffle_query_labels within each condition, seeded by (seed, condition). Every perturbation retrieved here is
    a false discovery: fraction_retrieved is the chain's false-discovery rate, chance (ALPHA) what BH allows."""
    control, rows = "shuffled_replicates", []
    for condition, sub in _conditions(profiles):
        query, negcon = is_query(sub), is_negcon(sub)
        if not query.any() or not negcon.any():
            rows.append(_row(control, condition, 0, f"{query.sum()} queries, {negcon.sum()} negative controls"))
            continue
        shuffled = shuffle_query_labels(sub, _condition_seed(seed, condition, control))
        ap = retrieval_ap(shuffled, features, query_mask=query, pos_same=[PERT], neg_mask=negcon,
                          neg_same=[PLATE])
        rows.append(_retrieval_row(control, condition, ap, [PERT], "shuffled perturbations", protocol, null_size,
                                   seed, f"labels permuted among query wells (seed {seed}): every call is false"))
    return _table(rows)


# --- 4. plate predictability ------------------------------------------------------------------------------------

def _fold_spaces(x: np.ndarray, groups: np.ndarray, folds: int, max_components: int,
                 seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(train rows, test rows, train scores, test scores) per fold: standardized and PCA-reduced on the train
    rows only. Nothing here looks at the labels, so every permutation reuses these spaces."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    n_groups = len(np.unique(groups))
    splitter = GroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
    spaces = []
    for train, test in splitter.split(x, groups=groups):
        scaler = StandardScaler().fit(x[train])
        components = max(1, min(max_components, len(train) - 1, x.shape[1]))
        pca = PCA(n_components=components, svd_solver="full").fit(scaler.transform(x[train]))
        spaces.append((train, test, pca.transform(scaler.transform(x[train])), pca.transform(scaler.transform(x[test]))))
    return spaces


def _centroid_accuracy(spaces: list, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Cross-validated nearest-centroid accuracy of every label row of `labels` (labelings x wells)."""
    correct = np.zeros(labels.shape[0])
    for train, test, z_train, z_test in spaces:
        y_train, y_test = labels[:, train], labels[:, test]
        dist = np.empty((labels.shape[0], len(test), n_classes))
        for c in range(n_classes):
            member = (y_train == c).astype(np.float64)  # labelings x train wells
            count = member.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                centroid = (member @ z_train) / count[:, None]  # labelings x components
            d = ((z_test[None, :, :] - centroid[:, None, :]) ** 2).sum(axis=2)
            dist[:, :, c] = np.where(count[:, None] > 0, d, np.inf)  # a plate absent from training is never chosen
        correct += (dist.argmin(axis=2) == y_test).sum(axis=1)
    return correct / labels.shape[1]


def plate_predictability(profiles: pd.DataFrame, features: list[str], seed: int = 0, permutations: int = 200,
                         folds: int = 5, max_components: int = 50) -> pd.DataFrame:
    """Per condition: how well Metadata_Plate is predicted from negative-control profiles.

    Classifier: nearest centroid (Euclidean) on standardized, PCA-reduced (<= max_components) profiles, scaler and
    PCA fitted on each fold's training wells. Chosen over logistic regression because it has no hyperparameter or
    convergence to tune, and because its preprocessing never looks at the labels: the folds' spaces are computed
    once and every permutation only recomputes class means, so `permutations` cost almost nothing. A plate offset
    (the batch effect to detect) is exactly a shift of the class mean, what a centroid classifier measures.

    Folds: GroupKFold (seeded shuffle) with the well position as the group, so a test well's position is never seen
    in training: plate identity must be read from the plate, not from a position x plate artefact; on a shared
    layout every fold holds every plate. The folds do not depend on the plate labels, so they stay fixed under
    permutation. accuracy: pooled over folds; chance: the share of the most common plate; p_value:
    (1 + #{permuted accuracy >= observed}) / (1 + permutations), plate labels permuted over the condition's negcon
    wells (seeded by (seed, condition)).
    """
    control, rows = "plate_predictability", []
    for condition, sub in _conditions(profiles):
        neg = sub[is_negcon(sub)].reset_index(drop=True)
        labels, plates = pd.factorize(neg[PLATE])
        if len(plates) < 2:
            rows.append(_row(control, condition, 0, f"negative controls on {len(plates)} plate(s): "
                                                    "no plate to tell apart"))
            continue
        groups = neg[WELL].to_numpy() if WELL in neg.columns else np.arange(len(neg))
        if len(np.unique(groups)) < 2:
            rows.append(_row(control, condition, 0, "negative controls at a single well position: no folds"))
            continue
        rng = _condition_seed(seed, condition, control)
        with _single_blas_thread():
            spaces = _fold_spaces(neg[features].to_numpy(np.float64), groups, folds, max_components, seed)
            shuffled = np.stack([rng.permutation(labels) for _ in range(permutations)]) if permutations else \
                np.empty((0, len(labels)), np.int64)
            accuracy = _centroid_accuracy(spaces, np.vstack([labels[None, :], shuffled]), len(plates))
        observed, null = accuracy[0], accuracy[1:]
        chance = np.bincount(labels).max() / len(labels)
        p = (1.0 + np.sum(null >= observed - 1e-12)) / (1.0 + permutations)
        detail = (f"{len(neg)} negcon wells on {len(plates)} plates; nearest centroid, {len(spaces)}-fold "
                  f"GroupKFold by position; {permutations} permutations (mean permuted accuracy "
                  f"{null.mean() if permutations else np.nan:.3f})")
        rows.append(_row(control, condition, len(neg), detail, accuracy=observed, chance=chance, p_value=p))
    return _table(rows)


# --- 5. 1-NN drug target classification -------------------------------------------------------------------------

def _padded(sets: list[set]) -> np.ndarray:
    """(rows, largest set) integer codes of each row's members, -1 after its last."""
    vocab = {x: i for i, x in enumerate(sorted({x for s in sets for x in s}))}
    out = np.full((len(sets), max((len(s) for s in sets), default=0)), -1, dtype=np.int64)
    for i, members in enumerate(sets):
        out[i, : len(members)] = sorted(vocab[x] for x in members)
    return out


def _share(padded: np.ndarray, a: np.ndarray, b: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Whether rows a[k] and b[k] (same shape, any) have a member in common; pairs in blocks, no rows x rows."""
    a, b = np.asarray(a), np.asarray(b)
    flat_a, flat_b, out = a.ravel(), b.ravel(), np.zeros(a.size, bool)
    for s in range(0, a.size, block):
        left, right = padded[flat_a[s : s + block]], padded[flat_b[s : s + block]]
        for i in range(padded.shape[1]):
            column = left[:, i, None]
            out[s : s + block] |= ((right == column) & (column >= 0)).any(axis=1)
    return out.reshape(a.shape)


def _targets(value: object) -> set[str]:
    return {t for t in value.split("|") if t} if isinstance(value, str) else set()


def nearest_neighbours(x: np.ndarray, positions: np.ndarray | None = None,
                       block: int = BLOCK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """(index of each row's most cosine-similar allowed row, whether it has one). Not allowed: the row itself and,
    with `positions` (padded members, _padded), the rows sharing a member with it. Ties go to the lower index. In
    row blocks of at most `block` similarities: nothing holds a rows x rows matrix."""
    n = len(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    nn, has = np.zeros(n, np.int64), np.zeros(n, bool)
    step = max(1, block // max(1, n))
    every = np.arange(n)
    for s in range(0, n, step):
        rows = every[s : s + step]
        sim = unit[rows] @ unit.T
        sim[np.arange(len(rows)), rows] = -np.inf
        if positions is not None and positions.shape[1]:
            sim[_share(positions, np.broadcast_to(rows[:, None], sim.shape), np.broadcast_to(every, sim.shape))] = -np.inf
        nn[rows] = sim.argmax(axis=1)
        has[rows] = np.isfinite(sim.max(axis=1))
    return nn, has


def nearest_neighbour_target_accuracy(profiles: pd.DataFrame, features: list[str], draws: int = 1000,
                                      seed: int = 0) -> pd.DataFrame:
    """Per compound condition: the share of compounds whose nearest other compound shares a target.

    Compounds: median consensus of their query wells (retrieval.consensus), those with a Metadata_target_list
    ('|'-separated targets) only. Each compound's neighbour: the most cosine-similar other compound that shares
    no well position with it (Metadata_Well of their wells), so a position signal cannot pick it; a compound
    with no such compound is left out. chance: the mean accuracy over `draws` permutations of the target lists
    among the compounds (seeded by (seed, condition)); p_value: (1 + #{permuted >= observed}) / (1 + draws).
    Genetic conditions get a row with n = 0.
    """
    control, rows = "nearest_neighbour_target_accuracy", []
    for condition, sub in _conditions(profiles):
        if condition["Metadata_modality"] != "compound":
            rows.append(_row(control, condition, 0, "not a compound condition: target classification scores "
                                                    "compounds (Metadata_modality 'compound')"))
            continue
        treated = sub[is_query(sub)]
        if TARGETS in treated.columns:
            treated = treated[treated[TARGETS].map(lambda v: bool(_targets(v)))]
        else:
            treated = treated.iloc[:0]
        if treated[PERT].nunique() < 2:
            rows.append(_row(control, condition, 0, f"{treated[PERT].nunique()} compound(s) with a "
                                                    f"{TARGETS}: need two"))
            continue
        table = consensus(treated, features, [PERT])
        targets = _padded([_targets(v) for v in table[TARGETS]])
        note, positions = "excluding compounds that share a well position", None
        if WELL in treated.columns:
            positions = _padded(list(treated.groupby(PERT, sort=True)[WELL].agg(set).reindex(table[PERT])))
        else:
            note = f"no {WELL} column: no position exclusion"
        nn, has = nearest_neighbours(table[features].to_numpy(np.float64), positions)
        scored = np.flatnonzero(has)
        if not len(scored):
            rows.append(_row(control, condition, 0, "every compound shares a well position with every other"))
            continue
        observed = float(_share(targets, scored, nn[scored]).mean())
        rng = _condition_seed(seed, condition, control)
        null = np.zeros(draws)
        for first in range(0, draws, 64):  # compound i gets the targets of perm[:, i]; the draws of one stream
            perm = np.argsort(rng.random((min(64, draws - first), len(table))), axis=1)
            null[first : first + len(perm)] = _share(targets, perm[:, scored], perm[:, nn[scored]]).mean(axis=1)
        chance = float(null.mean()) if draws else np.nan
        p = (1.0 + np.sum(null >= observed - 1e-12)) / (1.0 + draws)
        detail = (f"{len(scored)} of {len(table)} compounds with targets have a neighbour; 1-NN by cosine, "
                  f"{note}; {draws} target permutations")
        rows.append(_row(control, condition, len(scored), detail, accuracy=observed, chance=chance, p_value=p))
    return _table(rows)


# --- all of them ------------------------------------------------------------------------------------------------

def layout_controls(profiles: pd.DataFrame, features: list[str], protocol: Protocol = "cpjump1",
                    null_size: int = 100_000, seed: int = 0, draws: int = 1000, *,
                    permutations: int = 200) -> pd.DataFrame:
    """Every control of this module on one table of well profiles: one row per (control, condition), COLUMNS.

    draws: target-list permutations of the 1-NN control; permutations: plate-label permutations of
    plate_predictability."""
    profiles = with_condition_columns(profiles)
    tables = [
        same_position_controls(profiles, features, protocol, null_size, seed),
        different_position_replicates(profiles, features, protocol, null_size, seed),
        shuffled_replicates(profiles, features, protocol, null_size, seed),
        plate_predictability(profiles, features, seed, permutations),
        nearest_neighbour_target_accuracy(profiles, features, draws, seed),
    ]
    return pd.concat([t for t in tables if not t.empty], ignore_index=True).reindex(columns=COLUMNS) \
        if any(not t.empty for t in tables) else _table([])
