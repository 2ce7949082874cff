#!/usr/bin/env bash
# The interop matrix (issue 20): the real MCP SDKs on both sides of mcp-sidecar.
#
#   scripts/interop.sh [TEXT]      TEXT: run only the pairs whose "client / server" names contain it
#   MCP_SIDECAR_WINDOWS_EXE=target/x86_64-pc-windows-gnu/debug/mcp-sidecar.exe \
#   MCP_SIDECAR_WINE_RUN=../shared/windows/wine-run scripts/interop.sh
#                                  also the Windows build under Wine, for the pairs of issue 20
#
# Clients: the Python SDK's ClientSession (handshake) and Client(mode="auto"), the TypeScript
# SDK's Client over stdio. Servers: the Python SDK's MCPServer (stateful, stateless_http, and
# behind a layer that refuses the handshake era: a 2026-07-28-only server), the TypeScript SDK's
# McpServer, the reference "everything" server, rmcp (the example server) and this project's
# stateless-only server (examples/stateless_server). Each pair runs
# connect, tools/list, tools/call, a cancelled call, an elicitation round trip, a 429 on the first
# request and the DELETE at exit; see tests/interop/driver.py.
#
# Installs what it needs, pinned exactly, under target/interop (from PyPI and the npm registry):
# a Python virtual environment from tests/interop/requirements.txt, and the npm packages of
# tests/interop/package-lock.json with `npm ci`. Needs Python >= 3.10 and Node >= 18.
# The table of results goes to target/interop/matrix.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=target/interop
mkdir -p "$DIR"

VENV=$DIR/venv
if ! cmp -s tests/interop/requirements.txt "$VENV/requirements.txt" 2>/dev/null; then
  echo "interop: installing the Python SDK into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r tests/interop/requirements.txt
  cp tests/interop/requirements.txt "$VENV/requirements.txt"
fi

NODE_DIR=$DIR/node
if ! cmp -s tests/interop/package-lock.json "$NODE_DIR/package-lock.json" 2>/dev/null || [ ! -d "$NODE_DIR/node_modules" ]; then
  echo "interop: installing the TypeScript SDK and the everything server into $NODE_DIR" >&2
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp tests/interop/package.json tests/interop/package-lock.json "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

cargo build --locked --quiet --bin mcp-sidecar --example example_server --example stateless_server
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
exec python3 tests/interop/driver.py \
  --sidecar "$TARGET/debug/mcp-sidecar" \
  --example-server "$TARGET/debug/examples/example_server" \
  --stateless-server "$TARGET/debug/examples/stateless_server" \
  --python "$PWD/$VENV/bin/python" \
  --node node \
  --node-dir "$PWD/$NODE_DIR" \
  --table "$DIR/matrix.md" \
  ${MCP_SIDECAR_WINDOWS_EXE:+--windows-sidecar "$MCP_SIDECAR_WINDOWS_EXE" --wine "$MCP_SIDECAR_WINE_RUN"} \
  ${1:+--only "$1"}
