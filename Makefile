# Everyday targets. `make test` and `make demo` work on a fresh machine: both run `make setup`.
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(HOME)/.local/bin:$(PATH)
TOOLS_BIN = $(shell hack/install-k8s-tools.sh --print-bin 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup demo demo-down test check lint typecheck crds unit bench-registry bench-admission bench-rpc \
	bench-llm bench-cluster bench-revocation bench-operator-costs bench-scale clean kind-down

setup:
	bash hack/setup.sh

## demo: the platform on a kind cluster (chart, images built here), one task of each type
##       through the RPC shim; stays up until `make demo-down`
demo: setup
	$(PY) -m regtask_dev.demo up

## demo-down: stop every process `make demo` started, delete its cluster, undo host changes
demo-down:
	$(PY) -m regtask_dev.demo down

## test: everything CI checks — lint, types, generated files, the whole suite on real servers
test: setup check
	REGTASK_TOOLS_BIN="$(TOOLS_BIN)" $(PY) -m pytest $(PYTEST_ARGS)

check: lint typecheck
	$(PY) -m regtask.crdgen --check
	shellcheck -x hack/*.sh hack/kind/*.sh hack/kind/node/regtask-sysctl-shield .ci/run

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy

## crds: regenerate manifests/crds and charts/regtask/crds from common/regtask/crmodels.py
crds:
	$(PY) -m regtask.crdgen

## unit: the tests marked `unit` (no server: pure, or in-process fakes), in seconds
unit:
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

bench-registry: setup
	$(PY) -m bench.bench_registry

bench-admission: setup
	REGTASK_TOOLS_BIN="$(TOOLS_BIN)" $(PY) -m bench.bench_admission

bench-rpc: setup
	REGTASK_TOOLS_BIN="$(TOOLS_BIN)" $(PY) -m bench.bench_rpc

bench-llm: setup
	$(PY) -m bench.bench_llm

## bench-revocation: what the Firebase revocation check (on by default) adds per call
bench-revocation: setup
	$(PY) -m bench.bench_revocation

## bench-operator-costs: in-process, the operator's per-event costs against the queue's size
bench-operator-costs: setup
	$(PY) -m bench.bench_operator_costs

## bench-scale: Kueue's benchmark shape (TASKS=50000 over COMPANIES=1000 at RATE/s) on an
##              envtest-shaped control plane (etcd + kube-apiserver), runtimes simulated;
##              SHARDS=3: three operators, one per shard, the aggregate rate; WAVES=2: the
##              same tasks again once collected (RSS after each)
bench-scale: setup
	REGTASK_TOOLS_BIN="$(TOOLS_BIN)" SHARDS="$(or $(SHARDS),1)" $(PY) -m bench.bench_scale

## bench-cluster: the kind cluster's create/delete, image load, Job create -> Complete
bench-cluster: setup
	$(PY) -m bench.bench_cluster

## kind-down: delete every kind cluster of this project and undo the host changes (after a
##            killed run; test sessions and the demo clean up after themselves)
kind-down:
	$(PY) -m regtask_dev.kind down --all

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache bench/results/*.json

# Packaging targets (helm-lint, render-manifests, lint-dockerfile, kind-e2e).
-include mk/*.mk
