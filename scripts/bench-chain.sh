#!/usr/bin/env bash
# bench-chain.sh: requests/s of a read by id through the real omnigate
# binary with [session, cache] against the same read with access control and
# the audit trail added, side by side in interleaved rounds (wrk on
# loopback, in-process state: no Redis). CPU per request is the gateway
# process's user+system time from /proc divided by the requests wrk made.
#
#   make build && scripts/bench-chain.sh            # ROUNDS=5 DUR=10s CONNS=50
set -euo pipefail
BIN=${BIN:-$(pwd)/bin/omnigate}
ROUNDS=${ROUNDS:-5}; DUR=${DUR:-10s}; CONNS=${CONNS:-50}
EXAMPLES=${EXAMPLES:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fhir-r4/examples}
command -v wrk >/dev/null || { echo "bench-chain: needs wrk (apt-get install wrk)" >&2; exit 1; }
TMP=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT

variants=(base authz audit-file audit-default)
chain() { case $1 in
  base) echo "[session, cache]";;
  authz) echo "[session, authz, cache]";;
  *) echo "[session, audit, authz, cache]";; esac; }
sinks() { case $1 in
  audit-file) echo "[{type: file, path: ./data/audit.jsonl}]";;
  *) echo "[{type: fhir}, {type: file, path: ./data/audit.jsonl}]";; esac; }

port=18080
for v in "${variants[@]}"; do
  d=$TMP/$v; mkdir -p "$d/data"
  cat > "$d/omnigate.yaml" <<YAML
listen: "127.0.0.1:$port"
admin: "127.0.0.1:$((port+100))"
plugins:
  session: {type: session, users: {file: ./data/users.yaml, create: false}}
  authz: {type: authz}
  audit: {type: audit, sinks: $(sinks "$v")}
  cache: {type: cache, l1: {enabled: true}}
routes:
  - fhir: true
    plugins: $(chain "$v")
YAML
  (cd "$d" && echo -n "physician-password" | "$BIN" user add -username doc -role physician -file ./data/users.yaml -password-stdin >/dev/null
   "$BIN" fhir import -config omnigate.yaml "$EXAMPLES"/*.json >/dev/null 2>&1)
  (cd "$d" && exec "$BIN" serve -config omnigate.yaml >/dev/null 2>"$d/stderr") &
  PIDS+=($!); echo "$!" > "$d/pid"; echo "$port" > "$d/port"
  port=$((port+1))
done
for v in "${variants[@]}"; do
  p=$(cat "$TMP/$v/port")
  for _ in $(seq 100); do curl -sf "localhost:$p/fhir/R4/metadata" >/dev/null && break; sleep 0.1; done
  curl -sf -X POST "localhost:$p/auth/login" -H 'Content-Type: application/json' \
    -d '{"username":"doc","password":"physician-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/' > "$TMP/$v/token"
  # imported Observations get ids of the server's: read the first of patient 85's
  curl -sf "localhost:$p/fhir/R4/Observation?patient=85&_count=1&_sort=_id" -H "Authorization: Bearer $(cat "$TMP/$v/token")" |
    grep -o '"fullUrl":"[^"]*"' | head -1 | sed 's/.*\/\(Observation\/[^"]*\)"/\1/' > "$TMP/$v/obs"
done
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }   # clock ticks
hz=$(getconf CLK_TCK)
echo "variant read round rps p50 p99 cpu_us_per_req"
for what in Patient/85 Observation; do
  for r in $(seq "$ROUNDS"); do
    for v in "${variants[@]}"; do
      path=/fhir/R4/$what; [ "$what" = Observation ] && path=/fhir/R4/$(cat "$TMP/$v/obs")
      p=$(cat "$TMP/$v/port"); pid=$(cat "$TMP/$v/pid"); tok=$(cat "$TMP/$v/token")
      wrk -t2 -c"$CONNS" -d1s -H "Authorization: Bearer $tok" "http://127.0.0.1:$p$path" >/dev/null
      c0=$(cpu "$pid")
      out=$(wrk -t2 -c"$CONNS" -d"$DUR" --latency -H "Authorization: Bearer $tok" "http://127.0.0.1:$p$path")
      c1=$(cpu "$pid")
      n=$(echo "$out" | awk '/requests in/{print $1}')
      non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}')
      [ -n "$non2xx" ] && { echo "bench-chain: $v $path: $non2xx non-2xx answers" >&2; exit 1; }
      rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      p50=$(echo "$out" | awk '$1=="50%"{print $2}'); p99=$(echo "$out" | awk '$1=="99%"{print $2}')
      echo "$v $what $r $rps $p50 $p99 $(awk -v a="$c0" -v b="$c1" -v n="$n" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')"
    done
  done
done
