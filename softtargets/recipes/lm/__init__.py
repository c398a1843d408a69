"""Language-model distillation end to end (docs/LM.md): a corpus of whole files with a locally
trained byte-level BPE, a nanoGPT-style teacher, per-token stores (dense, top-k, sampled) with
the tokenizer identity, and a smaller student trained from the streamed store.

    build_corpus(out, config=CorpusConfig())      lm_teacher(corpus, out)
    lm_teacher_logits(corpus, teacher, store, kind="topk", k=32, seq_len=64, sequences=1024)
    lm_student(corpus, out, store=store)          run_experiment(corpus, teacher, out)

Needs the optional `lm` extra (Hugging Face tokenizers) to build a corpus.
"""

from softtargets.recipes.lm.corpus import Corpus, CorpusConfig, build_corpus, open_corpus
from softtargets.recipes.lm.experiment import ARMS, ExperimentConfig, run_experiment
from softtargets.recipes.lm.logits import lm_targets, write_lm_logits
from softtargets.recipes.lm.model import GPT, GPTConfig, load_model, save_model
from softtargets.recipes.lm.pipeline import (STUDENT, TEACHER, lm_student, lm_teacher,
                                             lm_teacher_logits)
from softtargets.recipes.lm.train import (DistillConfig, LMTrainConfig, evaluate, train_student,
                                          train_teacher)

__all__ = [
    "ARMS", "Corpus", "CorpusConfig", "DistillConfig", "ExperimentConfig", "GPT", "GPTConfig",
    "LMTrainConfig", "STUDENT", "TEACHER", "build_corpus", "evaluate", "lm_student",
    "lm_targets", "lm_teacher", "lm_teacher_logits", "load_model", "open_corpus",
    "run_experiment", "save_model", "train_student", "train_teacher", "write_lm_logits",
]
