# OmniGate. The two commands a new machine needs: `make run` and `make test`.
GO      ?= go
BIN     := bin/omnigate
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build run test bench bench-go bench-load bench-wasm plugins lint fmt clean

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

## test: every test, with the race detector
test:
	$(GO) test -race -timeout 14m ./...

## bench: Go benchmarks, then loopback load against baselines
bench: bench-go bench-load

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

bench-load:
	$(GO) run ./cmd/omnigate-bench $(BENCHFLAGS)

## bench-wasm: WebAssembly plugins in the gateway on loopback (docs/BENCHMARKS.md)
bench-wasm:
	$(GO) run ./plugins/wasm/internal/wasmbench $(BENCHFLAGS)

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
