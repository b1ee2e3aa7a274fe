#!/usr/bin/env bash
# gobench.sh — the Go benchmarks of the stream (transfer: encode, decode,
# both ends, per level and data shape) and of the channel (tunnel: TLS
# throughput, handshake), written to bench/results/gobench.txt for benchstat:
#
#   bash bench/gobench.sh                  # BENCH_COUNT=6 samples each
#   git stash; bash bench/gobench.sh; cp bench/results/gobench.txt old.txt; git stash pop
#   bash bench/gobench.sh; benchstat old.txt bench/results/gobench.txt
#
# `make bench` runs it with BENCH_GO=1, and BENCHMARKS.md shows its medians.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
out=bench/results/gobench.txt
mkdir -p bench/results
{
	echo "# go test -bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg)"
	go test -run '^$' -bench . -benchmem -count "${BENCH_COUNT:-6}" -benchtime "${BENCH_TIME:-3x}" ./transfer ./tunnel ./internal/ldm
} >"$out.tmp" 2>&1 || { cat "$out.tmp" >&2; rm -f "$out.tmp"; exit 1; }
mv "$out.tmp" "$out"
grep -E '^(Benchmark|ok|FAIL)' "$out"
