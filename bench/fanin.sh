#!/usr/bin/env bash
# Router fan-in: N hosts connect at once (../shared/bench/scale-peers.sh, the C
# client) to the floor, hagw, FRR, BIRD and GoBGP, all in one run so the figures
# compare. Prints one line per (N, implementation) and a ratio summary.
# Usage (root, after `cargo build --release -p hagw`): bench/fanin.sh [N...]
#   default N: 500 2000 5000 19000. IMPLS="floor hagw frr bird gobgp" to choose.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SB=${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}
export SHARED_BENCH=$SB
NS=${*:-500 2000 5000 19000}
IMPLS=${IMPLS:-floor hagw frr bird gobgp}
out=$(mktemp)
for n in $NS; do
  # Anchors that cannot finish get a bounded wait, as in the issue's figures.
  tmo=$(( n >= 19000 ? 150 : (n >= 5000 ? 100 : 60) ))
  for impl in $IMPLS; do
    case $impl in
      floor) cmd="$HERE/floor-router.sh";;
      hagw) cmd="$HERE/hagw-router.sh";;
      gobgp) cmd="$SB/gobgp-router.sh";;
      *) cmd=$impl;;
    esac
    line=$(TMO=$tmo "$SB/scale-peers.sh" "$n" "$cmd" 2>/dev/null | grep '^impl=' | tail -1)
    line=${line/impl=floor-router.sh/impl=floor}
    line=${line/impl=hagw-router.sh/impl=hagw}
    line=${line/impl=gobgp-router.sh/impl=gobgp}
    echo "$line" | tee -a "$out"
  done
done
echo "--- time until every host has the default (s) / router RSS (MB); -1 = not all within the timeout"
python3 - "$out" <<'PY'
import sys, re
rows = {}
for l in open(sys.argv[1]):
    kv = dict(re.findall(r'(\w+)=(\S+)', l))
    if 'peers' in kv:
        rows.setdefault(int(kv['peers']), {})[kv['impl']] = kv
for n in sorted(rows):
    r = rows[n]; h = r.get('hagw')
    parts = []
    for impl, kv in r.items():
        t = float(kv['all_default_s']); rss = int(kv['router_rss_kib']) / 1024
        s = f"{impl} {t:.2f}s/{rss:.0f}MB" if t >= 0 else f"{impl} {kv['with_default']}/{n} in timeout/{rss:.0f}MB"
        ht = float(h['all_default_s']) if h else -1
        if impl == 'floor' and t > 0 and ht > 0:
            s += f" (hagw = floor x{ht / t:.1f})"
        elif h and impl != 'hagw' and t > 0 and ht > 0:
            s += f" ({impl} = hagw x{t / ht:.1f})"
        parts.append(s)
    print(f"N={n}: " + "; ".join(parts))
PY
rm -f "$out"
