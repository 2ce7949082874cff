"""The interop matrix (issue 20): every client SDK against every server SDK through mcp-sidecar,
each pair a real client process launching the real sidecar binary against a real server process
over HTTP on 127.0.0.1.

    python driver.py --sidecar PATH --example-server PATH --stateless-server PATH --python PY
        --node NODE --node-dir DIR [--only TEXT]

For each pair: connect, tools/list, tools/call, a call cancelled at its first progress that must
reach the server the way its era expects (notifications/cancelled for a handshake server, the
stream closed for a stateless one), a server->client request round trip (elicitation), a 429 on
the first request waited out, and at exit the session ended with DELETE where there was one;
then, the server gone, the same client again: its handshake and tools/list answered from what the
sidecar kept (issue 24.5; a handshake-era client of a server that takes that era). It
also checks the rule of issue 20: the bridge is used exactly when the server refuses the client's
era. Prints a table (also written to --table) and 'N passed, N failed'; exit 1 if any failed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

PY_TOOLS = {
    "echo": {"name": "echo", "arguments": {"text": "hi"}, "expect": "echo: hi"},
    "slow": {"name": "slow", "arguments": {"seconds": 60}},
    "ask": {"name": "ask", "arguments": {}},
}
EVERYTHING_TOOLS = {
    "echo": {"name": "echo", "arguments": {"message": "hi"}, "expect": "hi"},
    "slow": {"name": "trigger-long-running-operation", "arguments": {"duration": 60, "steps": 60}},
    "ask": {"name": "trigger-elicitation-request", "arguments": {}},
}
STATELESS_TOOLS = {
    "echo": {"name": "echo", "arguments": {"text": "hi"}, "expect": "hi"},
    "slow": {"name": "slow", "arguments": {}},
    "ask": {"name": "ask", "arguments": {}},
}
RMCP_TOOLS = {
    "echo": {"name": "echo", "arguments": {"text": "hi"}, "expect": "hi"},
    "slow": {"name": "slow", "arguments": {"ms": 60000, "steps": 60}},
    "ask": {"name": "ask", "arguments": {}},
}


def servers(a):
    """Each server: how to start it, the eras it takes, whether it keeps sessions."""
    py = [a.python, str(HERE / "py_server.py")]
    ts = [a.node, str(HERE / "ts_server.mjs")]
    return {
        # name: (command, eras it accepts, sdk, tools, steps that cannot work for a stateless client)
        "Python MCPServer (stateful)": (py + ["--variant", "stateful"], {"handshake", "stateless"}, "mcp 2.3.0", PY_TOOLS, {}),
        # Without sessions the SDK has no channel for a server request in the handshake era.
        "Python MCPServer (stateless_http)": (py + ["--variant", "stateless"], {"handshake", "stateless"}, "mcp 2.3.0", PY_TOOLS,
                                             {("handshake", "elicitation"): "stateless_http has no channel for server requests"}),
        "Python MCPServer, 2026-07-28 only": (py + ["--variant", "modern-only"], {"stateless"}, "mcp 2.3.0", PY_TOOLS, {}),
        "TypeScript McpServer": (ts + ["--variant", "sdk"], {"handshake"}, "@modelcontextprotocol/sdk 1.32.2", PY_TOOLS, {}),
        "everything (reference)": (ts + ["--variant", "everything"], {"handshake"}, "@modelcontextprotocol/server-everything 2026.8.31", EVERYTHING_TOOLS, {}),
        # rmcp's `Peer::create_elicitation` refuses to run in 2026-07-28 (the tool would have to
        # return an InputRequiredResult itself): a limit of the example tool, not of the path.
        "rmcp example server": ([a.example_server], {"handshake", "stateless"}, "rmcp 3.11.0", RMCP_TOOLS,
                                {("stateless", "elicitation"): "the example's tool asks in the handshake way only"}),
        # This project's own, written from the 2026-07-28 rules (tests/it/eras.rs uses it too).
        "mcp-sidecar's stateless-only server": ([a.stateless_server], {"stateless"}, "axum, examples/stateless_server",
                                                STATELESS_TOOLS, {}),
    }


def clients(a):
    """Each client: its command, the era it speaks first, and its SDK."""
    return {
        "Python ClientSession": ([a.python, str(HERE / "py_client.py"), "--mode", "handshake"], "handshake", "mcp 2.3.0"),
        "Python Client(mode=auto)": ([a.python, str(HERE / "py_client.py"), "--mode", "auto"], "stateless", "mcp 2.3.0"),
        "TypeScript Client": ([a.node, str(HERE / "ts_client.mjs")], "handshake", "@modelcontextprotocol/sdk 1.32.2"),
    }


def start_server(command, record, node_dir):
    env = dict(os.environ, NODE_PATH=str(node_dir / "node_modules"), NO_PROXY="127.0.0.1,localhost")
    # Node resolves packages from the script's folder up: run the TypeScript host from a copy
    # beside node_modules.
    if command[1:2] and command[1].endswith(".mjs"):
        copy = node_dir / Path(command[1]).name
        shutil.copyfile(command[1], copy)
        command = [command[0], str(copy)] + command[2:]
    proc = subprocess.Popen(command + ["--record", str(record), "--first-429"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"{command} did not print its URL (got {url!r})")
    return proc, url


def run_pair(a, client, server, work, sidecar):
    (ccmd, client_era, _), (scmd, accepts, _, tools, skip) = client, server
    record, log, state = work / "record.jsonl", work / "sidecar.log", work / "state"
    proc, url = start_server(scmd, record, a.node_dir)
    try:
        # The sidecar's stderr goes to a file; its argv carries no secret (there is none here).
        scenario = dict(tools, command="sh", args=[
            "-c", 'exec "$0" "$@" 2>>"$SIDECAR_LOG"', *sidecar, url, "--auth", "none", "--state-dir", str(state), "-v"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "SIDECAR_LOG": str(log),
                 "NO_PROXY": "127.0.0.1,localhost",
                 **{k: os.environ[k] for k in ("WINEPREFIX", "TMPDIR") if k in os.environ}})
        cmd = ccmd
        if ccmd[1].endswith(".mjs"):
            copy = a.node_dir / Path(ccmd[1]).name
            shutil.copyfile(ccmd[1], copy)
            cmd = [ccmd[0], str(copy)]
        out = subprocess.run(cmd + [json.dumps(scenario)], capture_output=True, text=True, timeout=150)
        try:
            report = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"connect": f"error: no report (exit {out.returncode}): {out.stderr[-400:]}"}
        # The sidecar ends after its client: wait for its exit summary (it writes it last).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "proxy stopped" not in read(log):
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    checks, server_era, bridged = judge(report, read(record), read(log), client_era, accepts, skip)
    checks["kept lists, server down"] = kept_start(cmd, scenario, work, client_era, accepts)
    return checks, server_era, bridged


def kept_start(cmd, scenario, work, client_era, accepts):
    """Issue 24.5: the same client again, the server gone: its handshake and tools/list are
    answered from what the sidecar kept (its own log goes to a second file)."""
    if client_era != "handshake" or "handshake" not in accepts:
        return "n/a: nothing of a handshake was kept for this pair"
    log = work / "sidecar-down.log"
    down = dict(scenario, only=["tools/list"], env=dict(scenario["env"], SIDECAR_LOG=str(log)))
    out = subprocess.run(cmd + [json.dumps(down)], capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"FAIL: no report (exit {out.returncode}): {out.stderr[-300:]}"
    if report.get("connect") != "ok" or report.get("tools/list") != "ok":
        return f"FAIL: connect {report.get('connect')}, tools/list {report.get('tools/list')}: {read(log)[-600:]}"
    return "ok" if "answered from what was kept" in read(log) else "FAIL: not answered from what was kept"



def read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def judge(report, record, log, client_era, accepts, skip):
    """Each check: 'ok', 'n/a: why' or 'FAIL: what'."""
    entries = [json.loads(line) for line in record.splitlines() if line.strip()]
    http = [e for e in entries if "http" in e]
    events = {e["event"] for e in entries if "event" in e}
    rpcs = [r for e in http for r in e.get("rpc") or []]
    checks = {}
    for step in ("connect", "tools/list", "tools/call", "cancel", "elicitation"):
        said = report.get(step, "not run")
        if (client_era, step) in skip:
            checks[step] = f"n/a: {skip[client_era, step]}"
        else:
            checks[step] = "ok" if said == "ok" else f"FAIL: {said}"
    # The cancel reached the server: its tool saw it, or the handshake-era notification arrived.
    cancelled_rpc = any(r.get("method") == "notifications/cancelled" for r in rpcs)
    closed = {"slow-cancelled", "stream-closed-early"} & events
    if checks["cancel"] == "ok" and not (closed or cancelled_rpc):
        checks["cancel"] = "FAIL: the server never learned of the cancellation"
    posts = [e for e in http if e["http"] == "POST"]
    checks["429 waited out"] = "ok" if posts and posts[0].get("status") == 429 and any(
        200 <= (p.get("status") or 0) < 300 for p in posts[1:]) else "FAIL: no 429 then success"
    sessions = {e["session"] for e in http if e.get("session")}
    deleted = {e["session"] for e in http if e["http"] == "DELETE" and 200 <= (e.get("status") or 0) < 300}
    if not sessions:
        checks["DELETE at exit"] = "n/a: no session"
    else:
        checks["DELETE at exit"] = "ok" if sessions <= deleted else f"FAIL: sessions {sessions - deleted} not ended"
    server_era = "handshake" if any(r.get("method") == "initialize" for r in rpcs) else "stateless"
    if any(r.get("method") == "initialize" for r in rpcs) and any((e.get("version") or "") >= "2026-07-28" for e in posts):
        # A refused handshake then the stateless era (the bridge), or a probe: what carried the work.
        calls = [e for e in posts if any(r.get("method") == "tools/call" for r in e.get("rpc") or [])]
        server_era = "stateless" if calls and all((e.get("version") or "") >= "2026-07-28" for e in calls) else "handshake"
    bridged = "bridging" in log
    should = client_era not in accepts
    checks["bridge only on refusal"] = "ok" if bridged == should else (
        f"FAIL: bridged although the server takes the {client_era} era" if bridged else "FAIL: not bridged")
    return checks, server_era, bridged


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sidecar", required=True)
    p.add_argument("--example-server", required=True)
    p.add_argument("--stateless-server", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--node", default="node")
    p.add_argument("--node-dir", required=True, type=Path)
    p.add_argument("--table", type=Path)
    p.add_argument("--only", default="")
    p.add_argument("--windows-sidecar", help="also run the Windows .exe under --wine, for the pairs of issue 20")
    p.add_argument("--wine", help="the Wine runner (shared/windows/wine-run)")
    a = p.parse_args()
    rows, passed, failed = [], 0, 0
    pairs = [(cname, client, sname, server, [a.sidecar])
             for sname, server in servers(a).items() for cname, client in clients(a).items()]
    if a.windows_sidecar:
        # The Windows build is the same code: the pairs that failed there before issue 20 (a
        # dual-era server bridged needlessly, the reverse bridge's results) run it under Wine.
        exe = [str(Path(a.wine).resolve()), str(Path(a.windows_sidecar).resolve())]
        for sname in ("Python MCPServer (stateful)", "TypeScript McpServer"):
            for cname in ("Python ClientSession", "Python Client(mode=auto)"):
                pairs.append((cname + ", mcp-sidecar.exe under Wine", clients(a)[cname], sname, servers(a)[sname], exe))
    for cname, client, sname, server, sidecar in pairs:
        if a.only and a.only not in f"{cname} / {sname}":
            continue
        work = Path(tempfile.mkdtemp(prefix="interop-"))
        started = time.monotonic()
        try:
            checks, server_era, bridged = run_pair(a, client, server, work, sidecar)
        except Exception as e:  # a pair that cannot even start is one failure
            checks, server_era, bridged = {"start": f"FAIL: {e}"}, "?", False
        took = time.monotonic() - started
        bad = {k: v for k, v in checks.items() if v.startswith("FAIL")}
        status = "FAIL" if bad else "ok"
        passed += not bad
        failed += bool(bad)
        print(f"{status:4} {cname} -> {sname} ({took:.1f} s)", flush=True)
        for k, v in bad.items():
            print(f"       {k}: {v}", flush=True)
        if bad:
            print("       sidecar log:\n" + indent(read(work / "sidecar.log")[-3000:]), flush=True)
        if not bad:
            shutil.rmtree(work, ignore_errors=True)
        na = sorted({v[5:] for v in checks.values() if v.startswith("n/a")})
        rows.append((cname, client[2], client[1], sname, server[2], server_era,
                     "yes" if bridged else "no", "all pass" if not bad else "FAILED: " + ", ".join(bad), na))
    table = ["| client | server | client era | server era | bridged | result |", "|---|---|---|---|---|---|"]
    for cname, csdk, cera, sname, ssdk, sera, bridged, result, na in rows:
        note = f" ({'; '.join(na)})" if na else ""
        table.append(f"| {cname} ({csdk}) | {sname} ({ssdk}) | {cera} | {sera} | {bridged} | {result}{note} |")
    text = "\n".join(table)
    print("\n" + text)
    if a.table:
        a.table.write_text(text + "\n")
    print(f"\ninterop: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def indent(text):
    return "\n".join("         " + line for line in text.splitlines())


if __name__ == "__main__":
    main()
