#!/usr/bin/env bash
# Failover timed without the harness costs of ../shared/bench/failover-measure.sh:
# `hagw lab time-cut` cuts the router's LAN port with one nft netdev table (every
# frame dropped both ways, no RST) and watches the host's default route over
# netlink, subscribed before the cut (no polling). Per cut it prints failover_ms
# (from the nft command's start, as the shared script counts) and after_cut_ms
# (from its return: the cut in place). hagw (`hagw lab`) and FRR (`frr-lab.sh`,
# bfdd) on the same seed-000 topology, timed the same way, in one run.
# Usage (root, after `cargo build --release -p hagw`): bench/lab-failover.sh [BFD_MS...]
#   default BFD_MS: 10 50; RUNS=20 cuts each.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SB=${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}
HAGW=${HAGW_BIN:-$HERE/../target/release/hagw}
RUNS=${RUNS:-20}

both_hops() { ip -n "$1" route show default 2>/dev/null | grep -q "via 192.168.100.20 " &&
              ip -n "$1" route show default | grep -q "via 192.168.100.21 "; }

# runs HOSTNS ROUTERNS: RUNS timed cuts of r1 (LAN port eth1), each once both
# next hops are back and BFD had time to leave slow start.
runs() {
  local i
  for i in $(seq "$RUNS"); do
    for _ in $(seq 600); do both_hops "$1" && break; sleep 0.1; done
    both_hops "$1" || { echo "failover_ms=-1 (r1 not back in the default route)"; continue; }
    sleep 3
    "$HAGW" lab time-cut "$1" "$2" eth1 192.168.100.20 || echo "failover_ms=-1"
  done
}

summary() { # name limit_ms < lines
  python3 -c '
import re, statistics, sys
name, lim = sys.argv[1], int(sys.argv[2])
t = sys.stdin.read()
allfo = [float(x) for x in re.findall(r"failover_ms=(-?[\d.]+)", t)]
fo = [x for x in allfo if x >= 0]
ac = [float(x) for x in re.findall(r"after_cut_ms=([\d.]+)", t)]
if not fo: print(f"{name}: no result"); sys.exit()
f = lambda v: f"{min(v):.1f} / {statistics.median(v):.1f} / {max(v):.1f} ms"
print(f"{name}: {len(allfo)} cuts, {len(allfo) - len(fo)} failed; failover {f(fo)} "
      f"({sum(x <= lim for x in fo)} of {len(allfo)} within {lim} ms); after the cut was in place {f(ac)}")
' "$1" "$2"
}

for ms in ${*:-10 50}; do
  lim=$(( ms == 10 ? 40 : (ms == 50 ? 160 : 4 * ms) ))
  echo "=== BFD $ms ms x 3, $RUNS cuts each"
  "$HAGW" lab down >/dev/null 2>&1
  "$HAGW" lab up --bfd-ms "$ms" --flows 0 >/tmp/lab-failover-up.log 2>&1 || { cat /tmp/lab-failover-up.log; exit 1; }
  runs hagwlab-host hagwlab-r1 | tee /tmp/lab-failover-hagw-$ms.txt | summary "hagw bfd=$ms" "$lim"
  "$HAGW" lab down >/dev/null 2>&1
  BFD=1 BFD_MS=$ms "$SB/frr-lab.sh" up >/dev/null 2>&1
  runs fhost fr1 | tee /tmp/lab-failover-frr-$ms.txt | summary "frr  bfd=$ms" "$lim"
  "$SB/frr-lab.sh" down >/dev/null 2>&1
done
