# Two commands set everything up from nothing: `make demo` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
DUPL    := $(VENV)/bin/dupl
# Blank find-links: the machine's local torch 2.13.0+cpu wheel breaks torchvision; use the index.
PIP     := PIP_FIND_LINKS= $(PY) -m pip
STAMP   := $(VENV)/.installed
PLUGIN  := plugins/dupl-example-backbone
DEMO_RUN ?= runs/demo
DEMO2_LABELS ?= .demo/pseudo
DEMO2_RUN ?= runs/demo-stage2

.PHONY: install demo demo-stage2 test test-fast bench gpu-check lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch torchvision
	$(PIP) install -q -e ".[dev,crf,onnx,tb,mlflow,wandb,coco,plots,hub]"
	$(PIP) install -q -e $(PLUGIN)
	$(PY) -c "import torch, torchvision, timm, pydensecrf, matplotlib, huggingface_hub, mlflow, wandb; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

# Re-runnable: the generated data is kept, the demo run is trained afresh.
demo: install
	test -f .demo/data/classes.txt || $(DUPL) data demo --out .demo/data
	rm -rf $(DEMO_RUN)
	$(DUPL) train --preset demo --set data.root=.demo/data --run-dir $(DEMO_RUN)
	$(DUPL) evaluate $(DEMO_RUN) --preset demo --set data.root=.demo/data

# The two-stage pipeline on the demo data: stage 1 (runs/demo, reused when it has finished), CAM
# pseudo-labels with the CAM CRF (scored against the train masks), a DeepLab-V2 segmenter on them,
# its evaluation, and both runs side by side.
demo-stage2: install
	test -f .demo/data/classes.txt || $(DUPL) data demo --out .demo/data
	test -f $(DEMO_RUN)/final.safetensors || { rm -rf $(DEMO_RUN) && $(DUPL) train --preset demo --set data.root=.demo/data --run-dir $(DEMO_RUN); }
	rm -rf $(DEMO2_LABELS) $(DEMO2_LABELS)_metrics $(DEMO2_RUN)
	$(DUPL) pseudo-label $(DEMO_RUN) --out $(DEMO2_LABELS) --split train --crf --confidence --evaluate
	$(DUPL) train --preset demo-stage2 --set data.root=.demo/data --set data.pseudo_labels=$(DEMO2_LABELS) --run-dir $(DEMO2_RUN)
	$(DUPL) evaluate $(DEMO2_RUN)
	$(DUPL) compare $(DEMO_RUN) $(DEMO2_RUN)

# Most of the suite's time is single-threaded (export tracing, subprocesses, Python), so it runs as
# one pytest worker per core (at most 8), each with one intra-op thread, rather than one process on all.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 8 ] && n=8; echo $$n)
PYTEST  := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: install
	$(PYTEST) tests $(PLUGIN)/tests

# Everything but the tests marked slow (subprocesses, whole trainings, exports).
test-fast: install
	$(PYTEST) -m "not slow" tests $(PLUGIN)/tests

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# GPU figures: step times, memory, throughput (one GPU, <= 5 minutes); `python benchmarks/gpu_check.py --dry` checks it on a CPU.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

lint: install
	$(VENV)/bin/ruff check dupl_cli tests benchmarks $(PLUGIN)
	$(VENV)/bin/ruff format --check dupl_cli tests benchmarks $(PLUGIN)
	$(VENV)/bin/lint-imports --no-logo
	$(PY) tests/architecture/import_graph.py

clean:
	rm -rf .demo runs .pytest_cache
