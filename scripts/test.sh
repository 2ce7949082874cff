#!/usr/bin/env bash
# The README's test command: the whole test suite, with what it needs on a machine that has
# only the Rust toolchain, Python and Node (issue 23.12). The shared rate-limit store's tests
# run a real redis-server: when none is on PATH, it is installed first (apt-get on Debian and
# Ubuntu, with sudo unless root; Homebrew's `redis` on macOS). Then `cargo test --locked`, with
# any arguments given here (a filter, `--features keyring`, …). `.ci/run` calls this too.
set -euo pipefail
cd "${0%/*}/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing redis-server (apt-get) for the rate-limit store's tests" >&2
    if [ "$EUID" -eq 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      sudo apt-get update -qq
      sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
  elif command -v brew >/dev/null 2>&1; then
    echo "scripts/test.sh: installing redis (Homebrew) for the rate-limit store's tests" >&2
    brew install redis
  else
    echo "scripts/test.sh: redis-server is not installed and there is no apt-get or brew here: install redis-server (or valkey-server as redis-server), then run this again" >&2
    exit 1
  fi
fi
exec cargo test --locked "$@"
