#!/usr/bin/env bash
# Conclave against etcd on this machine, in one run: builds the release binary, installs
# etcd-server and etcd-client from Debian's packages if they are missing, then runs every
# workload against a 3-member etcd (its defaults) and a 3-member Conclave group on 127.0.0.1,
# alternating workload by workload, and prints both with the ratio and the CPU each used.
#
#   bash bench/compare-etcd.sh                  # everything, 5 s per throughput workload
#   bash bench/compare-etcd.sh seq c64 --duration 10
#
# Results: bench/results.json (the full figures) and docs/bench-latency-throughput.svg (the
# plot). Everything it starts is stopped when it ends. Compare only figures from one run, on a
# quiet machine: this one is CPU-bound before it is disk-bound.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
exec target/release/conclave --json bench --compare-etcd \
  --out bench/results.json --plot docs/bench-latency-throughput.svg "$@"
