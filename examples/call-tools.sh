#!/usr/bin/env bash
# mcp-sidecar from a script: list a server's tools, then call one. The key stays in the
# environment; results are JSON on stdout (pipe them to jq), errors one line on stderr, and the
# exit status says what happened (0 result, 1 failure, 2 bad arguments, 3 the server's error).
#
#   INVESTRA_API_KEY=inv_... examples/call-tools.sh --preset investra
#   EXAMPLE_KEY=... examples/call-tools.sh --url https://mcp.example.com/mcp --api-key-env EXAMPLE_KEY
#
# With no arguments it starts the bundled example server on 127.0.0.1 (offline) and uses that.
set -euo pipefail
cd "$(dirname "$0")/.."
SIDECAR=${SIDECAR:-mcp-sidecar}
command -v "$SIDECAR" >/dev/null || SIDECAR=target/release/mcp-sidecar

if [ $# -eq 0 ]; then
    cargo build --release --quiet --bin mcp-sidecar --example example_server
    export INVESTRA_API_KEY="inv_example_$$"
    out=$(mktemp)
    target/release/examples/example_server --vendor investra >"$out" 2>/dev/null &
    server=$!
    trap 'kill $server 2>/dev/null; rm -f "$out"' EXIT
    until [ -s "$out" ]; do sleep 0.1; done
    set -- --preset investra --url "$(head -n 1 "$out")"
fi

echo "== is the server healthy?" >&2
"$SIDECAR" check "$@" >&2

echo "== its tools" >&2
"$SIDECAR" tools "$@"

echo "== tools/call echo, through call" >&2
"$SIDECAR" call tools/call '{"name":"echo","arguments":{"text":"hello from a script"}}' "$@"

echo "== the same with tool, arguments as key=value" >&2
"$SIDECAR" tool echo --arg text="hello again" "$@"
