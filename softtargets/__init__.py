"""softtargets: offline soft targets for knowledge distillation (Hinton, Vinyals, Dean 2015).

Stage 1 writes a teacher's outputs into a checked Zarr v3 store; stage 2 reads them into the
student's data loader and loss. The public API:

    write_logits(teacher, dataset, store, *, targets=Dense() | TopK(k) | Sampled(k), ...)
    write_logits(..., views=Views(count=V, augment=AugmentSpec(...) | "shift=2,flip=1"))
    write_logits(..., views=Views(count=V, mix=Mix(kind="mixup" | "cutmix", alpha=1.0)))
    LogitWriter(store, ...).append(sample_ids, logits); .close()     # your own inference loop
    SoftTargets(store, *, temperature, rule, tail, view)              # targets by sample id
    DistillDataset(dataset, targets)                                  # map-style torch Dataset
    DistillDataset(dataset, SoftTargets(store, view="replay"))        # replay stored views
    StreamingDistillDataset(dataset, store, ...)                      # IterableDataset, any size
    distillation_loss(student_logits, targets, labels, *, temperature, alpha, loss="kl"|"mse")
    verify_store(store), store_info(store)                            # the receiving team's checks
    import_topk(records, store, *, dataset), export_topk(store, out)  # top-k log-prob records
    hf_teacher(path, *, num_classes)                                  # a local HF causal LM

Datasets: IDXDataset, ImageFolder, CIFAR, TokenSequences, from_tensors, wrap (docs/DATASETS.md);
TokenizerIdentity binds a token store to its tokenizer. Language models end to end:
softtargets.recipes.lm (docs/LM.md).
Names are imported on first use, so `import softtargets.format.store` (the format layer, numpy and zarr
only) does not import torch. docs/API.md has runnable examples.
"""

from __future__ import annotations

import importlib
from typing import Any

from softtargets.errors import (SofttargetsError, StoreError, StoreMetadataError,
                                StoreMismatchError)

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY = {
    **dict.fromkeys(("Dense", "TopK", "Sampled", "TopKLogProbs", "LogitWriter",
                     "write_logits", "import_topk"), "softtargets.write"),
    **dict.fromkeys(("Views", "AugmentSpec", "Mix"), "softtargets.augment"),
    **dict.fromkeys(("SoftTargets", "DistillDataset", "StreamingDistillDataset",
                     "distillation_loss", "DenseTarget", "SparseTargets", "PositionTargets"),
                    "softtargets.read"),
    **dict.fromkeys(("IDXDataset", "ImageFolder", "CIFAR", "TokenSequences", "from_tensors",
                     "wrap"), "softtargets.datasets"),
    "TokenizerIdentity": "softtargets.datasets.tokenizer",
    "verify_store": "softtargets.tools.verify",
    "store_info": "softtargets.tools.provenance",
    "export_topk": "softtargets.tools.export",
    "hf_teacher": "softtargets.write.hf_teacher",
}

__all__ = sorted([*_LAZY, "SofttargetsError", "StoreError", "StoreMetadataError",
                  "StoreMismatchError", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'softtargets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
