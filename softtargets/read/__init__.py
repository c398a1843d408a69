"""Stage 2 as a library: a store's soft targets by sample id (`SoftTargets`), the user's dataset
with its targets (`DistillDataset`, or streamed in bounded memory: `StreamingDistillDataset`),
the batch types, and the distillation loss for each. See docs/API.md."""

from softtargets.read.distill import SparseTargets
from softtargets.read.batch import DenseTarget, PositionTargets, collate, stack_targets
from softtargets.read.dataset import DistillDataset
from softtargets.read.loss import distillation_loss
from softtargets.read.stream import StreamingDistillDataset
from softtargets.read.targets import SoftTargets

__all__ = [
    "DenseTarget", "DistillDataset", "PositionTargets", "SoftTargets", "SparseTargets",
    "StreamingDistillDataset", "collate", "distillation_loss", "stack_targets",
]
