# Packaging targets (included by the Makefile): images, chart, plain manifests, kind e2e.
HELM ?= $(TOOLS_BIN)/helm
CHART := charts/regtask
PACKAGING_VALUES := $(wildcard tests/packaging/values/*.yaml)

.PHONY: helm-lint render-manifests check-manifests lint-dockerfile kind-e2e

## helm-lint: `helm lint --strict` of the chart with its defaults and every test value set
helm-lint:
	$(HELM) lint --strict $(CHART)
	@set -e; for values in $(PACKAGING_VALUES); do \
		echo "helm lint --strict -f $$values"; \
		$(HELM) lint --strict $(CHART) -f $$values; \
	done

## render-manifests: regenerate manifests/ (plain YAML) from the chart
render-manifests:
	HELM=$(HELM) hack/render-manifests.sh

## check-manifests: fail if manifests/ is stale against the chart
check-manifests:
	HELM=$(HELM) hack/render-manifests.sh --check

## lint-dockerfile: hadolint + the project's Dockerfile rules
lint-dockerfile:
	PY=$(PY) hack/lint-dockerfile.sh

## kind-e2e: build the images, run the chart on a kind cluster of its own, wait for the samples
## to succeed (KEEP_CLUSTER=1 keeps the cluster)
kind-e2e: setup
	hack/kind-e2e.sh
