#!/usr/bin/env bash
# make fuzz: runs every fuzz target for a bounded time (FUZZTIME, default
# 30s each). A crasher is written by Go under the package's
# testdata/fuzz/FuzzName/ — commit it: plain `go test` (and CI) replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
t=${FUZZTIME:-30s}
status=0
while read -r file; do
	pkg=./$(dirname "$file")
	for fn in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$file" | cut -d' ' -f2); do
		echo "fuzz: $pkg $fn ($t)"
		go test "$pkg" -run '^$' -fuzz "^${fn}\$" -fuzztime "$t" || status=1
	done
done < <(grep -rlE '^func Fuzz' --include='*_test.go' . | grep -v '^./\.' | sed 's|^\./||' | sort)
exit "$status"
