# CPU set-up: the CPU build of torch (PyPI's Linux torch is a CUDA build that pulls several GB of
# nvidia-* wheels), from PyTorch's CPU index given as an extra index, so the public PyPI serves the
# rest; torch alone is fetched with that index (a machine that cannot reach it takes a local file, as
# here, after pip's retries). Triton comes separately: CPU torch does not depend on it.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# transformers: model definitions of the serving demo and its test (the pyproject's `demo` extra).
CPU_DEPS := $(TORCH_CPU) triton==3.9.0 numpy pytest pytest-xdist matplotlib hypothesis transformers==5.17.0
HAS_GPU := $(shell $(PY) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 && echo 1)

.PHONY: demo test test-interpret test-aot test-aot-triton36 test-gpu bench venv clean

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps --extra-index-url $(TORCH_INDEX) $(TORCH_CPU)
	$(VPY) -m pip install -q --disable-pip-version-check $(CPU_DEPS)
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# Main job. GPU: serve a request stream through an 8B-shaped model on our kernels, FlashInfer's and
# SDPA (examples/serve.py; DEMO_ARGS=--quick for fewer requests), then the decode benchmark.
# CPU: the same serving loop at a tiny size through the Triton interpreter.
DEMO_ARGS ?=
demo:
ifeq ($(HAS_GPU),1)
	PYTHONPATH=$(CURDIR) $(PY) examples/serve.py $(DEMO_ARGS); status=$$?; \
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/bench_decode.py --plot && exit $$status
else
	$(MAKE) venv
	TRITON_INTERPRET=1 $(VPY) examples/serve.py $(DEMO_ARGS)
endif

# CPU tiers: kernels under the interpreter, then an ahead-of-time compile for cuda:90 and hip:gfx942
# (and cuda:90's spot set under Triton 3.6, the GPU machine's version).
test: venv test-interpret test-aot test-aot-triton36

test-interpret: venv
	TRITON_INTERPRET=1 $(VPY) -m pytest -q -n 2 -m "not gpu" --ignore=tests/test_aot_compile.py tests

test-aot: venv
	$(VPY) -m pytest -q -n 2 tests/test_aot_compile.py

# The GPU machine's compiler (Triton 3.6, older than the CPU side's): the cuda:90 spot set of the AOT
# tier compiled with it too (it has compile bugs the newer one does not: about 1.5 minutes).
TRITON_OLD := triton==3.6.0
test-aot-triton36: venv
	test -d .triton36 || $(VPY) -m pip install -q --disable-pip-version-check --no-deps --target .triton36 $(TRITON_OLD)
	AOT_SPOT_ONLY=cuda90 PYTHONPATH=$(CURDIR)/.triton36 $(VPY) -m pytest -q -n 2 tests/test_aot_compile.py

# GPU tier (device machine): the same tests at realistic sizes in bfloat16, graphs and torch.compile.
test-gpu:
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q -x tests --ignore=tests/test_aot_compile.py

bench:
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/bench_decode.py --plot
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/bench_ops.py

clean:
	rm -rf $(VENV) .pytest_cache .triton36
