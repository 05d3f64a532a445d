# Set-up is idempotent: the venv is created once, packages are installed again only when pyproject.toml changes.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.installed-run
# The CPU build of torch; pip takes it from the local wheel cache on these machines.
TORCH  := torch==2.13.0

.PHONY: setup run test test-gpu bench clean

# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a package of its own: say so before venv fails obscurely.
$(PYTHON):
	@python3 -m venv --help >/dev/null 2>&1 && python3 -c "import ensurepip" 2>/dev/null || { \
	    echo "error: python3 cannot create a virtual environment (no venv/ensurepip module); on Debian or Ubuntu: apt-get install python3-venv" >&2; \
	    exit 1; }
	python3 -m venv $(VENV)

# llama-cpp-python (a test extra) compiles llama.cpp: for AVX2, not -march=native, whose AMX kernels stop with an
# illegal instruction on virtual machines that list AMX but do not enable it (seen on this project's machines).
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

# `make run` installs aigc alone; `make test` adds the test extras (transformers, peft, trl, llama.cpp, ...).
$(RUN_STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/aigc run

# The CPU suite hides any GPU, so it runs as written on a GPU machine; tests/gpu is skipped there (allow-listed).
# One pytest-xdist worker per core; a module whose tests share a fixture (a server, a trained run) runs on one.
test: $(STAMP)
	CUDA_VISIBLE_DEVICES= $(PYTHON) -m pytest -q -n auto --dist loadgroup

# The CUDA paths (bf16, compile, pinned copies, the CUDA RNG, generate/serve on a GPU, NCCL with two GPUs).
test-gpu: $(STAMP)
	$(PYTHON) -m pytest -q tests/gpu

bench: $(STAMP)
	$(PYTHON) benchmarks/prepare.py
	$(PYTHON) benchmarks/train_throughput.py
	$(PYTHON) benchmarks/shakespeare_char.py
	$(PYTHON) benchmarks/generate.py
	$(PYTHON) benchmarks/translate.py
	$(PYTHON) benchmarks/serve.py
	$(PYTHON) benchmarks/images.py
	$(PYTHON) benchmarks/pretrained.py
	$(PYTHON) benchmarks/llamacpp.py
	$(PYTHON) benchmarks/finetune.py
	$(PYTHON) benchmarks/tune.py
	$(PYTHON) benchmarks/speech.py
	$(PYTHON) benchmarks/parallel.py

clean:
	rm -rf $(VENV) runs .pytest_cache
