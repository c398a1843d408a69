"""Stage 1 as a library: target specs (`Dense`, `TopK`, `Sampled`), `LogitWriter` for your own
inference loop, and `write_logits` to run a torch teacher over any softtargets dataset. Every
store kind is written through one write session (lease, resume, torchrun ranks). See
docs/API.md, "Write a store from Python"."""

from softtargets.write.api import write_logits
from softtargets.write.imports import import_topk
from softtargets.write.targets import (Dense, Sampled, Targets, TopK, TopKLogProbs, register,
                                       targets_from_json)
from softtargets.write.writer import LogitWriter

__all__ = ["Dense", "LogitWriter", "Sampled", "Targets", "TopK", "TopKLogProbs", "import_topk",
           "register", "targets_from_json", "write_logits"]
