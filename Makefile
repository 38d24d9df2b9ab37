# imaged: `make run` starts the four processes; `make test` runs every test.

CARGO ?= cargo
ROOT ?= ./data

.PHONY: run build test test-deps bench bench-deps fuzz fmt lint clean

## Build in release mode and start all four processes with stores under $(ROOT).
run:
	$(CARGO) build --release --workspace --bins
	exec ./target/release/imaged-run --root $(ROOT)

build:
	$(CARGO) build --workspace --bins

## Install what the tests need, build, and run every test.
test: test-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

test-deps:
	./deploy/install-test-deps.sh

## Benchmarks against the real processes (release build); prints tables.
bench: test-deps bench-deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench --workspace --benches

bench-deps:
	./deploy/install-bench-deps.sh

## The parsers and the layer applier on generated input, long: `make
## test` runs 256 cases of each property, this FUZZ_CASES.
FUZZ_CASES ?= 50000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p imaged-model --test fuzz
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p imaged-transfer fuzz

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(ROOT)
