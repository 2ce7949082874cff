#!/usr/bin/env bash
# The README's test command: the whole test suite, with what it needs on a machine that has
# only the Rust toolchain, Python and Node (issue 23.12). The tests drive real programs: the
# shared rate-limit store's tests a redis-server, the completion tests bash, zsh and fish
# (issue 23.10). Whichever is not on PATH is installed first (apt-get on Debian and Ubuntu, with
# sudo unless root; Homebrew on macOS). Then `cargo test --locked`, with any arguments given
# here (a filter, `--features keyring`, …). `.ci/run` calls this too.
set -euo pipefail
cd "${0%/*}/.."

# command, its Debian package, its Homebrew formula
wanted=("redis-server redis-server redis" "zsh zsh zsh" "fish fish fish")
missing=() apt=() brew=()
for entry in "${wanted[@]}"; do
  read -r cmd deb formula <<<"$entry"
  if ! command -v "$cmd" >/dev/null 2>&1; then
    missing+=("$cmd") apt+=("$deb") brew+=("$formula")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing ${apt[*]} (apt-get) for the tests that drive them" >&2
    if [ "$EUID" -eq 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt[@]}" >/dev/null
    else
      sudo apt-get update -qq
      sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt[@]}" >/dev/null
    fi
  elif command -v brew >/dev/null 2>&1; then
    echo "scripts/test.sh: installing ${brew[*]} (Homebrew) for the tests that drive them" >&2
    brew install "${brew[@]}"
  else
    echo "scripts/test.sh: ${missing[*]} not installed and there is no apt-get or brew here: install them (valkey-server will do as redis-server), then run this again" >&2
    exit 1
  fi
fi
exec cargo test --locked "$@"
