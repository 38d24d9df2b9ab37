# imaged: `make run` starts the four processes; `make test` runs every test.

CARGO ?= cargo
# `make` builds once per machine: incremental state would only add
# gigabytes of disk (CI's disk is small). `cargo` run by hand keeps it.
CARGO_INCREMENTAL ?= 0
export CARGO_INCREMENTAL
ROOT ?= ./data

.PHONY: run build test test-deps bench bench-deps fuzz fmt lint clean install install-files image image-deps

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
# Where install-files takes the binaries from.
TARGET_DIR ?= target/release
BINARIES = imaged-metadata imaged-transfer imaged-events imaged-gateway imaged-run imagectl

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

## The OCI image of imaged (release binaries and the libraries they load,
## no base image) as an OCI layout in target/image; with
## IMAGE=REGISTRY/REPO:TAG also pushed there (skopeo).
IMAGE ?=
image: image-deps
	$(CARGO) build --release --workspace --bins
	./deploy/make-image.sh --bin-dir target/release --out target/image \
		$(if $(IMAGE),--push $(IMAGE))

image-deps:
	@command -v skopeo >/dev/null 2>&1 || { \
		echo "installing: skopeo"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends skopeo \
		|| { apt-get update && apt-get install -y -q --no-install-recommends skopeo; }; }

## Benchmarks against the real processes (release build); prints tables.
bench: test-deps bench-deps
	$(CARGO) build --release --workspace --bins
	rm -rf target/bench-figures
	$(CARGO) bench --workspace --benches
	$(CARGO) run --release -q -p imaged-e2e --bin bench-table

bench-deps:
	./deploy/install-bench-deps.sh

## The parsers and the layer applier on generated input, long: `make
## test` runs 256 cases of each property, this FUZZ_CASES; and the
## model-based GC test, GC_MODEL_CASES sequences (`make test`: 8).
FUZZ_CASES ?= 50000
GC_MODEL_CASES ?= 200
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p imaged-model --test fuzz
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p imaged-transfer fuzz
	$(CARGO) build --workspace --bins
	PROPTEST_CASES=$(GC_MODEL_CASES) $(CARGO) test -p imaged-e2e --test it gc_model

## Build (release) and install the binaries, the systemd units (enable
## with `systemctl enable --now imaged.target`) and, unless one is there,
## the configuration file, under $(DESTDIR)$(PREFIX).
install:
	$(CARGO) build --release --workspace --bins
	$(MAKE) install-files TARGET_DIR=target/release

install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/imaged
	for b in $(BINARIES); do install -m 0755 $(TARGET_DIR)/$$b $(DESTDIR)$(BINDIR)/$$b; done
	for u in deploy/systemd/*; do \
		sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' $$u \
			> $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	[ -e $(DESTDIR)$(SYSCONFDIR)/imaged/imaged.toml ] || \
		install -m 0600 deploy/imaged.toml $(DESTDIR)$(SYSCONFDIR)/imaged/imaged.toml

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(ROOT)
