# OmniGate. The two commands a new machine needs: `make run` and `make test`.
GO      ?= go
BIN     := bin/omnigate
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build run test bench bench-go bench-load bench-peers scaletest lint fmt clean

all: build

## build: compile bin/omnigate
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/omnigate

## run: build and serve with the embedded default config (no Redis needed);
## CONFIG=omnigate.yaml serves a file instead
run: build
	@mkdir -p data
	./$(BIN) serve $(if $(CONFIG),-config $(CONFIG))

## test: every test, with the race detector
test:
	$(GO) test -race -timeout 14m ./...

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

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
