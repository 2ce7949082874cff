#!/bin/sh
# Installs a released mcp-sidecar binary for Linux (static, x86_64 or aarch64) or macOS
# (universal), after checking the archive against its published SHA-256 (issue 12). Nothing is
# installed when the check fails. Windows: install-release.ps1.
#
#   curl -fsSL https://github.com/mcp-sidecar/mcp-sidecar/releases/latest/download/install-release.sh | sh
#
# MCP_SIDECAR_VERSION       a release tag (default: the latest release)
# MCP_SIDECAR_INSTALL_DIR   where the binary goes (default: ~/.local/bin)
# MCP_SIDECAR_DOWNLOAD_URL  where the archives are (default: the release's download URL)
set -eu

repo=${MCP_SIDECAR_REPO:-mcp-sidecar/mcp-sidecar}
version=${MCP_SIDECAR_VERSION:-latest}
dir=${MCP_SIDECAR_INSTALL_DIR:-$HOME/.local/bin}
fail() { echo "install-release: $*" >&2; exit 1; }

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) target=x86_64-unknown-linux-musl ;;
  Linux/aarch64 | Linux/arm64) target=aarch64-unknown-linux-musl ;;
  Darwin/*) target=universal-apple-darwin ;;
  *) fail "no release binary for $(uname -s) $(uname -m): build it with cargo install --locked mcp-sidecar" ;;
esac
if [ -n "${MCP_SIDECAR_DOWNLOAD_URL:-}" ]; then base=$MCP_SIDECAR_DOWNLOAD_URL
elif [ "$version" = latest ]; then base=https://github.com/$repo/releases/latest/download
else base=https://github.com/$repo/releases/download/$version; fi

archive=mcp-sidecar-$target.tar.gz
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# https only, but for a mirror on this machine (how scripts/packages.sh tests this script).
case "$base" in http://127.0.0.1:*) proto='=http' ;; *) proto='=https' ;; esac
fetch() {
  if command -v curl >/dev/null 2>&1; then curl -fsSL --proto "$proto" -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  else fail "needs curl or wget"; fi || fail "cannot download $1"
}
fetch "$base/$archive" "$tmp/$archive"
fetch "$base/$archive.sha256" "$tmp/$archive.sha256"

expected=$(cut -d ' ' -f 1 "$tmp/$archive.sha256")
if command -v sha256sum >/dev/null 2>&1; then actual=$(sha256sum "$tmp/$archive" | cut -d ' ' -f 1)
else actual=$(shasum -a 256 "$tmp/$archive" | cut -d ' ' -f 1); fi
[ -n "$expected" ] && [ "$actual" = "$expected" ] ||
  fail "$archive does not match its SHA-256 ($actual, published $expected): nothing was installed; download again, or report it"

tar -xzf "$tmp/$archive" -C "$tmp" mcp-sidecar
mkdir -p "$dir"
# Atomic: a running mcp-sidecar keeps its old file; the next start gets the new one.
cp "$tmp/mcp-sidecar" "$dir/.mcp-sidecar.new" && chmod 755 "$dir/.mcp-sidecar.new"
mv -f "$dir/.mcp-sidecar.new" "$dir/mcp-sidecar"
echo "install-release: installed $("$dir/mcp-sidecar" --version) at $dir/mcp-sidecar (SHA-256 checked)"
case ":$PATH:" in
  *":$dir:"*) ;;
  *) echo "install-release: $dir is not on PATH: add it, or use the full path in client configs" >&2 ;;
esac
