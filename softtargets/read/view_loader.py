"""Stage 2 of views stores: replay stored augmented views (docs/FORMAT.md "Augmented views").

Each epoch every sample draws one of its V stored views (`views.choose_views`: a function of
(seed, epoch, sample id) only), the loader rebuilds that view's input from the stored parameters
(`views.apply_views`) and yields it with that view's teacher target. So the student sees the
exact input the teacher saw for the target it is trained on.

* `ViewData`: the whole views store in memory; one teacher, or an ensemble
  (`member_view_logits` (M, N, V, C), combined at the student's T by the ensemble rule).
Streamed replay, for views stores far larger than RAM, is the public path's
(read.stream.StreamingDistillDataset with view="replay", read.replay).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from softtargets.format import ensemble
from softtargets.format.digests import DigestCheck
from softtargets.errors import ConfigError, StoreMismatchError
from softtargets.format.identity import check_dataset
from softtargets.format.store import chunk_slice, read_meta
from softtargets.format.chunks import ChunkReader, check_chunk, read_rows
from softtargets.augment.views import (MEMBER_VIEW_LOGITS, VIEW_LOGITS, VIEW_PARAMS,
                               apply_views, choose_views, views_spec)


def views_meta(url: str, split: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(meta, group, views attribute) of a complete views store computed on `split`."""
    meta, group = read_meta(url)
    info = meta.extra.get("views")
    if info is None or not meta.complete:
        raise StoreMismatchError(f"store {url!r} is not a complete views store (written by "
                                 "teacher-logits --views V); got "
                                 f"{'an incomplete store' if info else 'a store without views'}")
    check_dataset(meta, url, split.identity())
    if info.get("mix"):
        raise ConfigError(f"store {url!r} holds mixed views; replay them with "
                          "DistillDataset(data, SoftTargets(store, view='replay')) or "
                          "StreamingDistillDataset(..., view='replay'), which fetch partners")
    return meta, group, info


def member_rows(group: Any, meta: Any, url: str, ids: np.ndarray) -> np.ndarray:
    """member_view_logits (M, N, V, C) float16, chunk by chunk, each chunk decoded and checked."""
    array = group[MEMBER_VIEW_LOGITS]
    digests = DigestCheck(group, meta, url)
    parts = []
    for index in range(-(-meta.n // meta.chunk_rows)):
        sl = chunk_slice(meta, index)
        z = read_rows(array, url, MEMBER_VIEW_LOGITS, index, sl, axis=1)  # (M, R, V, C)
        check_chunk(url, meta.dataset["n"], sl, ids[sl], np.moveaxis(z, 1, 0),
                    name=MEMBER_VIEW_LOGITS, index=index)
        for m, member in enumerate(z):
            digests.check_rows(MEMBER_VIEW_LOGITS, sl.start, member, member=m)
        parts.append(z)
    return np.concatenate(parts, axis=1)


class ViewData:
    """Stage 2 over a views store, in memory: per epoch each sample replays one stored view.

    Yields (inputs (B, D) float32, labels (B,), target (B, C)): the view's logits (one teacher,
    `log_probs` False) or, for an ensemble, the members' combination at `temperature` as
    log-probabilities (`log_probs` True). rows: a transfer subset of sample ids (None: all).
    """

    def __init__(self, split: Any, url: str, *, rows: np.ndarray | None = None,
                 temperature: float = 1.0, rule: str | None = None) -> None:
        meta, group, info = views_meta(url, split)
        self.spec = views_spec(info)
        self.views = int(info["views"])
        self.log_probs = MEMBER_VIEW_LOGITS in group
        # every chunk decoded and checked (crc32c, ids, never-written rows), as when streaming
        reader = ChunkReader(url, (VIEW_PARAMS,) if self.log_probs else (VIEW_PARAMS, VIEW_LOGITS))
        ids, self.view_params, *logits = reader.read_all()  # (N,), (N, V, P) float32
        if (ids != np.arange(len(ids))).any():
            raise StoreMismatchError(f"store {url!r}: sample_id is not 0..N-1")
        if self.log_probs:  # ensemble: (M, N, V, C), combined per batch at T
            self.rule = ensemble.check_rule(
                rule or meta.extra.get(ensemble.ENSEMBLE_KEY, {}).get("default_rule",
                                                                      "arithmetic"))
            self.member_view_logits = member_rows(group, meta, url, ids)
        else:
            self.view_logits = logits[0]  # (N, V, C) float16
        self.temperature = temperature
        self.index = np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.index) and (self.index.min() < 0 or self.index.max() >= len(ids)):
            raise StoreMismatchError(f"store {url!r} has rows 0..{len(ids) - 1}; the transfer "
                                     "set asks for sample ids outside it")
        self.images = split.images
        self.labels = torch.from_numpy(split.labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.index)

    def num_batches(self, batch_size: int, epoch: int = 0) -> int:
        return -(-len(self) // batch_size)

    def draw_views(self, *, epoch: int, seed: int) -> np.ndarray:
        """View index (R,) of every transfer row this epoch (see views.choose_views)."""
        return choose_views(self.index, views=self.views, seed=seed, epoch=epoch)

    def batches(self, *, batch_size: int, epoch: int,
                seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = self.index[torch.randperm(len(self), generator=g).numpy()]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            v = choose_views(idx, views=self.views, seed=seed, epoch=epoch)
            x = apply_views(self.images[idx], self.view_params[idx, v], spec=self.spec)
            yield x, self.labels[idx], self.target(idx, v)

    def target(self, idx: np.ndarray, v: np.ndarray) -> torch.Tensor:
        """(B, C) float32: logits of view v[i] of row idx[i], or the ensemble's log-probs."""
        if not self.log_probs:
            return torch.from_numpy(self.view_logits[idx, v].astype(np.float32))
        z = self.member_view_logits[:, idx, v]  # (M, B, C)
        logp = ensemble.combine_log_probs(z, rule=self.rule, temperature=self.temperature)
        return torch.from_numpy(logp.astype(np.float32))
