#!/usr/bin/env bash
# Builds dynakv in release, runs the benchmark matrix (bench/run.py), then the
# performance comparison with both load generators, dynakv-bench and wrk, on
# the same targets (bench/perf.py, installs wrk with apt when missing); each
# writes its section of bench/RESULTS.md. QUICK=1 bench/run.sh for a short
# smoke run of the matrix; PERF=0 skips the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
python3 bench/run.py
if [ "${PERF:-1}" != 0 ]; then
  exec python3 bench/perf.py
fi
