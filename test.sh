#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run). Run it as root:
# the integration tests build network namespaces with FRR/BIRD peers.
# More steps (fuzz, clippy) get appended here.
set -euo pipefail
cd "$(dirname "$0")"

cargo test --workspace --locked -- --test-threads=2
