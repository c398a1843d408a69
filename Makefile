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

.PHONY: setup data teacher teacher-logits student baseline summary test test-slow bench clean help

help:
	@echo "make student    set-up, data, teacher, teacher-logits, baseline and distilled student"
	@echo "make test       the test suite (slow end-to-end tests: make test-slow)"
	@echo "make bench      stage 1 and stage 2 speed benchmarks, one table (BENCH_ARGS=...)"
	@echo "variables: DATASET=$(DATASET) TEACHER_EPOCHS=$(TEACHER_EPOCHS) STUDENT_EPOCHS=$(STUDENT_EPOCHS) T=$(T) ALPHA=$(ALPHA)"

setup: $(VENV)/.installed

# Pinned: torch==2.13.0 (a looser pin pulls a multi-GB CUDA build), zarr 3.1.x, numcodecs 0.16.x.
$(VENV)/.installed: pyproject.toml
	@t0=$$(date +%s); \
	$(PYTHON) -m venv $(VENV) && \
	$(VENV)/bin/pip install --quiet --upgrade pip && \
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

# Speed goals of issue 5: ratios measured side by side in one run (a few minutes on 2 cores).
# Full size: make bench BENCH_ARGS="--n 1000000 --student-rows 60000 --cnn-rows 10000"
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf runs
