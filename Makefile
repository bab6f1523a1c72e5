# tcptrace build, test and release entry points. `make help` lists them.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/tcptrace/tcptrace/internal/cli.version=$(VERSION)
ARGS    ?=
# A static binary: it runs on any host, in a scratch image and in the test VMs.
export CGO_ENABLED := 0

.DEFAULT_GOAL := help
.PHONY: help deps generate check-generate fmt-check vet build run install test unit check check-host bench vmtest vmtest-selfcheck clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

deps: ## install what generate and the tests need (Debian packages; root)
	./.ci/deps

generate: ## rebuild the BPF objects and Go bindings from bpf/ (clang, libbpf-dev)
	$(GO) generate ./internal/tracer

check-generate: generate ## fail when the committed BPF objects differ from bpf/
	@git diff --exit-code --stat -- internal/tracer || \
		{ echo "generated BPF objects are stale: run 'make generate' and commit the result" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- internal/tracer)" || \
		{ git status --porcelain -- internal/tracer >&2; echo "untracked generated files: commit them" >&2; exit 1; }

fmt-check: ## fail when gofmt would change a file
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go') >&2; exit 1; }

vet: ## go vet
	$(GO) vet ./...

build: ## build ./tcptrace (static; needs no clang: the BPF objects are committed)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o tcptrace ./cmd/tcptrace

run: build ## build and run tcptrace with ARGS, e.g. sudo make run ARGS="-o json --state CLOSE_WAIT"
	./tcptrace $(ARGS)

install: ## go install tcptrace into GOBIN
	$(GO) install -trimpath -ldflags "$(LDFLAGS)" ./cmd/tcptrace

unit: ## the tests that need no root (all but the integration suite)
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /internal/e2e)

test: ## every test: unit tests and the root integration suite on this kernel
	$(GO) test -count=1 ./...

check: check-host vmtest vmtest-selfcheck ## what CI runs: check-host, then the suite on the kernel matrix

check-host: deps fmt-check vet check-generate test ## deps, formatting, vet, fresh BPF objects, all tests on this kernel

bench: ## Go benchmarks of the per-event path, then .ci/bench.sh (root): a connection storm beside tcpstates and bpftrace, and 100k CLOSE_WAIT beside ss
	$(GO) test -count=1 -run '^$$' -bench . -benchmem ./...
	GO=$(GO) ./.ci/bench.sh

vmtest: ## the integration suite on Debian 5.10, 6.1 and 6.12 kernels in QEMU
	./.ci/vmtest.sh

vmtest-selfcheck: ## show a hook forced that a guest kernel lacks fails vmtest, with the reason
	./.ci/vmtest-selfcheck.sh

clean: ## remove build output and the vmtest cache
	rm -rf tcptrace .cache
