# weir's two entry points: `make test` (the whole test suite) and, later, `make demo`.
SHELL := /bin/bash
.DEFAULT_GOAL := test

.PHONY: test guests bench toolchain

# The guests are built for wasm32-wasip2; the target comes from rustup.
toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

guests: toolchain
	cd guests && cargo build --target wasm32-wasip2 --release

# Guest logic natively (SDK and guests), then the host and the end-to-end tests against
# the compiled guests.
test: guests
	cd guests && cargo test
	cargo test --workspace

bench: guests
	cargo bench -p weir-tests --bench runtime

# Until the Kafka/Postgres pipeline lands, the demo shows the guest contract end to end:
# check the passthrough guest against the world, then run it over sample ticks.
.PHONY: demo
demo: guests
	cargo build --release -p weir
	./target/release/weir guest check guests/target/wasm32-wasip2/release/passthrough.wasm
	./target/release/weir guest run guests/target/wasm32-wasip2/release/passthrough.wasm \
		--input tests/data/ticks.jsonl --config include_metadata=true
