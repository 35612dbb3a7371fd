#!/usr/bin/env bash
# One command for a newcomer on a fresh Debian 12 machine (as root): install what
# the lab needs, build hagw, and bring up the seed-000 lab in network namespaces.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
need=()
for c in ip:iproute2 nft:nftables iptables:iptables cc:gcc; do
  command -v "${c%%:*}" >/dev/null || need+=("${c##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  echo "Rust is missing: installing it with rustup (https://rustup.rs)"
  apt-get install -y -q curl ca-certificates
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release --locked -p hagw
exec ./target/release/hagw lab up "$@"
