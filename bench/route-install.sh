#!/usr/bin/env bash
# 100k /32s from one BGP peer into the router's kernel: `ip -batch`, hagw, FRR and
# BIRD in one run (../shared/bench/route-install.sh), ROUNDS rounds, the
# implementations interleaved within each round so that the machine's load falls
# on all of them alike. Prints every run, then min / median / max of the time and
# the RSS per implementation, and hagw's time over each anchor's, round by round.
# Usage (root, after `cargo build --release -p hagw`): bench/route-install.sh [N] [ROUNDS]
#   IMPLS="ipbatch hagw frr bird" to choose.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SB=${SHARED_BENCH:-}
for c in "$HERE/../../shared/bench" "$HERE/../../../shared/bench"; do
  [ -z "$SB" ] && [ -x "$c/route-install.sh" ] && SB=$(cd "$c" && pwd)
done
[ -n "$SB" ] || { echo "set SHARED_BENCH to ../shared/bench" >&2; exit 2; }
N=${1:-100000}; ROUNDS=${2:-3}
IMPLS=${IMPLS:-ipbatch hagw frr bird}
out=$(mktemp)
for r in $(seq "$ROUNDS"); do
  for impl in $IMPLS; do
    case $impl in
      hagw) cmd="$HERE/hagw-route-router.sh";;
      *) cmd=$impl;;
    esac
    line=$("$SB/route-install.sh" "$N" "$cmd" 2>/dev/null | grep '^impl=' | tail -1)
    line=${line/impl=hagw-route-router.sh/impl=hagw}
    [ -f /tmp/rilab/hagw.hwm ] && [ "$impl" = hagw ] && line="$line router_hwm_kib=$(cat /tmp/rilab/hagw.hwm)"
    echo "round=$r $line" | tee -a "$out"
  done
done
python3 - "$out" "$N" <<'PY'
import sys, re, statistics as st
rows, n = [], int(sys.argv[2])
for l in open(sys.argv[1]):
    kv = dict(re.findall(r'(\w+)=(\S+)', l))
    if 'impl' in kv:
        rows.append(kv)
impls = list(dict.fromkeys(r['impl'] for r in rows))
print(f"--- {n} /32s: time until all are in the kernel (s), RSS (MB); min / median / max")
for i in impls:
    rs = [r for r in rows if r['impl'] == i]
    t = [float(r['install_s']) for r in rs]
    ok = sum(int(r['routes']) >= n for r in rs)
    line = f"{i:8} time {min(t):.2f} / {st.median(t):.2f} / {max(t):.2f}"
    if 'router_rss_kib' in rs[0]:
        m = [int(r['router_rss_kib']) / 1024 for r in rs]
        line += f"   RSS {min(m):.0f} / {st.median(m):.0f} / {max(m):.0f} MB"
    if 'router_hwm_kib' in rs[0]:
        m = [int(r['router_hwm_kib']) / 1024 for r in rs]
        line += f"   peak RSS {min(m):.0f} / {st.median(m):.0f} / {max(m):.0f} MB"
    print(line + f"   ({ok} of {len(rs)} runs complete)")
if 'hagw' in impls:
    for a in [i for i in impls if i != 'hagw']:
        q = []
        for r in set(x['round'] for x in rows):
            h = [float(x['install_s']) for x in rows if x['round'] == r and x['impl'] == 'hagw']
            o = [float(x['install_s']) for x in rows if x['round'] == r and x['impl'] == a]
            if h and o and o[0] > 0:
                q.append(h[0] / o[0])
        if q:
            print(f"hagw / {a}: {min(q):.2f} / {st.median(q):.2f} / {max(q):.2f} (per round)")
PY
rm -f "$out"
