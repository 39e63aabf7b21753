"""Replicate retrieval tracked during pretraining (`vit.track_every`): reported in train_log.tsv, never used to
pick a checkpoint, so perturbation labels stay out of training.

A fixed sample is drawn once from the pretraining crops: up to `crops_per_well` crops of every well (seeded). At a
tracked step the current encoder embeds them, crop embeddings are averaged per well, wells are robust-z-scored
per plate against the plate's negative controls (as the profiles stage does), and the mean over queries of
replicate-retrieval AP is returned: positives are the other wells of the same perturbation in the same condition,
negatives the query plate's controls, as in the benchmark (paintbench.retrieval.replicate_retrieval). It is a
cheap proxy of the benchmark: wells of the pretraining sample only, mean pooling of a few crops per well.
It scores a model with the benchmark's own code, so it sits beside retrieval, above the ViT branch it watches:
the command line hands `replicate_tracker(...)` to paintbench.vit.train.pretrain as a callable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from paintbench.metrics import retrieval_ap
from paintbench.profiles import annotate, normalize
from paintbench.retrieval import CONDITION, PERT, is_negcon, is_query, with_condition_columns
from paintbench.vit.core import pool_tokens, resize_to

log = logging.getLogger(__name__)
WELL = ["Metadata_Plate", "Metadata_Well"]


def tracking_sample(index: pd.DataFrame, crops_per_well: int, seed: int) -> np.ndarray:
    """Positions (into `index`) of up to crops_per_well crops of each well, a seeded choice fixed for the run."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(rows, min(crops_per_well, len(rows)), replace=False)
              for rows in index.groupby(WELL, sort=True).indices.values()]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def mean_replicate_ap(wells: pd.DataFrame, features: list[str]) -> float:
    """Mean replicate-retrieval AP over every query well of every condition (NaN when nothing is scorable)."""
    wells = with_condition_columns(normalize(wells, features))
    aps = []
    for _, sub in wells.groupby(CONDITION, sort=True):
        sub = sub.reset_index(drop=True)
        query, negcon = is_query(sub), is_negcon(sub)
        if query.any() and negcon.any():
            ap = retrieval_ap(sub, features, query_mask=query, pos_same=[PERT], neg_mask=negcon,
                              neg_same=["Metadata_Plate"])
            aps.append(ap.loc[ap["n_pos_pairs"] > 0, "average_precision"].to_numpy())
    values = np.concatenate(aps) if aps else np.zeros(0)
    return float(values.mean()) if len(values) else float("nan")


def replicate_tracker(crops: torch.utils.data.Dataset, index: pd.DataFrame, metadata_dir: str | Path | None,
                      img_size: int, pooling: str, crops_per_well: int = 8, batch_size: int = 256,
                      seed: int = 0) -> Callable[[torch.nn.Module], float]:
    """A function encoder -> mean replicate AP on a fixed sample of `crops` (a dataset whose item k is index row k)."""
    sample = tracking_sample(index, crops_per_well, seed)
    images = torch.stack([crops[int(k)] for k in sample]) if len(sample) else torch.zeros(0)
    keys = index.iloc[sample][WELL].reset_index(drop=True)
    wells = keys.drop_duplicates().reset_index(drop=True)
    labels = annotate(wells.assign(_row=np.arange(len(wells))), metadata_dir)
    well_of_crop = keys.merge(labels[WELL + ["_row"]], on=WELL, how="left")["_row"].to_numpy()
    log.info("tracking replicate retrieval on %d crops of %d wells", len(sample), len(wells))

    def track(encoder: torch.nn.Module) -> float:
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        parts = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = resize_to(images[start:start + batch_size].to(device), img_size)
                parts.append(pool_tokens(encoder, batch, pooling).cpu().double().numpy())
        encoder.train(was_training)
        emb = np.concatenate(parts)
        sums = np.zeros((len(wells), emb.shape[1]))
        np.add.at(sums, well_of_crop, emb)
        means = sums / np.bincount(well_of_crop, minlength=len(wells))[:, None]
        features = [f"emb_{j:04d}" for j in range(means.shape[1])]
        table = pd.concat([labels.drop(columns="_row"), pd.DataFrame(means[labels["_row"]], columns=features)], axis=1)
        return mean_replicate_ap(table, features)

    return track
