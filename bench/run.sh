#!/usr/bin/env bash
# Builds dynakv in release and runs the benchmark matrix; writes bench/RESULTS.md.
# QUICK=1 bench/run.sh for a short smoke run. See bench/run.py for the knobs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
exec python3 bench/run.py
