#!/usr/bin/env bash
# How tests/audit_vectors/lake was made (it is kept as it was made, not remade in CI):
# days sealed by datx before receipts and heads existed (commit e1c2661, OLD), then days
# received and sealed by the version that signs receipts (NEW), with one PKCS#8 v2 key
# made by OLD. Usage: make.sh OLD_DATX NEW_DATX OUT_DIR
set -euo pipefail
old=$1 new=$2 out=$3
samples="$(cd "$(dirname "$0")/../../../shared/samples" && pwd)"
mkdir -p "$out" && cd "$out"
cat > datx.toml <<'TOML'
lake = "lake"
listen = "127.0.0.1:18361"
clock_tolerance = "off"
[institutions.myvenue]
timezone = "Europe/Zurich"
auth = "none"
[institutions.othervenue]
timezone = "America/New_York"
auth = "none"
[audit]
signing_key_env = "VECTOR_KEY"
TOML
# Distinct bodies: the samples, each record marked with the body's number.
python3 - "$samples" <<'PY'
import json, sys
for name in ["ticketchecks", "orders", "contacts"]:
    data = json.load(open(f"{sys.argv[1]}/{name}.json"))
    records = data if isinstance(data, list) else [data]
    for i in range(12):
        json.dump([dict(r, vector=i) for r in records], open(f"{name}{i}.json", "w"))
PY
export VECTOR_KEY="$("$old" audit new-key)"
push() { # BINARY SHIFT stream:institution:file...
  local bin=$1 shift_=$2; shift 2
  DATX_TEST_CLOCK_SHIFT=$shift_ "$bin" serve > serve.log 2>&1 & local pid=$!
  for _ in $(seq 1 50); do curl -sf -o /dev/null http://127.0.0.1:18361/healthz && break; sleep 0.2; done
  for spec in "$@"; do
    IFS=: read -r stream institution file <<< "$spec"
    test "$(curl -s -o /dev/null -w '%{http_code}' --data-binary "@$file" "http://127.0.0.1:18361/s360/$stream/$institution")" = 200
  done
  kill "$pid"; wait "$pid" || true
}
# Days of one to five events, so that the trees have inner nodes and odd last nodes.
push "$old" -20days ticketchecks:myvenue:ticketchecks0.json ticketchecks:myvenue:ticketchecks1.json ticketchecks:myvenue:ticketchecks2.json orders:othervenue:orders0.json contacts:myvenue:contacts0.json
push "$old" -19days ticketchecks:myvenue:ticketchecks3.json orders:othervenue:orders1.json orders:othervenue:orders2.json
DATX_TEST_CLOCK_SHIFT=-16days "$old" compact > /dev/null
push "$new" -6days ticketchecks:myvenue:ticketchecks4.json ticketchecks:myvenue:ticketchecks5.json ticketchecks:myvenue:ticketchecks6.json ticketchecks:myvenue:ticketchecks7.json ticketchecks:myvenue:ticketchecks8.json orders:othervenue:orders3.json contacts:myvenue:contacts1.json contacts:myvenue:contacts2.json
push "$new" -5days ticketchecks:myvenue:ticketchecks9.json orders:othervenue:orders4.json orders:othervenue:orders5.json orders:othervenue:orders6.json contacts:myvenue:contacts3.json
"$new" compact > /dev/null
# The audit trail only: no tables, markers, lock or probes.
rm -rf lake/tables lake/_datx/seen lake/_datx/pending lake/_datx/health lake/_datx/probes lake/_datx/compactor.lock
"$new" audit public-key > public-key.txt
