# softtargets: `make student` runs everything from nothing; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
DATASET ?= fashion-mnist
RUN ?= runs/$(DATASET)
TEACHER_EPOCHS ?= 30
STUDENT_EPOCHS ?= 20
T ?= 20
ALPHA ?= 0.9
ST := $(VENV)/bin/softtargets
PY := $(VENV)/bin/python

.PHONY: setup data teacher teacher-logits student baseline summary test test-slow clean help \
	teachers ensemble-logits report report-long report-quick report-setup bench bench-sparse views-experiment

help:
	@echo "make student    set-up, data, teacher, teacher-logits, baseline and distilled student"
	@echo "make test       the test suite (slow end-to-end tests: make test-slow)"
	@echo "make teachers ENSEMBLE=5   train ENSEMBLE teachers (seeds 0..ENSEMBLE-1; TEACHERS_FLAGS=...); make ensemble-logits"
	@echo "make report     the paper's experiments -> reports/ (make report-quick: a few minutes;"
	@echo "                make report-long: students 100 epochs -> reports/long)"

	@echo "make bench      stage 1 and stage 2 speed benchmarks, one table (BENCH_ARGS=...)"
	@echo "variables: DATASET=$(DATASET) TEACHER_EPOCHS=$(TEACHER_EPOCHS) STUDENT_EPOCHS=$(STUDENT_EPOCHS) T=$(T) ALPHA=$(ALPHA)"

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

teacher: $(RUN)/teacher.pt
$(RUN)/teacher.pt: | data
	$(ST) train-teacher --dataset $(DATASET) --epochs $(TEACHER_EPOCHS) --out $@

teacher-logits: $(RUN)/teacher-logits.ok
$(RUN)/teacher-logits.ok: $(RUN)/teacher.pt
	$(ST) teacher-logits --dataset $(DATASET) --teacher $< --store $(RUN)/teacher-logits.zarr --overwrite
	@touch $@

baseline: $(RUN)/baseline/metrics.json
$(RUN)/baseline/metrics.json: | data
	$(ST) baseline --dataset $(DATASET) --epochs $(STUDENT_EPOCHS) --out $(RUN)/baseline

distilled: $(RUN)/student/metrics.json
$(RUN)/student/metrics.json: $(RUN)/teacher-logits.ok
	$(ST) student --dataset $(DATASET) --epochs $(STUDENT_EPOCHS) -T $(T) --alpha $(ALPHA) \
		--store $(RUN)/teacher-logits.zarr --out $(RUN)/student

student: $(RUN)/student/metrics.json $(RUN)/baseline/metrics.json
	@$(ST) summary $(RUN)

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

# Speed goals of issue 5: ratios measured side by side in one run (a few minutes on 2 cores).
# Full size: make bench BENCH_ARGS="--n 1000000 --student-rows 60000 --cnn-rows 10000"
bench: setup bench-sparse
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf runs

# --- issue 3: ensembles and the paper's experiments ----------------------------------------------
ENSEMBLE ?= 5
TEACHER_SEEDS := $(shell seq 0 $$(( $(ENSEMBLE) - 1 )))
TEACHER_FILES := $(foreach s,$(TEACHER_SEEDS),$(RUN)/teachers/teacher-$(s).pt)

# TEACHERS_FLAGS, e.g. a small CNN: "--arch cnn --hidden 16,32,128 --max-norm 0 --dropout 0.2"
TEACHERS_FLAGS ?=
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

# issue 7: augmentation-consistent soft targets, (a)-(d) side by side; QUICK=1 for a small run
# VIEWS_TEACHER: any softtargets checkpoint, e.g. a CNN of `make report`:
#   make views-experiment VIEWS_TEACHER=runs/fashion-mnist/paper/teachers/teacher-0.pt
VIEWS_TEACHER ?= $(RUN)/teacher.pt
views-experiment: $(VIEWS_TEACHER)
	$(PY) scripts/views_experiment.py --teacher $(VIEWS_TEACHER) $(if $(QUICK),--quick)
