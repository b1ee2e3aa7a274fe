# nbship — see README.md. Every target works on a fresh Debian machine as
# root: the scripts install what they need first.

GO      ?= $(shell command -v go || echo /usr/local/go/bin/go)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/nbship/nbship/internal/version.Version=$(VERSION)

.PHONY: all build test demo bench fuzz clean FORCE

all: build

# Static binaries for both build-host architectures.
build: dist/nbship-linux-amd64 dist/nbship-linux-arm64

dist/nbship-linux-%: FORCE
	CGO_ENABLED=0 GOOS=linux GOARCH=$* $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/nbship

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

bench:
	bash bench/run.sh

fuzz:
	bash scripts/fuzz.sh

clean:
	rm -rf dist
