#!/usr/bin/env bash
# The project's whole test suite; CI runs exactly this (through .ci/run, which
# installs frr, bird2, gobgpd, nftables, moto first). Run it as root: the scenario
# tests build network namespaces with real FRR and BIRD peers.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

# On a fresh machine, install what the tests drive first (FRR, BIRD, nftables...).
for tool in cargo vtysh bird birdc nft iptables ping keepalived; do
  if ! command -v "$tool" >/dev/null; then
    echo "--- $tool is missing: running .ci/install-deps"
    .ci/install-deps
    break
  fi
done
if ! python3 -c 'import moto.server' 2>/dev/null; then
  echo "--- moto (hagw-cloud's EC2 test server) is missing: running .ci/install-deps"
  .ci/install-deps
fi

echo "--- cargo fmt --check"
cargo fmt --all -- --check
echo "--- cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "--- cargo test (unit + namespace scenarios)"
cargo test --workspace --locked -- --test-threads=2
echo "--- fuzz smoke: every decoder for ${FUZZ_SECONDS:-15}s"
fuzz/run-short.sh "${FUZZ_SECONDS:-15}"
