#!/usr/bin/env bash
# Failover time: a router's LAN link is cut silently (../shared/bench/failover-measure.sh:
# iptables DROP in and out, no RST) until the host's default route no longer lists it.
# hagw (`hagw lab`) and FRR (`frr-lab.sh`) on the same seed-000 topology, in one run.
# Usage (root, after `cargo build --release -p hagw`): bench/failover.sh [BFD_MS...]
#   default BFD_MS: 10 50 0   (0 = no BFD: BGP hold time 3 s, keepalive 1 s)
#   RUNS=20 runs per setting (RUNS_NOBFD=3 for the slow hold-timer case).
#   CAPTURE=1 also captures the dead router's BFD packets on the host (tcpdump) and
#   prints, per run, the floor no RFC 5880 implementation can beat: the time of the
#   router's last packet heard after t0, plus 3 x the interval (its detection time).
#   The capture loads the machine a little, for both daemons alike. For hagw it
#   also prints when the host's hagw replaced the route (its log, fib=debug), so a
#   run splits into floor, hagw's own part, and the script's polling.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SB=${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}
HAGW=${HAGW_BIN:-$HERE/../target/release/hagw}
RUNS=${RUNS:-20}
SETTINGS=${*:-10 50 0}

both_hops() { ip -n "$1" route show default 2>/dev/null | grep -q "via 192.168.100.20" &&
              ip -n "$1" route show default | grep -q "via 192.168.100.21"; }

# measure HOSTNS ROUTERNS N MS: N cuts of r1, each after both next hops are back and
# BFD had time to leave slow start; prints one failover_ms per run (and floor_ms
# with CAPTURE=1).
measure() {
  local h=$1 r=$2 n=$3 ms=$4 i
  for i in $(seq "$n"); do
    for _ in $(seq 600); do both_hops "$h" && break; sleep 0.1; done
    both_hops "$h" || { echo "failover_ms=-1 (r1 never came back)"; continue; }
    sleep 3
    if [ "${CAPTURE:-0}" = 1 ] && [ "$ms" != 0 ]; then
      rm -f /tmp/failover-cap.pcap
      ip netns exec "$h" tcpdump --immediate-mode -U -i eth1 -nn --time-stamp-precision=nano \
        -w /tmp/failover-cap.pcap udp dst port 3784 and src 192.168.100.20 2>/dev/null &
      local cap=$!
      sleep 0.5
      local out; out=$("$HERE/failover-measure-t0.sh" "$h" "$r" 192.168.100.20)
      sleep 0.2; kill "$cap"; wait "$cap" 2>/dev/null
      # hagw: the route batches the host applied (µs wall clock, like t0); the
      # first one after t0 is the failover's.
      [ "$h" = hagwlab-host ] && out="$out route_at=$(grep 'applied batch' /run/hagw-lab/host.log |
        tail -20 | cut -d' ' -f1 | paste -sd,)"
      tcpdump -r /tmp/failover-cap.pcap -nn -tt --time-stamp-precision=nano 2>/dev/null |
        python3 -c '
import sys, re
out, ms = sys.argv[1], int(sys.argv[2])
t0, t1 = (int(re.search(k + r"=(\d+)", out).group(1)) for k in ("t0", "t1"))
ts = [int(l.split()[0].replace(".", "")) for l in sys.stdin if l.strip()]
last = max((t for t in ts if t < t1), default=None)
fo = re.search(r"failover_ms=\d+", out).group(0)
route = ""
m = re.search(r"route_at=(\S+)", out)
if m:
    from datetime import datetime, timezone
    def ns(s):
        at = datetime.strptime(s[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
        return int(at.timestamp() * 1e6) * 1000
    after = [t for t in map(ns, m.group(1).split(",")) if t >= t0]
    if after:
        route = f" route_ms={(min(after) - t0) / 1e6:.2f}"
if last is None: print(fo)
else: print(f"{fo} floor_ms={(last - t0) / 1e6 + 3 * ms:.2f}{route}")
' "$out" "$ms"
    else
      "$SB/failover-measure.sh" "$h" "$r" 192.168.100.20 | grep failover_ms
    fi
  done
}

summary() { # name target_ms < failover_ms lines
  python3 -c '
import sys, re, statistics
name, target = sys.argv[1], int(sys.argv[2])
text = sys.stdin.read()
v = [int(m) for m in re.findall(r"failover_ms=(-?\d+)", text)]
ok = [x for x in v if x >= 0]
if not ok: print(f"{name}: no result"); sys.exit()
within = sum(1 for x in ok if x <= target) if target > 0 else len(ok)
print(f"{name}: runs={len(v)} min={min(ok)} median={statistics.median(ok):.0f} max={max(ok)} ms"
      + (f"; within {target} ms: {within}/{len(v)}" if target > 0 else ""))
pairs = [(int(a), float(b)) for a, b in re.findall(r"failover_ms=(\d+) floor_ms=([-\d.]+)", text)]
routes = [(float(b), float(c), int(a)) for a, b, c in re.findall(r"failover_ms=(\d+) floor_ms=([-\d.]+) route_ms=([-\d.]+)", text)]
if pairs:
    fl = [b for _, b in pairs]; over = [a - b for a, b in pairs]
    print(f"  floor (last packet + 3 x interval): min={min(fl):.1f} median={statistics.median(fl):.1f} max={max(fl):.1f} ms"
          + (f"; above {target} ms in {sum(1 for b in fl if b > target)}/{len(fl)} runs (no implementation can be within)" if target > 0 else ""))
    print(f"  failover minus floor (daemon + poll): min={min(over):.1f} median={statistics.median(over):.1f} max={max(over):.1f} ms")
if routes:
    own = [c - b for b, c, _ in routes]; poll = [a - c for _, c, a in routes]
    print(f"  route replaced after the floor (hagw itself): min={min(own):.2f} median={statistics.median(own):.2f} max={max(own):.2f} ms")
    print(f"  script saw it after the replace (its polling): min={min(poll):.1f} median={statistics.median(poll):.1f} max={max(poll):.1f} ms")
' "$1" "$2"
}

for ms in $SETTINGS; do
  n=$RUNS; target=0
  case $ms in 0) n=${RUNS_NOBFD:-3};; 10) target=40;; 50) target=160;; esac
  echo "=== BFD ${ms} ms x 3 (0 = none), $n runs each"
  RUST_LOG=${RUST_LOG:-info,hagw_kernel::fib=debug} \
    "$HAGW" lab up --bfd-ms "$ms" --flows 0 >/tmp/failover-lab.log 2>&1 || { cat /tmp/failover-lab.log; exit 1; }
  measure hagwlab-host hagwlab-r1 "$n" "$ms" | tee /tmp/failover-hagw-$ms.txt | summary "hagw bfd=${ms}" "$target"
  "$HAGW" lab down >/dev/null 2>&1
  if [ "$ms" = 0 ]; then "$SB/frr-lab.sh" up >/dev/null 2>&1; else BFD=1 BFD_MS=$ms "$SB/frr-lab.sh" up >/dev/null 2>&1; fi
  measure fhost fr1 "$n" "$ms" | tee /tmp/failover-frr-$ms.txt | summary "frr  bfd=${ms}" "$target"
  "$SB/frr-lab.sh" down >/dev/null 2>&1
done
