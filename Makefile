# OmniGate. The two commands a new machine needs: `make run` and `make test`.
GO      ?= go
SHELL   := /bin/bash
BIN     := bin/omnigate
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build run test bench bench-go bench-load bench-peers bench-wasm bench-wasm-fail scaletest plugins lint fmt clean proto

all: build

## build: compile bin/omnigate
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/omnigate

## run: build and serve with the embedded default config (no Redis needed);
## CONFIG=omnigate.yaml serves a file instead
run: build
	@mkdir -p data
	./$(BIN) serve $(if $(CONFIG),-config $(CONFIG))

## plugins: build the example WebAssembly policy plugins into data/plugins
plugins: build
	@for d in examples/*/; do \
		if [ -f $$d/cases.yaml ]; then ./$(BIN) plugin build -o data/plugins/$$(basename $$d).wasm ./$$d || exit 1; fi; \
	done

## test: every test, with the race detector (the gateway module, then the
## plugin SDKs' modules, which ./... does not reach); then the FHIR server's
## tests again on the PostgreSQL store (a private server the tests start).
## The report shows one line per package, failing tests' output and the
## slowest tests.
SDK_MODULES := sdk/wasm sdk/external
test:
	set -o pipefail; $(GO) test -race -timeout 14m -json ./... | $(GO) run ./scripts/testreport
	set -o pipefail; for m in $(SDK_MODULES); do (cd $$m && $(GO) test -race -timeout 5m -json ./...) || exit 1; done | $(GO) run ./scripts/testreport -slowest 3
	set -o pipefail; OMNIGATE_TEST_STORE=postgres $(GO) test -race -timeout 14m -json ./builtin/fhir/ | $(GO) run ./scripts/testreport -slowest 5

## bench: Go benchmarks, then loopback load against baselines and peers
## (nginx's proxy_pass, proxy_cache and limit_req when nginx is installed)
bench: bench-go bench-load

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

bench-load:
	$(GO) run ./cmd/omnigate-bench $(BENCHFLAGS)

## bench-peers: only the proxy, cache and limiter targets, OmniGate and nginx
bench-peers:
	$(GO) run ./cmd/omnigate-bench -only 'bare|proxy|cache|limit' $(BENCHFLAGS)

## scaletest: the fleet test (3 instances, one Redis stopped and restarted),
## report in ./scaletest-report; SCALEFLAGS="-redis cluster" etc.
scaletest: build
	./$(BIN) scaletest $(SCALEFLAGS)

## bench-wasm: WebAssembly plugins in the gateway on loopback (docs/BENCHMARKS.md)
bench-wasm:
	$(GO) run ./plugins/wasm/internal/wasmbench $(BENCHFLAGS)

## bench-wasm-fail: what a Wasm plugin failing on every call costs the other routes (docs/BENCHMARKS.md)
bench-wasm-fail:
	$(GO) run ./plugins/wasm/internal/wasmfailbench $(BENCHFLAGS)

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@for m in $(SDK_MODULES); do (cd $$m && $(GO) vet ./...) || exit 1; done
	cd sdk/wasm && GOOS=wasip1 GOARCH=wasm $(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## proto: regenerate the external plugin contract's Go code from its .proto
## with protoc (Debian: apt-get install -y protobuf-compiler) and pinned
## protoc-gen-go and protoc-gen-go-grpc, installed into bin/proto
PROTOC_GEN_GO      := v1.36.12
PROTOC_GEN_GO_GRPC := v1.6.2
PROTO_BIN          := $(CURDIR)/bin/proto
proto:
	@command -v protoc >/dev/null || { echo "protoc not found: apt-get install -y protobuf-compiler"; exit 1; }
	GOBIN=$(PROTO_BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO)
	GOBIN=$(PROTO_BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC)
	PATH="$(PROTO_BIN):$$PATH" protoc -I sdk/external/proto \
		--go_out=sdk/external/proto --go_opt=paths=source_relative \
		--go-grpc_out=sdk/external/proto --go-grpc_opt=paths=source_relative \
		sdk/external/proto/policy.proto

clean:
	rm -rf bin
