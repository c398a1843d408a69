"""Augmentations for stored views: parameters drawn per (sample, view), replayed exactly.

`Views` asks stage 1 for V views per sample (`write_logits(..., views=Views(...))`);
`AugmentSpec` says what a view may be (shift, rotate, scale, flip, user augmentations);
`Mix` makes views mixup or cutmix of two samples' views, mixed before the teacher sees them.
"""

from softtargets.augment.mix import Mix
from softtargets.augment.source import ViewInputs, Views
from softtargets.augment.views import AugmentSpec, Augmentation

__all__ = ["AugmentSpec", "Augmentation", "Mix", "ViewInputs", "Views"]
