#!/usr/bin/env bash
# Builds mcp-sidecar, installs it to $PREFIX/bin (default: ~/.local/bin), then proves that the
# installed binary works: it starts the bundled example server on 127.0.0.1, runs a short MCP
# session through mcp-sidecar (initialize, tools/list, tools/call) and prints the result.
# Needs only the Rust toolchain; no internet beyond crates.io for the first build. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"

PREFIX="${PREFIX:-$HOME/.local}"
BIN="$PREFIX/bin/mcp-sidecar"

if ! command -v cargo >/dev/null 2>&1; then
    echo "install.sh: cargo was not found: install Rust (https://rustup.rs), then run ./install.sh again" >&2
    exit 1
fi

echo "==> building mcp-sidecar and the example server (release; the first build takes a few minutes)"
cargo build --release --locked --bin mcp-sidecar --example example_server

install -d "$PREFIX/bin"
install -m 0755 target/release/mcp-sidecar "$BIN"
echo "==> installed $BIN ($("$BIN" --version | head -n 1))"
# The man page, from the same definitions as --help.
install -d "$PREFIX/share/man/man1"
"$BIN" man >"$PREFIX/share/man/man1/mcp-sidecar.1"
echo "    man page: $PREFIX/share/man/man1/mcp-sidecar.1 (completions: mcp-sidecar completions bash|zsh|fish)"

echo "==> checking it against the example server on 127.0.0.1"
workdir=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT

# A throwaway key that both the example server and the sidecar read from the environment.
export INVESTRA_API_KEY="inv_install_check_$$"
target/release/examples/example_server --vendor investra >"$workdir/server.out" 2>"$workdir/server.err" &
server_pid=$!
for _ in $(seq 1 100); do
    [ -s "$workdir/server.out" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$workdir/server.err" >&2; exit 1; }
    sleep 0.1
done
url=$(head -n 1 "$workdir/server.out")
[ -n "$url" ] || { echo "install.sh: the example server did not start" >&2; cat "$workdir/server.err" >&2; exit 1; }

printf '%s\n' \
    '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"install.sh","version":"1"}}}' \
    '{"jsonrpc":"2.0","method":"notifications/initialized"}' \
    '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' \
    '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"sum","arguments":{"a":2,"b":40}}}' \
    | "$BIN" --preset investra --url "$url" >"$workdir/session.out"

echo "    server: $url"
echo "    initialize -> $(grep -o '"serverInfo":{[^}]*}' "$workdir/session.out" || echo 'no answer')"
echo "    tools/list -> $(grep '"id":2' "$workdir/session.out" | grep -o '"name":"[a-z_]*"' | cut -d'"' -f4 | tr '\n' ' ')"
echo "    tools/call sum(2, 40) -> $(grep '"id":3' "$workdir/session.out" || echo 'no answer')"
if ! grep '"id":3' "$workdir/session.out" | grep -q '"text":"42"'; then
    echo "install.sh: the check failed; the session's output was:" >&2
    cat "$workdir/session.out" >&2
    exit 1
fi
echo "==> mcp-sidecar works"

case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) echo "note: $PREFIX/bin is not on your PATH; add it, or use the full path $BIN in client configs" ;;
esac
