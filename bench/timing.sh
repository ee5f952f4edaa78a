#!/usr/bin/env bash
# Timing parity of refusals: the mean time to refuse 200 unknown names, 200
# wrong passwords of cloud users and 200 wrong passwords of directory users,
# with [directory] on a real slapd, failure_delay = "0s" and lockout off.
# The three should differ by less than 5 ms: each refusal costs one argon2
# verification whoever the name is.
#
# It runs the ignored integration test that takes the figures, on the
# test profile (argon2 and blake2 optimised there as in release; see
# Cargo.toml), and prints its two lines. Needs slapd as the integration
# tests do (scripts/install-test-deps).
#
#   bench/timing.sh            # one run
#   RUNS=3 bench/timing.sh     # several, one after the other
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1}
case $RUNS in
'' | *[!0-9]* | 0) echo "timing.sh: RUNS must be a positive integer, got '$RUNS'" >&2; exit 2 ;;
esac
for ((i = 1; i <= RUNS; i++)); do
    cargo test --quiet --test it adversarial::refusal::timing_figures -- --ignored --nocapture 2>&1 |
        grep -E '^(refusal (means|medians)|differences)'
done
