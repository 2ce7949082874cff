#!/usr/bin/env python3
"""A real MCP session through an installed mcp-sidecar, however it was installed.

    python3 scripts/smoke.py --server target/debug/examples/example_server -- COMMAND...

COMMAND starts mcp-sidecar (the binary, `npx mcp-sidecar`, a venv's `mcp-sidecar`, or a Windows
`.exe` under Wine); `--preset investra --url URL` is appended. Against the bundled example server
on 127.0.0.1 (Investra's behaviour, 5 requests per 2 s window), it checks what a stdio MCP client
relies on (issue 12):

- initialize, tools/list and tools/call answered, each id exactly once, stdout only JSON-RPC lines;
- a burst past the server's limit: every call answered after the 429 is waited out;
- stdin closed: exit status 0 within 2 s;
- a wrong key: initialize gets a JSON-RPC error naming the cause, and the process keeps to the
  protocol;
- no key, right or wrong, in anything it prints.

Python's standard library only: it runs wherever CI has Python. Also imported by the Windows and
packaging scripts (`session`, `example_server`).
"""

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time

# Unique, so that any echo of them in an output is found.
GOOD_KEY = "inv_smoke_3f9c2d7e41b84a06b5c1"
WRONG_KEY = "inv_wrong_8d2e6a1f0c3b47e9a5d2"
PATIENCE = 90  # seconds for one answer: Wine's first start builds its prefix
EOF_DEADLINE = 2.0  # seconds from stdin closed to exit (issue 12)


def fail(what):
    print(f"smoke: FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def example_server(binary, *args):
    """Starts the example server; returns (process, url)."""
    env = dict(os.environ, INVESTRA_API_KEY=GOOD_KEY)
    proc = subprocess.Popen(
        [binary, "--vendor", "investra", "--per-minute", "5", "--window-secs", "2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        fail(f"the example server printed {url!r} instead of its URL")
    return proc, url


class Session:
    """One sidecar process with a line reader on its stdout and its stderr collected."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.lines = queue.Queue()
        self.stdout = []
        self.stderr = bytearray()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            self.stdout.append(raw)
            self.lines.put(raw)
        self.lines.put(None)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self.stderr.extend(raw)

    def send(self, message):
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, id_, method, params=None):
        message = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def answers(self, ids):
        """Waits for one answer per id in `ids`; returns them by id."""
        got = {}
        deadline = time.monotonic() + PATIENCE * max(1, len(ids) // 4)
        while set(got) != set(ids):
            left = deadline - time.monotonic()
            try:
                raw = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                fail(f"no answer to ids {sorted(set(ids) - set(got))}; stderr:\n{self.stderr.decode(errors='replace')}")
            if raw is None:
                fail(f"stdout closed before ids {sorted(set(ids) - set(got))} were answered; stderr:\n{self.stderr.decode(errors='replace')}")
            message = json.loads(raw)
            if "id" in message and "method" not in message:
                if message["id"] in got:
                    fail(f"id {message['id']} answered twice")
                got[message["id"]] = message
        return got

    def close(self):
        """Closes stdin; returns (exit status, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.stdin.close()
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail("still running 30 s after stdin closed")
        took = time.monotonic() - started
        time.sleep(0.2)  # let the reader threads take the last bytes
        return status, took

    def check_output(self, secrets):
        """stdout: only complete JSON-RPC lines; no secret anywhere."""
        for raw in self.stdout:
            if not raw.endswith(b"\n"):
                fail(f"an incomplete line on stdout: {raw[:80]!r}")
            message = json.loads(raw)
            if message.get("jsonrpc") != "2.0":
                fail(f"not JSON-RPC on stdout: {raw[:80]!r}")
        everything = b"".join(self.stdout) + bytes(self.stderr)
        for secret in secrets:
            if secret.encode() in everything:
                fail("a key appeared in the sidecar's output")


INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "smoke", "version": "1"},
}


def session(command, url, label, extra_env=None):
    """The whole check against `command` (argv prefix) and the example server at `url`."""
    env = dict(os.environ, INVESTRA_API_KEY=GOOD_KEY, NO_PROXY="127.0.0.1", **(extra_env or {}))
    argv = [*command, "--preset", "investra", "--url", url]

    started = time.monotonic()
    s = Session(argv, env)
    s.request(1, "initialize", INIT)
    init = s.answers([1])[1]
    first = time.monotonic() - started
    if "result" not in init or "serverInfo" not in init["result"]:
        fail(f"initialize: {init}")
    s.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    s.request(2, "tools/list", {})
    tools = s.answers([2])[2]
    names = [t["name"] for t in tools.get("result", {}).get("tools", [])]
    if "sum" not in names:
        fail(f"tools/list: {tools}")
    # A burst past the 5-per-2-s window: some meet a 429, which the sidecar waits out.
    ids = list(range(3, 11))
    for i in ids:
        s.request(i, "tools/call", {"name": "sum", "arguments": {"a": i, "b": 40}})
    calls = s.answers(ids)
    for i in ids:
        content = calls[i].get("result", {}).get("content", [{}])
        if content[0].get("text") != str(i + 40):
            fail(f"tools/call {i}: {calls[i]}")
    status, took = s.close()
    s.check_output([GOOD_KEY])
    stderr = s.stderr.decode(errors="replace")
    if status != 0:
        fail(f"exit status {status} after stdin closed; stderr:\n{stderr}")
    if took > EOF_DEADLINE:
        fail(f"took {took:.2f} s to exit after stdin closed (at most {EOF_DEADLINE})")
    if "answers with HTTP 429" not in stderr:
        fail(f"no 429 was met (the burst should pass the limit); stderr:\n{stderr}")

    env["INVESTRA_API_KEY"] = WRONG_KEY
    w = Session(argv, env)
    w.request(1, "initialize", INIT)
    refused = w.answers([1])[1]
    error = refused.get("error", {})
    if not error.get("message") or "key" not in json.dumps(error).lower():
        fail(f"a wrong key should be a JSON-RPC error about the key: {refused}")
    status, _ = w.close()
    w.check_output([GOOD_KEY, WRONG_KEY])
    sys.stderr.flush()
    print(
        f"smoke ({label}): ok: initialize in {first:.2f} s (start included), tools/list, "
        f"{len(ids)} calls through a 429, exit 0 in {took:.2f} s after EOF, "
        f"wrong key refused (exit {status}), no key in any output",
        flush=True,
    )
    return first


def stop_by_signal(command, url):
    """Starts a session, asks it to stop with SIGTERM (Unix), and returns the exit status once
    stdout has closed too: a launcher that passed the signal on leaves no binary behind holding
    the client's pipe."""
    import signal

    env = dict(os.environ, INVESTRA_API_KEY=GOOD_KEY, NO_PROXY="127.0.0.1")
    s = Session([*command, "--preset", "investra", "--url", url], env)
    s.request(1, "initialize", INIT)
    s.answers([1])
    s.proc.send_signal(signal.SIGTERM)
    try:
        status = s.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        fail("still running 10 s after SIGTERM")
    deadline = time.monotonic() + 10
    while True:
        try:
            if s.lines.get(timeout=max(deadline - time.monotonic(), 0.01)) is None:
                break
        except queue.Empty:
            fail("stdout still open 10 s after SIGTERM: the binary outlived its launcher")
    s.check_output([GOOD_KEY])
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="the example server binary")
    parser.add_argument("--label", default="mcp-sidecar")
    parser.add_argument("command", nargs="+", help="how to start mcp-sidecar")
    args = parser.parse_args()
    server, url = example_server(args.server)
    try:
        session(args.command, url, args.label)
    finally:
        server.kill()


if __name__ == "__main__":
    main()
