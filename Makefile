# kubedirector-rs: every entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CLUSTERS ?= 1
CARGO ?= cargo
# The test bed's kubeconfig (contexts kwok-kd-1..N); see testbed/env.sh.
TESTBED_DIR ?= $(CURDIR)/target/testbed
export TESTBED_DIR

IMAGE ?= kubedirector-rs:dev
HELM_CHART := deploy/helm/kubedirector

.PHONY: bench image chart-lint help tools testbed testbed-down crds build lint unit integration test demo demo-down loadtest loadtest-small

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

tools: ## build the pinned test-bed tools (etcd, kube-*, kubectl, kwok, helm, jaeger) into the tools cache
	@testbed/tools/build.sh >/dev/null

testbed: tools ## start CLUSTERS local clusters (contexts kwok-kd-1..N) in $(TESTBED_DIR)/kubeconfig
	@testbed/up.sh $(CLUSTERS)

testbed-down: ## delete every test-bed cluster and check that no process is left
	@testbed/down.sh

demo: tools ## the main job: local cluster, operator, example app and cluster up to `configured` (KEEP=1 keeps it)
	@testbed/demo.sh

demo-down: ## stop what KEEP=1 make demo left running
	@testbed/demo-down.sh

bench: ## in-process benchmarks (admission review latency vs. a parse-only baseline; observe cost vs. cached members; cache bytes per member, full vs. slim; child event parse cost, whole vs. lean)
	$(CARGO) test --release --test admission -- --ignored --nocapture validation_latency_benchmark
	$(CARGO) test --release --lib -- --ignored --nocapture observe_cost_does_not_grow_with_other_members
	$(CARGO) test --release --test cache_memory -- --ignored --nocapture
	$(CARGO) test --release --test decode_cost -- --ignored --nocapture

image: ## build the operator image (needs Docker; cannot run on the test machines): IMAGE=kubedirector-rs:dev
	docker build -f deploy/Dockerfile -t $(IMAGE) .

chart-lint: tools ## helm lint the chart (strict)
	@PATH="$$(testbed/tools/build.sh helm):$$PATH" helm lint --strict $(HELM_CHART)

crds: ## write crds/*.yaml (and the Helm chart's copy) from the Rust types
	$(CARGO) run --quiet --bin crdgen -- crds
	$(CARGO) run --quiet --bin crdgen -- deploy/helm/kubedirector/crds

build: ## build the operator
	$(CARGO) build --all-targets

lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## unit tests, API type round-trips and the CRD drift check (no cluster needed)
	$(CARGO) test --lib --bins --test crd_drift --test api_types --test admission --test kubedirector_parity --test configmeta_golden --test configcli
	$(CARGO) test -p kd-core
	$(CARGO) test -p kd-loadtest

# Integration tests need the test bed: it is started here and always torn down, also on failure.
integration: tools ## integration tests against a fresh test bed of 3 clusters
	@$(CARGO) test --no-run --test integration 2>&1 | tail -n 2
	@testbed/integration.sh

# The loadtest runs on its own test bed (ports from 32500), torn down at the end. LOADTEST_ARGS adds flags.
loadtest: tools ## the loadtest: 4 local clusters, 5,000 members, 3 replicas, 32 shards, chaos; report in target/loadtest/
	$(CARGO) build --release --bin kubedirector
	$(CARGO) run --release -p kd-loadtest -- --operator-bin target/release/kubedirector $(LOADTEST_ARGS)

loadtest-small: tools ## the small loadtest profile (part of `make test`, under 3 minutes)
	$(CARGO) build --bin kubedirector
	$(CARGO) run -p kd-loadtest -- --small --operator-bin target/debug/kubedirector $(LOADTEST_ARGS)

test: lint unit integration loadtest-small ## every test: lint, unit, integration on a fresh test bed, the small loadtest
