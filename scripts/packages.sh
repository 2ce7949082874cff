#!/usr/bin/env bash
# Issue 12: the one-line installs, built from this checkout and used the way users use them, with
# no registry (.ci/run runs this):
#   npm:  the launcher package and the linux-x64 package packed from the local binary, installed
#         from the tarballs into an empty prefix (the registry set to a closed port), then a real
#         session through `npx mcp-sidecar` (scripts/smoke.py); the win32-x64 package packed from
#         the Windows build and checked to hold the .exe;
#   PyPI: the manylinux wheel (maturin, bindings = "bin") installed into a fresh venv with
#         --no-index, then a real session through the venv's `mcp-sidecar`, through `uvx` and
#         through `pipx run` (offline, on the wheel); the Windows wheel built for
#         x86_64-pc-windows-gnu and checked to hold mcp-sidecar.exe;
#   cargo install --locked --path . and a session through what it installed;
#   the release archive layout served from 127.0.0.1 to scripts/install-release.sh.
# It also measures what the npm launcher adds to startup.
#
#   scripts/packages.sh             # needs: cargo, node/npm, python3; maturin, uv and pipx are
#                                   # fetched from PyPI into a venv
#   scripts/packages.sh --release   # package release builds (CI packages the dev build, stripped:
#                                   # the packaging is what is under test, and it saves 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${PACKAGES_OUT:-$TARGET/packages}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PROFILE=dev; PROFILE_DIR=debug; PROFILE_FLAG=()
[ "${1:-}" = --release ] && { PROFILE=release; PROFILE_DIR=release; PROFILE_FLAG=(--release); }
SERVER=$TARGET/debug/examples/example_server
WIN_TARGET=x86_64-pc-windows-gnu
# No registry: anything npm would fetch fails at once instead.
export npm_config_registry=http://127.0.0.1:9/ npm_config_audit=false npm_config_fund=false \
  npm_config_update_notifier=false
rm -rf "$OUT" && mkdir -p "$OUT"
say() { printf 'packages: %s\n' "$*" >&2; }

# Two invocations: built together, the example's dev-dependency features would leak into the
# binary that ships.
cargo build --locked "${PROFILE_FLAG[@]}" --bin mcp-sidecar
cargo build --locked --example example_server
cargo build --locked "${PROFILE_FLAG[@]}" --target "$WIN_TARGET" --bin mcp-sidecar
# Stripped of debug information, as a release is.
mkdir -p "$OUT/linux" "$OUT/windows"
strip -o "$OUT/linux/mcp-sidecar" "$TARGET/$PROFILE_DIR/mcp-sidecar"
x86_64-w64-mingw32-strip -o "$OUT/windows/mcp-sidecar.exe" "$TARGET/$WIN_TARGET/$PROFILE_DIR/mcp-sidecar.exe"
BIN=$OUT/linux/mcp-sidecar
WIN_EXE=$OUT/windows/mcp-sidecar.exe

# --- npm ---------------------------------------------------------------------------------------
node packaging/npm/stage.js "$OUT/npm" "$VERSION" linux-x64="$BIN" win32-x64="$WIN_EXE"
for dir in launcher linux-x64 win32-x64; do
  (cd "$OUT/npm/$dir" && npm pack --silent --pack-destination "$OUT/npm" >/dev/null)
done
LAUNCHER_TGZ=$OUT/npm/mcp-sidecar-$VERSION.tgz
LINUX_TGZ=$OUT/npm/mcp-sidecar-linux-x64-$VERSION.tgz
WIN_TGZ=$OUT/npm/mcp-sidecar-win32-x64-$VERSION.tgz
listing=$(tar -tzf "$WIN_TGZ")
grep -qx 'package/bin/mcp-sidecar.exe' <<< "$listing" || { say "FAILED: $WIN_TGZ has no bin/mcp-sidecar.exe"; exit 1; }
say "packed $(cd "$OUT/npm" && ls ./*.tgz | xargs -n1 basename | tr '\n' ' ')"

PREFIX=$OUT/npm-prefix
mkdir -p "$PREFIX"
(cd "$PREFIX" && npm init -y >/dev/null && npm install --offline --no-save --silent "$LINUX_TGZ" "$LAUNCHER_TGZ")
[ -x "$PREFIX/node_modules/@mcp-sidecar/linux-x64/bin/mcp-sidecar" ] || { say "FAILED: the binary was not installed executable"; exit 1; }
(cd "$PREFIX" && python3 "$ROOT/scripts/smoke.py" --server "$SERVER" --label "npx mcp-sidecar" -- npx --offline mcp-sidecar)
# The exit status passes through the launcher untouched.
set +e
(cd "$PREFIX" && npx --offline mcp-sidecar --no-such-flag >/dev/null 2>&1); launched=$?
"$BIN" --no-such-flag >/dev/null 2>&1; direct=$?
set -e
[ "$launched" = "$direct" ] && [ "$direct" != 0 ] || { say "FAILED: exit status $launched through npx, $direct direct"; exit 1; }

# `npx -y` on a machine that never ran it: npx installs into its own cache (here from the
# tarballs, no registry) and runs from there. `install` run that way names npx in the entry, not
# the cached binary a cache clean would remove.
NPX_CACHE=$OUT/npx-cache
npx_fresh() {
  (cd "$OUT" && npm_config_cache=$NPX_CACHE npx -y --offline --package="$LINUX_TGZ" --package="$LAUNCHER_TGZ" mcp-sidecar "$@")
}
npx_fresh --version >/dev/null
find "$NPX_CACHE/_npx" -path '*@mcp-sidecar/linux-x64/bin/mcp-sidecar' | grep -q . ||
  { say "FAILED: npx did not run the binary from its cache"; exit 1; }
INVESTRA_API_KEY=inv_packages_test_key_1234 npx_fresh install --client claude-desktop \
  --config-file "$OUT/claude_desktop_config.json" --preset investra >/dev/null 2>&1
node -e '
  const e = require(process.argv[1]).mcpServers.investra;
  const ok = /(^|\/)npx$/.test(e.command) && JSON.stringify(e.args) === JSON.stringify(["-y", "mcp-sidecar", "--preset", "investra"]);
  if (!ok) { console.error("packages: FAILED: installed through npx, the entry is " + JSON.stringify(e)); process.exit(1); }
' "$OUT/claude_desktop_config.json"
say "npx -y from an empty cache runs the binary; install through it writes an npx entry"

# SIGTERM to the launcher reaches the binary, which ends as it does when signalled directly.
python3 - "$ROOT/scripts" "$SERVER" "$BIN" "$PREFIX" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import smoke
server, url = smoke.example_server(sys.argv[2])
try:
    direct = smoke.stop_by_signal([sys.argv[3]], url)
    launched = smoke.stop_by_signal(["node", f"{sys.argv[4]}/node_modules/mcp-sidecar/bin/mcp-sidecar.js"], url)
finally:
    server.kill()
if direct != launched:
    smoke.fail(f"SIGTERM: exit status {launched} through the launcher, {direct} direct")
print(f"packages: SIGTERM passes through the launcher (exit status {launched}, as direct)", file=sys.stderr)
EOF
# Without its platform package (npm --omit=optional), the launcher says what to do.
LONE=$OUT/npm-launcher-only
mkdir -p "$LONE"
(cd "$LONE" && npm init -y >/dev/null && npm install --offline --no-save --silent --omit=optional "$LAUNCHER_TGZ")
set +e
lone_err=$(cd "$LONE" && npx --offline mcp-sidecar --version 2>&1 >/dev/null); lone=$?
set -e
[ "$lone" = 2 ] && grep -q 'is not installed.*MCP_SIDECAR_BINARY' <<< "$lone_err" ||
  { say "FAILED: the launcher without its binary: exit $lone: $lone_err"; exit 1; }

# What the launcher costs at start: median of 15 runs of --version, direct, through the launcher
# with node, and through npx.
python3 - "$BIN" "$PREFIX" <<'EOF'
import statistics, subprocess, sys, time
binary, prefix = sys.argv[1:]
def median_ms(argv, cwd=None):
    runs = []
    for _ in range(15):
        t = time.perf_counter()
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs)
direct = median_ms([binary, "--version"])
node = median_ms(["node", f"{prefix}/node_modules/mcp-sidecar/bin/mcp-sidecar.js", "--version"])
npx = median_ms(["npx", "--offline", "mcp-sidecar", "--version"], cwd=prefix)
print(f"packages: start to exit of --version (median of 15): binary {direct:.1f} ms, "
      f"node launcher {node:.1f} ms, npx {npx:.1f} ms", file=sys.stderr)
EOF

# --- PyPI --------------------------------------------------------------------------------------
python3 -m venv "$OUT/build-venv"
if [ -n "${MATURIN:-}" ]; then :; elif command -v maturin >/dev/null 2>&1; then MATURIN=maturin; else
  "$OUT/build-venv/bin/pip" install --quiet 'maturin>=1.5,<2'
  MATURIN=$OUT/build-venv/bin/maturin
fi
"$MATURIN" build --locked --strip "${PROFILE_FLAG[@]}" --out "$OUT/wheels" --quiet 2>&1 | grep -v '^📦\|^🔗\|^🐍' >&2 || true
"$MATURIN" build --locked --strip "${PROFILE_FLAG[@]}" --target "$WIN_TARGET" --out "$OUT/wheels" --quiet 2>&1 | grep -v '^📦\|^🔗\|^🐍' >&2 || true
LINUX_WHL=$(ls "$OUT"/wheels/mcp_sidecar-"$VERSION"-*manylinux*x86_64*.whl)
WIN_WHL=$(ls "$OUT"/wheels/mcp_sidecar-"$VERSION"-*win_amd64.whl)
python3 - "$WIN_WHL" "$VERSION" <<'EOF'
import sys, zipfile
wheel, version = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
exe = f"mcp_sidecar-{version}.data/scripts/mcp-sidecar.exe"
if exe not in names:
    sys.exit(f"packages: FAILED: {wheel} has no {exe}: {names}")
EOF
say "built $(basename "$LINUX_WHL") and $(basename "$WIN_WHL") (holds mcp-sidecar.exe)"
python3 -m venv "$OUT/venv"
"$OUT/venv/bin/pip" install --quiet --no-index "$LINUX_WHL"
python3 scripts/smoke.py --server "$SERVER" --label "pip-installed wheel" -- "$OUT/venv/bin/mcp-sidecar"
# uvx and pipx run, as the one-liners use them, on the wheel (no index: nothing is fetched).
"$OUT/build-venv/bin/pip" install --quiet uv pipx
UVX=$OUT/build-venv/bin/uvx
export UV_CACHE_DIR=$OUT/uv-cache UV_OFFLINE=1 UV_NO_CONFIG=1
python3 scripts/smoke.py --server "$SERVER" --label "uvx" -- "$UVX" --from "$LINUX_WHL" mcp-sidecar
INVESTRA_API_KEY=inv_packages_test_key_1234 "$UVX" --from "$LINUX_WHL" mcp-sidecar install --client claude-desktop \
  --config-file "$OUT/uvx_desktop_config.json" --preset investra >/dev/null 2>&1
python3 - "$OUT/uvx_desktop_config.json" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))["mcpServers"]["investra"]
if not e["command"].endswith("uvx") or e["args"] != ["mcp-sidecar", "--preset", "investra"]:
    sys.exit(f"packages: FAILED: installed through uvx, the entry is {e}")
EOF
export PIPX_HOME=$OUT/pipx-home PIPX_BIN_DIR=$OUT/pipx-bin
python3 scripts/smoke.py --server "$SERVER" --label "pipx run" -- \
  "$OUT/build-venv/bin/pipx" run --pip-args=--no-index --spec "$LINUX_WHL" mcp-sidecar
say "uvx and pipx run start the wheel's binary; install through uvx writes a uvx entry"

# --- cargo install -----------------------------------------------------------------------------
# Still the path for anyone with a toolchain (the build above is reused).
debug=(); [ "$PROFILE" = dev ] && debug=(--debug)
cargo install --locked --quiet "${debug[@]}" --path . --root "$OUT/cargo-root" --target-dir "$TARGET"
python3 scripts/smoke.py --server "$SERVER" --label "cargo install" -- "$OUT/cargo-root/bin/mcp-sidecar"

# --- release archives and install-release.sh ---------------------------------------------------
# The archive layout of .github/workflows/release.yml, served from 127.0.0.1: the script installs
# a good archive, and refuses one that does not match its SHA-256 (nothing installed).
REL=$OUT/release
mkdir -p "$REL/stage"
cp "$BIN" README.md "$REL/stage/"
ARCHIVE=mcp-sidecar-x86_64-unknown-linux-musl.tar.gz
tar -C "$REL/stage" -czf "$REL/$ARCHIVE" mcp-sidecar README.md && rm -rf "$REL/stage"
(cd "$REL" && sha256sum "$ARCHIVE" > "$ARCHIVE.sha256")
python3 -u -c '
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()' "$REL" > "$OUT/mirror-port" 2>/dev/null &
MIRROR=$!
trap 'kill $MIRROR 2>/dev/null || true' EXIT
while [ ! -s "$OUT/mirror-port" ]; do sleep 0.1; done
export MCP_SIDECAR_DOWNLOAD_URL=http://127.0.0.1:$(cat "$OUT/mirror-port")
MCP_SIDECAR_INSTALL_DIR=$OUT/installed sh scripts/install-release.sh >/dev/null 2>&1 ||
  { say "FAILED: install-release.sh: $(MCP_SIDECAR_INSTALL_DIR=$OUT/installed sh scripts/install-release.sh 2>&1)"; exit 1; }
"$OUT/installed/mcp-sidecar" --version >/dev/null
printf 'tampered' >> "$REL/$ARCHIVE"
if MCP_SIDECAR_INSTALL_DIR=$OUT/tampered sh scripts/install-release.sh 2>"$OUT/tampered.err"; then
  say "FAILED: install-release.sh installed an archive that does not match its SHA-256"; exit 1
fi
grep -q 'does not match its SHA-256' "$OUT/tampered.err" && [ ! -e "$OUT/tampered/mcp-sidecar" ] ||
  { say "FAILED: a tampered archive: $(cat "$OUT/tampered.err")"; exit 1; }
say "install-release.sh: installs a checked archive, refuses a tampered one"
say "ok ($PROFILE builds)"
