#!/usr/bin/env bash
# Applying one change (a port forward added, another removed) to 1,000
# full-NAT port forwards (2,001 rules), timed four ways in one run, in a
# scratch network namespace: hagw's reconciler (Nat::set until in sync: the
# table rendered and replaced in one transaction), `nft -f` of the same
# ruleset written by hand (the seed's `flush ruleset` + the whole table),
# `iptables-restore` of the same rules (nf_tables backend), and a hand-made
# incremental `nft -f` (2 add rule + 2 delete rule handle).
# Usage (root): bench/nat-apply.sh [FORWARDS=1000] [CHANGES=20]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
N=${1:-1000}
ROUNDS=${2:-20}
cargo build --release -q -p hagw-kernel --example nat_apply
NS=hagw-bench-nat-$$
ip netns add "$NS"
trap 'ip netns del "$NS"' EXIT
# The interfaces the hand-written rules name (`iif`/`oif` need them).
ip -n "$NS" link add xenbr0 type bridge
ip -n "$NS" link add guestbr0 type bridge
echo "nft $(nft --version | awk '{print $2}'), $(iptables --version), kernel $(uname -r), $(nproc) cores"
ip netns exec "$NS" target/release/examples/nat_apply "$N" "$ROUNDS"
