#!/usr/bin/env python3
"""Membership and placement at 10, 100 and 1,000 nodes, simulated in one
process (`dynakv-bench simulate`), with Q = 64 (the default) and Q = 4096.
Writes bench/results/simulation.md."""

import datetime
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def table(q):
    out = subprocess.run([common.BENCH, "simulate", "--nodes", "10,100,1000", "--partitions", str(q)],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def main():
    lines = ["## Membership and placement at scale, simulated (`bench/simulate.py`)\n",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. The real member "
             "table and ring code (`src/sim.rs`), driven in synchronous gossip rounds with simulated time: each "
             "node bumps its heartbeat and does one push-pull exchange with a random live peer per round (and a "
             "seed while it knows fewer than two). A new node joins through a seed; then a node stops.\n",
             "### Q = 64 (the default)\n", table(64), "",
             "### Q = 4096\n", table(4096)]
    common.write_section("simulation.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
