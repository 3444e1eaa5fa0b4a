# kubedirector-rs: every entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CLUSTERS ?= 1
CARGO ?= cargo
# The test bed's kubeconfig (contexts kwok-kd-1..N); see testbed/env.sh.
TESTBED_DIR ?= $(CURDIR)/target/testbed
export TESTBED_DIR

.PHONY: help tools testbed testbed-down crds build lint unit integration test demo demo-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

tools: ## build the pinned test-bed tools (etcd, kube-*, kubectl, kwok) into the tools cache
	@testbed/tools/build.sh etcd kube kwok >/dev/null

testbed: tools ## start CLUSTERS local clusters (contexts kwok-kd-1..N) in $(TESTBED_DIR)/kubeconfig
	@testbed/up.sh $(CLUSTERS)

testbed-down: ## delete every test-bed cluster and check that no process is left
	@testbed/down.sh

demo: tools ## the main job: local cluster, operator, example app and cluster up to `configured` (KEEP=1 keeps it)
	@testbed/demo.sh

demo-down: ## stop what KEEP=1 make demo left running
	@testbed/demo-down.sh

crds: ## write crds/*.yaml from the Rust types
	$(CARGO) run --quiet --bin crdgen -- crds

build: ## build the operator
	$(CARGO) build --all-targets

lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit: ## unit tests, API type round-trips and the CRD drift check (no cluster needed)
	$(CARGO) test --lib --bins --test crd_drift --test api_types

# Integration tests need the test bed: it is started here and always torn down, also on failure.
integration: tools ## integration tests against a fresh test bed of 3 clusters
	@$(CARGO) test --no-run --test integration 2>&1 | tail -n 2
	@testbed/integration.sh

test: lint unit integration ## every test: lint, unit, then integration on a fresh test bed
