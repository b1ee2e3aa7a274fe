#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian
# machine, then runs every test. Needs root for the rig (namespaces, sshd,
# nginx, Nix stores); without root those tests skip and say why, and with
# NBSHIP_REQUIRE_RIG=1 (CI) a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export PATH="/usr/local/go/bin:$PATH"
go vet ./...
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
go test -count=1 -timeout 30m -v ./... >"$log" 2>&1 || status=$?
# Keep the output readable: failures in full, then each package's result.
grep -E -- '^(--- FAIL|FAIL|panic:|\s+\S+_test\.go:[0-9]+:)' "$log" || true
if [ "${NBSHIP_REQUIRE_RIG:-}" = 1 ] && grep -q -- '--- SKIP' "$log"; then
	echo "skipped tests are failures here (NBSHIP_REQUIRE_RIG=1):"
	grep -A3 -- '--- SKIP' "$log"
	status=1
fi
passed=$(grep -c -- '^\s*--- PASS' "$log" || true)
failed=$(grep -c -- '^\s*--- FAIL' "$log" || true)
skipped=$(grep -c -- '^\s*--- SKIP' "$log" || true)
grep -E '^(ok|FAIL|\?)\s' "$log" || true
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
