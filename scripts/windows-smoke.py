#!/usr/bin/env python3
"""The Windows binary, end to end, under Wine (issue 12).

    python3 scripts/windows-smoke.py --exe target/x86_64-pc-windows-gnu/debug/mcp-sidecar.exe \\
        --server target/debug/examples/example_server --wine ../shared/windows/wine-run

1. The `.exe`, copied under a folder with spaces (like `C:\\Program Files`), runs the whole
   session of smoke.py against the example server on 127.0.0.1 (initialize, tools/list,
   tools/call, a 429 waited out, a wrong key, exit 0 within 2 s of EOF, no key in any output).
2. Its state goes to %LOCALAPPDATA%\\mcp-sidecar, nothing to the roaming %APPDATA%.
3. `install --client claude-desktop` writes %APPDATA%\\Claude\\claude_desktop_config.json with the
   full path to the `.exe`, spaces included; that entry is started as Claude Desktop starts it
   (the command and its arguments, no shell) and runs a session.
4. `install --client claude-code` finds npm's `claude.cmd` on PATH and runs it with no key in
   its arguments.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smoke  # noqa: E402


def wine_path(wine, windows_path):
    """The Unix path of a Windows path, as Wine maps it."""
    out = subprocess.run([wine, "winepath", "-u", windows_path], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def windows_path(wine, unix_path):
    out = subprocess.run([wine, "winepath", "-w", unix_path], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def windows_env(wine, name):
    out = subprocess.run([wine, "cmd", "/c", "echo", f"%{name}%"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exe", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--wine", required=True)
    args = parser.parse_args()
    wine = os.path.abspath(args.wine)

    root = tempfile.mkdtemp(prefix="mcp-sidecar-windows-")
    folder = os.path.join(root, "Program Files", "mcp-sidecar")
    os.makedirs(folder)
    exe = os.path.join(folder, "mcp-sidecar.exe")
    shutil.copy(args.exe, exe)

    local = wine_path(wine, windows_env(wine, "LOCALAPPDATA"))
    roaming = wine_path(wine, windows_env(wine, "APPDATA"))
    for stale in (os.path.join(local, "mcp-sidecar"), os.path.join(roaming, "mcp-sidecar")):
        shutil.rmtree(stale, ignore_errors=True)
    desktop_config = os.path.join(roaming, "Claude", "claude_desktop_config.json")
    if os.path.exists(desktop_config):
        os.remove(desktop_config)

    server, url = smoke.example_server(args.server)
    try:
        # 1. The session.
        smoke.session([wine, exe], url, "windows exe under Wine")

        # 2. State in the local app data.
        if not os.path.isdir(os.path.join(local, "mcp-sidecar")):
            smoke.fail(f"no state under %LOCALAPPDATA%\\mcp-sidecar ({local})")
        if os.path.exists(os.path.join(roaming, "mcp-sidecar")):
            smoke.fail("state went to the roaming %APPDATA%")

        env = dict(os.environ, INVESTRA_API_KEY=smoke.GOOD_KEY)
        # 3. Claude Desktop's config, and the entry started as Claude Desktop starts it.
        done = subprocess.run(
            [wine, exe, "install", "--client", "claude-desktop", "--preset", "investra", "--url", url],
            capture_output=True,
            env=env,
        )
        if done.returncode != 0:
            smoke.fail(f"install --client claude-desktop: {done.stderr.decode(errors='replace')}")
        entry = json.load(open(desktop_config))["mcpServers"]["investra"]
        if entry["command"] != windows_path(wine, exe) or " " not in entry["command"]:
            smoke.fail(f"the entry's command is not the full path to the .exe: {entry['command']!r}")
        if entry["args"] != [url, "--preset", "investra"]:
            smoke.fail(f"the entry's args: {entry['args']}")
        if entry["env"] != {"INVESTRA_API_KEY": smoke.GOOD_KEY}:
            smoke.fail("the entry's env does not hold the key")
        if smoke.GOOD_KEY in json.dumps(entry["args"]) or smoke.GOOD_KEY.encode() in done.stdout + done.stderr:
            smoke.fail("the key is in the entry's args or install's output")
        # Claude Desktop starts `command` with `args` and `env`; no shell, no PATH lookup.
        s = smoke.Session([wine, entry["command"], *entry["args"]], dict(os.environ, **entry["env"]))
        s.request(1, "initialize", smoke.INIT)
        s.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        s.request(2, "tools/call", {"name": "sum", "arguments": {"a": 2, "b": 40}})
        answers = s.answers([1, 2])
        if answers[2].get("result", {}).get("content", [{}])[0].get("text") != "42":
            smoke.fail(f"the installed entry's call: {answers[2]}")
        status, _ = s.close()
        s.check_output([smoke.GOOD_KEY])
        if status != 0:
            smoke.fail(f"the installed entry exited {status}")

        # 4. Claude Code through npm's claude.cmd.
        bin_dir = os.path.join(root, "npm global")
        os.makedirs(bin_dir)
        log = os.path.join(root, "claude-argv.txt")
        with open(os.path.join(bin_dir, "claude.cmd"), "w", newline="\r\n") as f:
            f.write(f'@echo off\necho %* > "{windows_path(wine, log)}"\n')
        done = subprocess.run(
            [wine, exe, "install", "--client", "claude-code", "--preset", "investra", "--url", url],
            capture_output=True,
            env=dict(env, WINEPATH=windows_path(wine, bin_dir)),
        )
        if done.returncode != 0:
            smoke.fail(f"install --client claude-code: {done.stderr.decode(errors='replace')}")
        argv = open(log, encoding="utf-8", errors="replace").read()
        if f"mcp add investra -- mcp-sidecar {url} --preset investra" not in argv:
            smoke.fail(f"claude.cmd got {argv!r}")
        if smoke.GOOD_KEY in argv or smoke.GOOD_KEY.encode() in done.stdout + done.stderr:
            smoke.fail("the key reached claude's argv or install's output")
        print("windows smoke: ok: state in %LOCALAPPDATA%, Claude Desktop entry with the full .exe path "
              "(spaces) runs without a shell, claude.cmd found and run with no key in its argv")
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
