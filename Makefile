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
	bench bench-sparse views-experiment report-patient

help:
	@echo "make student    set-up, data, teacher, teacher-logits, baseline and distilled student"
	@echo "make test       the test suite (slow end-to-end tests: make test-slow)"
	@echo "make teachers ENSEMBLE=5   train ENSEMBLE teachers (seeds 0..ENSEMBLE-1; TEACHERS_FLAGS=...); make ensemble-logits"
	@echo "make report     the paper's experiments -> reports/ (make report-quick: a few minutes;"
	@echo "                make report-long: students 100 epochs -> reports/long)"

	@echo "make report-patient   stored views / mixed views / online matching -> reports/patient"
	@echo "                (QUICK=1: minutes; runs resume and skip finished (arm, seed) runs)"
	@echo "make bench      stage 1 and stage 2 speed benchmarks, one table (BENCH_ARGS=...)"
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

# augmentation-consistent soft targets, (a)-(d) side by side; QUICK=1 for a small run
# VIEWS_TEACHER: any softtargets checkpoint, e.g. a CNN of `make report`:
#   make views-experiment VIEWS_TEACHER=runs/fashion-mnist/paper/teachers/teacher-0.pt
VIEWS_TEACHER ?= $(RUN)/teacher.pt
views-experiment: $(VIEWS_TEACHER)
	$(PY) scripts/views_experiment.py --teacher $(VIEWS_TEACHER) $(if $(QUICK),--quick)
