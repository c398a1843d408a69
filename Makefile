# softtargets: `make student` runs everything from nothing; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
DATASET ?= fashion-mnist
RUN ?= runs/$(DATASET)
# The teacher of `make student`: a small CNN (cnn: 796 test errors on Fashion-MNIST, clearly better
# than the 784-800-800-10 student's 988) or the paper's MLP 784-1200-1200-10 (mlp: 995, no better
# than the student). Measured in README.
TEACHER_ARCH ?= cnn
ifeq ($(TEACHER_ARCH),cnn)
TEACHER_EPOCHS ?= 15
TEACHER_FLAGS ?= --arch cnn --hidden 16,32,128 --max-norm 0 --dropout 0.2
else ifeq ($(TEACHER_ARCH),mlp)
TEACHER_EPOCHS ?= 30
TEACHER_FLAGS ?= --arch mlp --hidden 1200,1200
else
$(error TEACHER_ARCH must be cnn or mlp, got '$(TEACHER_ARCH)')
endif
# The last VAL_ROWS training rows are held out: teacher and students train on the rest, and the
# student's T and ALPHA were chosen on them (make choose-recipe: T=10 472 validation errors, T=5
# 474, hard labels 518; README), not on the test set.
VAL_ROWS ?= 5000
STUDENT_EPOCHS ?= 20
STUDENT_LR ?= 0.05
T ?= 10
ALPHA ?= 0.5
ST := $(VENV)/bin/softtargets
PY := $(VENV)/bin/python

.PHONY: setup data teacher teacher-logits student baseline distilled summary test test-slow clean \
	help choose-recipe FORCE teachers ensemble-logits report report-long report-quick report-setup \
	bench bench-sparse views-experiment bench-codecs scale-sim gpu-check report-patient \
	patient-snapshot

help:
	@echo "make student    set-up, data, teacher, teacher-logits, baseline and distilled student"
	@echo "make test       the test suite (slow end-to-end tests: make test-slow)"
	@echo "make teachers ENSEMBLE=5   train ENSEMBLE teachers (seeds 0..ENSEMBLE-1; TEACHERS_FLAGS=...); make ensemble-logits"
	@echo "make report     the paper's experiments -> reports/ (make report-quick: a few minutes;"
	@echo "                make report-long: students 100 epochs -> reports/long)"

	@echo "make report-patient   stored views / mixed views / online matching -> reports/patient"
	@echo "                (QUICK=1: minutes; runs resume and skip finished (arm, seed) runs;"
	@echo "                make patient-snapshot keeps unfinished runs in the committed ledger)"
	@echo "make bench      stage 1 and stage 2 speed benchmarks, one table (BENCH_ARGS=...)"
	@echo "make gpu-check  the GPU path measured (needs CUDA); make bench-codecs, make scale-sim"
	@echo "make choose-recipe   T x alpha grid on the VAL_ROWS held-out rows, then 3 seeds (README)"
	@echo "variables: DATASET=$(DATASET) TEACHER_ARCH=$(TEACHER_ARCH) (cnn|mlp)" \
		"TEACHER_EPOCHS=$(TEACHER_EPOCHS) VAL_ROWS=$(VAL_ROWS) STUDENT_EPOCHS=$(STUDENT_EPOCHS)" \
		"STUDENT_LR=$(STUDENT_LR) T=$(T) ALPHA=$(ALPHA)"

setup: $(VENV)/.installed

# Pinned: torch==2.13.0 (a looser pin pulls a multi-GB CUDA build), zarr 3.1.x, numcodecs 0.16.x.
# torch goes in first, alone: resolved together with the extras, pip picked PyPI's CUDA build of
# 2.13.0 over the machine's local CPU wheel; once installed, 2.13.0+cpu satisfies the pin.
$(VENV)/.installed: pyproject.toml
	@t0=$$(date +%s); \
	$(PYTHON) -m venv $(VENV) && \
	$(VENV)/bin/pip install --quiet 'torch==2.13.0' && \
	$(VENV)/bin/pip install --quiet -e '.[test]' && \
	touch $@ && \
	echo "setup: $(VENV) with $$($(PY) -c 'import torch, zarr, numcodecs; print(f"torch {torch.__version__}, zarr {zarr.__version__}, numcodecs {numcodecs.__version__}")') ($$(( $$(date +%s) - t0 )) s)"

data: setup
	$(ST) data --dataset $(DATASET)

# Each step's settings are saved beside its output (*.args) and the step reruns when they change:
# file dates alone would keep a CNN teacher for TEACHER_ARCH=mlp, or a student of another T.
DATA_ARGS = --dataset $(DATASET) --val-rows $(VAL_ROWS)
TEACHER_ARGS = $(DATA_ARGS) --epochs $(TEACHER_EPOCHS) $(TEACHER_FLAGS)
BASELINE_ARGS = $(DATA_ARGS) --epochs $(STUDENT_EPOCHS) --lr $(STUDENT_LR)
STUDENT_ARGS = $(BASELINE_ARGS) -T $(T) --alpha $(ALPHA)
define settings
	@mkdir -p $(@D); [ "$$(cat $@ 2>/dev/null)" = "$(1)" ] || echo "$(1)" > $@
endef
$(RUN)/teacher.args: FORCE ; $(call settings,$(TEACHER_ARGS))
$(RUN)/baseline.args: FORCE ; $(call settings,$(BASELINE_ARGS))
$(RUN)/student.args: FORCE ; $(call settings,$(STUDENT_ARGS))
FORCE:

teacher: $(RUN)/teacher.pt
$(RUN)/teacher.pt: $(RUN)/teacher.args | data
	$(ST) train-teacher $(TEACHER_ARGS) --out $@ --overwrite

teacher-logits: $(RUN)/teacher-logits.ok
$(RUN)/teacher-logits.ok: $(RUN)/teacher.pt
	$(ST) teacher-logits $(DATA_ARGS) --teacher $< --store $(RUN)/teacher-logits.zarr --overwrite
	@touch $@

baseline: $(RUN)/baseline/metrics.json
$(RUN)/baseline/metrics.json: $(RUN)/baseline.args | data
	$(ST) baseline $(BASELINE_ARGS) --out $(RUN)/baseline

distilled: $(RUN)/student/metrics.json
$(RUN)/student/metrics.json: $(RUN)/teacher-logits.ok $(RUN)/student.args
	$(ST) student $(STUDENT_ARGS) --store $(RUN)/teacher-logits.zarr --out $(RUN)/student

student: $(RUN)/student/metrics.json $(RUN)/baseline/metrics.json
	@$(ST) summary $(RUN)

# The grid behind T and ALPHA (scripts/choose_recipe.py; resumes from saved students)
RECIPE_FLAGS ?=
choose-recipe: $(RUN)/teacher-logits.ok
	$(PY) scripts/choose_recipe.py --store $(RUN)/teacher-logits.zarr --out $(RUN)/recipe \
		--dataset $(DATASET) --val-rows $(VAL_ROWS) --epochs $(STUDENT_EPOCHS) \
		--lr $(STUDENT_LR) $(RECIPE_FLAGS)

summary:
	@$(ST) summary $(RUN)

test: setup
	$(VENV)/bin/pytest -q

test-slow: setup
	$(VENV)/bin/pytest -q -m slow

# Sparse top-k / sampled stores vs dense fp16 (C = 32,000 synthetic and Fashion-MNIST) and
# students from each; uses $(RUN)/teacher.pt when it exists, else trains a small teacher.
bench-sparse: setup
	$(PY) scripts/bench_sparse.py --out runs/bench-sparse \
		$$(test -f $(RUN)/teacher.pt && echo --teacher $(RUN)/teacher.pt)

# Speed goals: ratios measured side by side in one run (a few minutes on 2 cores).
# Full size: make bench BENCH_ARGS="--n 1000000 --student-rows 60000 --cnn-rows 10000"
bench: setup bench-sparse
	$(PY) scripts/bench.py $(BENCH_ARGS)

# Codec of each store kind by measurement (scripts/bench_codecs.py; a few minutes on 2 cores)
bench-codecs: setup
	$(PY) scripts/bench_codecs.py

# Scale by simulation: 1/100 of a 1.28M x 1,000 x 32-view store, 1/1,000,000 of a 10B-token
# top-32 store, measured and extrapolated (docs/SCALE.md)
scale-sim: setup
	$(PY) scripts/scale_sim.py

# Where a CUDA device is lent: stage 1 fp16 and stage 2 on the GPU (< 8 min on an H200);
# `make bench` then adds its rows (runs/gpu-check/results.json) to its table
gpu-check: setup
	PYTHON=$(PY) scripts/gpu_check.sh runs/gpu-check

clean:
	rm -rf runs

# --- ensembles and the paper's experiments ----------------------------------------------
ENSEMBLE ?= 5
TEACHER_SEEDS := $(shell seq 0 $$(( $(ENSEMBLE) - 1 )))
TEACHER_FILES := $(foreach s,$(TEACHER_SEEDS),$(RUN)/teachers/teacher-$(s).pt)

# TEACHERS_FLAGS: the members' architecture, by default that of `make student`'s teacher
TEACHERS_FLAGS ?= $(TEACHER_FLAGS)
teachers: $(TEACHER_FILES)
$(RUN)/teachers/teacher-%.pt: | data
	$(ST) train-teacher --dataset $(DATASET) --epochs $(TEACHER_EPOCHS) --seed $* --out $@ --quiet \
		$(TEACHERS_FLAGS)

ensemble-logits: $(RUN)/ensemble-logits.ok
$(RUN)/ensemble-logits.ok: $(TEACHER_FILES)
	$(ST) teacher-logits --dataset $(DATASET) $(foreach f,$^,--teacher $(f)) \
		--store $(RUN)/ensemble-logits.zarr --overwrite
	@touch $@

# matplotlib for the figures (optional `report` extra)
report-setup: setup
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install --quiet -e '.[report]'

# EXPERIMENT_FLAGS e.g. "--teachers 5 --teacher-epochs 30" for longer settings
EXPERIMENT_FLAGS ?=
report: report-setup data
	$(PY) scripts/experiments.py --dataset $(DATASET) $(EXPERIMENT_FLAGS)

# The longer setting of the README (students 100 epochs; the 784-800-800-10 student only):
# about 81 min on 2 cores from nothing (measured: 69.5 min with the default run's teachers and
# stores copied into $(RUN)/paper-long, plus 10.4 min for the teachers, 1 min for stage 1)
report-long: report-setup data
	$(PY) scripts/experiments.py --dataset $(DATASET) --student-epochs 100 --student mlp:800,800 \
		--out $(RUN)/paper-long --reports reports/long $(EXPERIMENT_FLAGS)

report-quick: report-setup data
	$(PY) scripts/experiments.py --quick --dataset $(DATASET) $(EXPERIMENT_FLAGS)

# patient and consistent distillation: hard labels, clean targets, stored views V=4/16/64, stored
# mixed views, online function matching; choices on the VAL rows, 3 seeds. QUICK=1: minutes.
report-patient: report-setup data
	$(PY) scripts/patient_experiment.py $(if $(QUICK),--quick --reports reports/patient-quick)

# before a session ends: unfinished patient runs' last saved epochs into the committed ledger
# (reports/patient/ledger), where the next checkout's `make report-patient` resumes them
patient-snapshot: setup
	$(PY) scripts/patient_experiment.py --snapshot $(if $(QUICK),--quick --reports reports/patient-quick)

# augmentation-consistent soft targets, (a)-(d) side by side; QUICK=1 for a small run
# VIEWS_TEACHER: any softtargets checkpoint, e.g. a CNN of `make report`:
#   make views-experiment VIEWS_TEACHER=runs/fashion-mnist/paper/teachers/teacher-0.pt
VIEWS_TEACHER ?= $(RUN)/teacher.pt
views-experiment: $(VIEWS_TEACHER)
	$(PY) scripts/views_experiment.py --teacher $(VIEWS_TEACHER) $(if $(QUICK),--quick)

# --- language models: per-token stores from a causal LM on a real corpus (docs/LM.md) -----------
# The corpus is this Python's standard library (LM_CORPUS_FLAGS="--source DIR" for your text),
# a byte-level BPE of LM_VOCAB tokens trained locally; LM_VOCAB=2048 keeps dense stores small.
LM_RUN ?= runs/lm
LM_VOCAB ?= 2048
LM_CORPUS_FLAGS ?=
LM_TEACHER_STEPS ?= 400
LM_TEACHER_FLAGS ?=
LM_KIND ?= topk
LM_K ?= 32
LM_SEQ_LEN ?= 64
LM_SEQUENCES ?= 1024
LM_STUDENT_STEPS ?= 200
LM_STUDENT_FLAGS ?=
LM_EXPERIMENT_FLAGS ?=
LM_NAME := $(LM_KIND)$(if $(filter dense,$(LM_KIND)),,$(LM_K))
LM_STORE := $(LM_RUN)/$(LM_NAME).zarr
LM_CORPUS_ARGS = --out $(LM_RUN)/corpus --vocab-size $(LM_VOCAB) $(LM_CORPUS_FLAGS)
LM_TEACHER_ARGS = --corpus $(LM_RUN)/corpus --steps $(LM_TEACHER_STEPS) $(LM_TEACHER_FLAGS)
LM_LOGITS_ARGS = --corpus $(LM_RUN)/corpus --teacher $(LM_RUN)/teacher.pt --kind $(LM_KIND) \
	$(if $(filter dense,$(LM_KIND)),,--k $(LM_K)) --seq-len $(LM_SEQ_LEN) --sequences $(LM_SEQUENCES)
LM_STUDENT_ARGS = --corpus $(LM_RUN)/corpus --steps $(LM_STUDENT_STEPS) $(LM_STUDENT_FLAGS)

.PHONY: lm-setup lm-corpus lm-teacher lm-teacher-logits lm-student lm-baseline lm-experiment \
	bench-lm

$(LM_RUN)/corpus.args: FORCE ; $(call settings,$(LM_CORPUS_ARGS))
$(LM_RUN)/teacher.args: FORCE ; $(call settings,$(LM_TEACHER_ARGS))
$(LM_RUN)/$(LM_NAME).args: FORCE ; $(call settings,$(LM_LOGITS_ARGS))
$(LM_RUN)/student-$(LM_NAME).args: FORCE ; $(call settings,$(LM_STUDENT_ARGS))
$(LM_RUN)/baseline.args: FORCE ; $(call settings,$(LM_STUDENT_ARGS) $(LM_SEQ_LEN) $(LM_SEQUENCES))

# Hugging Face tokenizers (optional `lm` extra)
lm-setup: setup
	@$(PY) -c 'import tokenizers' 2>/dev/null || $(VENV)/bin/pip install --quiet -e '.[lm]'

lm-corpus: $(LM_RUN)/corpus/corpus.json
$(LM_RUN)/corpus/corpus.json: $(LM_RUN)/corpus.args | lm-setup
	$(ST) lm-corpus $(LM_CORPUS_ARGS) --overwrite

# about 10 min on 2 quiet cores (README); saved every 25 steps, so a killed run resumes where it was saved
lm-teacher: $(LM_RUN)/teacher.pt
$(LM_RUN)/teacher.pt: $(LM_RUN)/corpus/corpus.json $(LM_RUN)/teacher.args
	$(ST) lm-teacher $(LM_TEACHER_ARGS) --out $@

# LM_KIND=dense|topk|sampled, LM_K: the store of the first LM_SEQUENCES training sequences
lm-teacher-logits: $(LM_RUN)/$(LM_NAME).ok
$(LM_RUN)/$(LM_NAME).ok: $(LM_RUN)/teacher.pt $(LM_RUN)/$(LM_NAME).args
	$(ST) lm-teacher-logits $(LM_LOGITS_ARGS) --store $(LM_STORE) --overwrite
	@touch $@

lm-student: $(LM_RUN)/student-$(LM_NAME).pt
$(LM_RUN)/student-$(LM_NAME).pt: $(LM_RUN)/$(LM_NAME).ok $(LM_RUN)/student-$(LM_NAME).args
	$(ST) lm-student $(LM_STUDENT_ARGS) --store $(LM_STORE) --out $@

# the hard-label student of the same sequences and steps
lm-baseline: $(LM_RUN)/baseline.pt
$(LM_RUN)/baseline.pt: $(LM_RUN)/corpus/corpus.json $(LM_RUN)/baseline.args
	$(ST) lm-student $(LM_STUDENT_ARGS) --seq-len $(LM_SEQ_LEN) --sequences $(LM_SEQUENCES) --out $@

# README's table: hard-label, dense, top-k 8/32/128 and sampled 12/32 students, 3 seeds (resumes)
lm-experiment: $(LM_RUN)/teacher.pt
	$(ST) lm-experiment --corpus $(LM_RUN)/corpus --teacher $< --out $(LM_RUN)/experiment \
		--steps $(LM_STUDENT_STEPS) --sequences $(LM_SEQUENCES) $(LM_EXPERIMENT_FLAGS)

# LM stage 1 vs the bare forward and stage 2 vs hard labels, side by side in one run
bench-lm: $(LM_RUN)/teacher.pt
	$(PY) scripts/bench_lm.py --corpus $(LM_RUN)/corpus --teacher $< $(BENCH_LM_ARGS)
