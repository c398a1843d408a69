"""The views axis of a LogitWriter: V augmented views per sample in `view_logits` (N, V, C),
or every member's in `member_view_logits` (M, N, V, C), their parameters in `view_params`
(N, V, P), and view 0 as the row's `logits` (docs/FORMAT.md, "Augmented views"). numpy only
beside the Views option."""

from __future__ import annotations

from typing import Any

import numpy as np

from softtargets.errors import ConfigError
from softtargets.format.schema import MEMBER_VIEW_LOGITS, VIEW_LOGITS, VIEW_PARAMS
from softtargets.write.session import RowArray
from softtargets.write.targets import Dense, Targets


def check_views(views: Any, targets: Targets, positions: int | None) -> Any:
    """The Views option, or None; refuses what a views store cannot hold."""
    if views is None:
        return None
    from softtargets.augment.source import Views  # torch: only for stores with views
    if not isinstance(views, Views):
        raise ConfigError(f"views must be softtargets.Views(count=V, augment=...), got "
                          f"{type(views).__name__}")
    if not isinstance(targets, Dense) or positions:
        raise ConfigError("a views store keeps every view's dense logits: views= needs Dense() "
                          "targets and one row per sample; drop targets= or views=")
    views.check_bound()
    return views


def views_layout(views: Any, *, members: int | None,
                 num_classes: int) -> tuple[tuple[RowArray, ...], dict[str, Any]]:
    """(the view arrays, the `views` attribute) of V views of one teacher or of M members."""
    v = views.count
    logits = (RowArray(MEMBER_VIEW_LOGITS, (v, num_classes), "float16",
                       ("member", "row", "view", "class"), members=members) if members else
              RowArray(VIEW_LOGITS, (v, num_classes), "float16", ("row", "view", "class")))
    params = RowArray(VIEW_PARAMS, (v, views.num_params), "float32",
                      ("row", "view", "param"))  # NaN: a user augmentation is off
    return (logits, params), {"views": views.info()}


def split_views(views: Any, values: np.ndarray, sample_ids: np.ndarray, *,
                members: int | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(view 0 of `values` (rows, [M,] V, C) -> (rows, [M,] C), the unit's view arrays)."""
    name = MEMBER_VIEW_LOGITS if members else VIEW_LOGITS
    return values[..., 0, :], {name: values, VIEW_PARAMS: views.params(sample_ids)}
