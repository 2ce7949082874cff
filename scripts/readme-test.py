#!/usr/bin/env python3
"""Every command block of README.md, run (issue 23.8), so that README cannot drift.

Run by .ci/run after the test suite (release binaries built by the Quick start's ./install.sh):

    scripts/readme-test.py

The blocks run inside a network namespace of their own (`unshare -rn`, loopback only): nothing
leaves the machine, and a host that is not 127.0.0.1 fails at once, as it would offline. A
fresh HOME, a bundled example server playing Investra (MCP_SIDECAR_URL points at it, so the
README's `--preset investra` commands reach it), the variables the README names set to
plausible values, and stand-ins for programs the README names but this machine need not have
(`claude` runs the command after `--` the way Claude Code would start it; `docker` and `sudo`
only record; `op` and `security` print the key as a vault would). Every `mcp-sidecar` a block runs goes through a wrapper that records its exit
status. How each block is judged is in PLAN, keyed by the block's first line: a block PLAN does
not know fails the run, so a new block must say how it is tested.

- run:     the block, as one bash script; every mcp-sidecar in it exits 0, except one that names
           a host other than 127.0.0.1 (it cannot be reached here: 1 is expected), never 2
           (a usage or configuration error).
- cli:     the same, but any exit other than 2 will do (sign-ins, servers of the README's
           examples that are not there).
- json:    a client configuration: each entry's command is a full path for its platform (or
           npx/uvx), and mcp-sidecar with its args and env starts and ends cleanly on an empty
           stdin (the arguments and the key are valid).
- yaml, console: the mcp-sidecar lines in them, as cli.
- layout:  each path the block names exists.
- dev:     the developer's commands: each script exists and is valid bash, each bench and test
           target compiles, each test a `--skip` names exists, each fuzz target exists.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# First line of the block (stripped; a prefix is enough) → how it is judged. Extra checks:
# "expect" is text its output must contain.
PLAN = [
    ("./install.sh     # builds", {"mode": "run", "skip": ["scripts/test.sh"],
                                  "why": "scripts/test.sh is what .ci/run runs before this"}),
    ("./install.sh                                    # 1.", {"mode": "run", "with_next": True,
                                                             "expect": ['"text":"42"']}),
    ("{ printf", {"mode": "joined"}),
    ("{", {"mode": "json"}),
    ("export INVESTRA_API_KEY=inv_your_key_here", {"mode": "run"}),
    ("mcp-sidecar tools --preset investra --deny-tools", {"mode": "run", "expect": ["echo"]}),
    ("mcp-sidecar tools --preset investra --tool-prefix", {"mode": "run", "expect": ["inv_echo"]}),
    ("mcp-sidecar tools --all --preset investra --pin-tools", {"mode": "run", "expect": ["echo"]}),
    ("mcp-sidecar tools --preset investra", {"mode": "run"}),
    ("$ mcp-sidecar check", {"mode": "console"}),
    ("$ mcp-sidecar --preset investra      # a tools/call", {"mode": "console"}),
    ("mcp-sidecar --preset investra --no-list-cache", {"mode": "run"}),
    ("mcp-sidecar check --preset investra --api-key-command", {"mode": "run"}),
    ("mcp-sidecar check --preset investra --log-file", {"mode": "run", "expect": ["mcp-sidecar.20"]}),
    ("mcp-sidecar login https://", {"mode": "cli"}),
    ("{ \"mcpServers\"", {"mode": "json"}),
    ("mcp-sidecar login --device", {"mode": "cli"}),
    ("export MCP_CLIENT_SECRET", {"mode": "cli"}),
    ("mcp-sidecar call tools/list --url", {"mode": "cli"}),
    ("# GitLab CI", {"mode": "yaml"}),
    ("mcp-sidecar https://mcp.example.com/mcp --auth enterprise", {"mode": "cli"}),
    ("mcp-sidecar --preset investra --plan free", {"mode": "run"}),
    ("docker run", {"mode": "run"}),
    ("scripts/test.sh                  #", {"mode": "dev"}),
    ("cargo install cargo-fuzz", {"mode": "dev"}),
    ("cargo bench --bench proxy", {"mode": "dev"}),
    ("src/main.rs", {"mode": "layout"}),
]


def blocks():
    """(language, text) of each fenced block, indented ones (in list items) included."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
        indent = len(m.group(1))
        body = "\n".join(line[indent:] for line in m.group(3).splitlines())
        # The sentence that introduces the block (it may say which platform it is for).
        before = text[max(0, m.start() - 400):m.start()].rstrip().rsplit("\n\n", 1)[-1]
        out.append((m.group(2), body, before))
    return out


def plan_for(body):
    first = next((line.strip() for line in body.splitlines() if line.strip()), "")
    for key, plan in PLAN:
        if first.startswith(key):
            return plan
    return None


class Sandbox:
    def __init__(self, tmp):
        self.tmp = pathlib.Path(tmp)
        self.home = self.tmp / "home"
        self.bin = self.tmp / "bin"
        self.log = self.tmp / "invocations"
        for d in (self.home, self.bin, self.tmp / "runner"):
            d.mkdir(parents=True)
        self.env = self.environment()
        self.stand_ins()
        self.files()
        self.server = None

    def environment(self):
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "USER", "LOGNAME")}
        keep["CARGO_HOME"] = os.environ.get("CARGO_HOME", str(pathlib.Path.home() / ".cargo"))
        keep["RUSTUP_HOME"] = os.environ.get("RUSTUP_HOME", str(pathlib.Path.home() / ".rustup"))
        if "CARGO_TARGET_DIR" in os.environ:
            keep["CARGO_TARGET_DIR"] = os.environ["CARGO_TARGET_DIR"]
        keep.update({
            "HOME": str(self.home),
            "XDG_STATE_HOME": str(self.home / ".local/state"),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "PATH": f"{self.bin}:{self.home}/.local/bin:{os.environ['PATH']}",
            "CARGO_NET_OFFLINE": "true",
            "BROWSER": "true",
            "RUNNER_TEMP": str(self.tmp / "runner"),
            "INVESTRA_API_KEY": "inv_readme_test_key",
            "CONVERRA_API_KEY": "sk_live_readme_test_key",
            "AI2FIN_API_KEY": "mcp_readme_test_key",
            "KEY": "readme-test-key",
            "EXAMPLE_KEY": "readme-test-key",
            # Set by one block and used by another, or "from the CI platform's secret store".
            "MCP_CLIENT_SECRET": "readme-test-secret",
            "STORE_PASSWORD": "readme-test-password",
            "MCP_ID_TOKEN": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyZWFkbWUifQ.",
            "MCP_SIDECAR_README_LOG": str(self.log),
        })
        return keep

    def stand_ins(self):
        real = self.home / ".local/bin/mcp-sidecar"
        scripts = {
            # Every mcp-sidecar a block runs: its exit status and arguments, recorded.
            "mcp-sidecar": f'"{real}" "$@"; rc=$?\n'
                           'printf "%s\\t%s\\n" "$rc" "$*" >> "$MCP_SIDECAR_README_LOG"\nexit $rc\n',
            # Claude Code starts the command after `--` with its own environment.
            "claude": 'while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done; shift\n'
                      'exec "$@" </dev/null\n',
            "docker": 'echo "docker (stand-in): $*" >&2\n',
            "sudo": 'echo "sudo (stand-in): $*" >&2\n',
            # Vaults that print the key (issue 25.2's --api-key-command).
            "op": 'echo "$INVESTRA_API_KEY"\n',
            "security": 'echo "$INVESTRA_API_KEY"\n',
        }
        for name, body in scripts.items():
            path = self.bin / name
            path.write_text("#!/usr/bin/env bash\n" + body)
            path.chmod(0o755)

    def files(self):
        token = self.tmp / "runner/mcp-oidc"
        token.write_text(self.env["MCP_ID_TOKEN"])
        token.chmod(0o600)
        acme = self.home / ".config/acme"
        acme.mkdir(parents=True)
        (acme / "id_token").write_text(self.env["MCP_ID_TOKEN"])
        (acme / "id_token").chmod(0o600)
        # A P-256 key in PKCS#8 for --client-key-file (Node is on every machine CI runs on).
        pem = subprocess.run(
            ["node", "-e", "const c=require('crypto');const {privateKey}=c.generateKeyPairSync('ec',"
             "{namedCurve:'P-256'});process.stdout.write(privateKey.export({type:'pkcs8',format:'pem'}))"],
            check=True, capture_output=True, text=True).stdout
        key = ROOT / "mcp-client.pem"
        key.write_text(pem)
        key.chmod(0o600)
        self.made = [key]

    def start_server(self):
        """The example server (Investra) the presets' commands reach through MCP_SIDECAR_URL."""
        exe = target_dir() / "release/examples/example_server"
        self.server = subprocess.Popen([str(exe), "--vendor", "investra"], env=self.env,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.env["MCP_SIDECAR_URL"] = self.server.stdout.readline().strip()

    def close(self):
        if self.server:
            self.server.kill()
        for f in self.made:
            f.unlink(missing_ok=True)

    def bash(self, script, stdin=subprocess.DEVNULL):
        self.log.write_text("")
        # Background jobs a block starts (the Quick start's server) end with it.
        wrapped = "set -m\n" + script + "\nkill $(jobs -p) 2>/dev/null; exit 0\n"
        p = subprocess.run(["bash", "-c", wrapped], cwd=ROOT, env=self.env, stdin=stdin,
                           capture_output=True, text=True, timeout=900)
        calls = [line.split("\t", 1) for line in self.log.read_text().splitlines()]
        return p, [(int(rc), args) for rc, args in calls]


def target_dir():
    return pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def remote(args):
    """Whether an mcp-sidecar command line names a host other than 127.0.0.1."""
    return any(h not in ("127.0.0.1", "localhost") for h in re.findall(r"://(?:[^@/\s]*@)?([^/:\s\"']+)", args))


def judge(mode, calls, output, script=""):
    problems = []
    if not calls and re.search(r"^\s*mcp-sidecar ", script, re.M):
        problems.append("no mcp-sidecar ran")
    for rc, args in calls:
        if rc == 2:
            problems.append(f"usage or configuration error (exit 2): mcp-sidecar {args}")
        elif rc != 0 and mode == "run" and not remote(args):
            problems.append(f"exit {rc}: mcp-sidecar {args}")
    if problems:
        problems.append("output:\n" + output[-3000:])
    return problems


def run_block(sb, body, plan, following):
    mode = plan["mode"]
    script = "\n".join(line for line in body.splitlines()
                       if not any(line.strip().startswith(s) for s in plan.get("skip", [])))
    if plan.get("with_next"):
        script += "\n" + following
    p, calls = sb.bash(script)
    output = p.stdout + p.stderr
    problems = judge(mode, calls, output, script)
    for text in plan.get("expect", []):
        if text not in output:
            problems.append(f"the output lacks {text!r}:\n{output[-3000:]}")
    return problems


def check_json(sb, body, before):
    problems = []
    macos = "macOS" in before
    doc = json.loads(body)
    for name, entry in doc["mcpServers"].items():
        command, args = entry["command"], list(entry.get("args", []))
        if command in ("npx", "uvx"):
            args = args[args.index("mcp-sidecar") + 1:]
        elif "\\" in command:
            if not re.match(r"^[A-Z]:\\", command):
                problems.append(f"{name}: {command} is not a full Windows path")
        elif not (command.startswith("/Users/") or command.startswith("/home/")):
            problems.append(f"{name}: {command} is not a full path (clients do not read the shell's PATH)")
        elif macos and not command.startswith("/Users/"):
            problems.append(f"{name}: {command} is introduced as macOS's, whose homes are under /Users")
        env = dict(sb.env, **entry.get("env", {}))
        p = subprocess.run([str(sb.home / ".local/bin/mcp-sidecar"), *args], env=env, cwd=ROOT,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            problems.append(f"{name}: mcp-sidecar {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return problems


def command_lines(body):
    """mcp-sidecar command lines in a YAML or console block."""
    out = []
    for line in body.splitlines():
        m = re.search(r"(?:^\$ |^\s*- |run: )(mcp-sidecar .*)", line)
        if m:
            out.append(m.group(1))
    return out


def check_layout(body):
    problems = []
    for line in body.splitlines():
        # A path starts a line; its description goes on, indented, on the next ones.
        path = line.split()[0] if line[:1].strip() else ""
        if path and not (ROOT / path).exists():
            problems.append(f"{path} does not exist")
    return problems


def check_dev(body):
    problems = []
    tests = None
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(("export ", "cd ")):
            continue
        words = line.split()
        if words[0].startswith(("scripts/", ".ci/")):
            path = ROOT / words[0]
            if not os.access(path, os.X_OK):
                problems.append(f"{words[0]} is not an executable file")
            elif path.read_text().startswith("#!/usr/bin/env bash"):
                if subprocess.run(["bash", "-n", str(path)]).returncode != 0:
                    problems.append(f"{words[0]} is not valid bash")
        elif words[:2] == ["cargo", "bench"]:
            bench = words[words.index("--bench") + 1]
            if subprocess.run(["cargo", "bench", "--locked", "--bench", bench, "--no-run"], cwd=ROOT,
                              capture_output=True).returncode != 0:
                problems.append(f"cargo bench --bench {bench} does not build")
        elif words[:2] == ["cargo", "test"] and "--skip" in words:
            if tests is None:
                listed = subprocess.run(["cargo", "test", "--locked", "--test", "it", "--", "--list"],
                                        cwd=ROOT, capture_output=True, text=True).stdout
                tests = [t.split(": test")[0] for t in listed.splitlines() if t.endswith(": test")]
            for i, w in enumerate(words):
                if w == "--skip" and not any(t.startswith(words[i + 1]) for t in tests):
                    problems.append(f"--skip {words[i + 1]}: no such test")
        elif "fuzz" in words and "run" in words:
            fuzz = (ROOT / "fuzz/Cargo.toml").read_text()
            for target in [words[words.index("run") + 1]] + re.findall(r"\w+", body.split("# or:")[1].split("\n")[0]):
                if f'name = "{target}"' not in fuzz:
                    problems.append(f"fuzz target {target} does not exist")
    return problems


def main():
    found = blocks()
    failures = []
    with tempfile.TemporaryDirectory(prefix="readme-test-") as tmp:
        sb = Sandbox(tmp)
        try:
            for i, (lang, body, before) in enumerate(found):
                plan = plan_for(body)
                first = body.strip().splitlines()[0][:70]
                if plan is None:
                    failures.append(f"block {i} ({first!r}) is not in scripts/readme-test.py's PLAN: say how it is tested")
                    continue
                mode = plan["mode"]
                if mode == "joined":
                    continue  # run with the block before it
                following = found[i + 1][1] if i + 1 < len(found) else ""
                if mode in ("run", "cli"):
                    problems = run_block(sb, body, plan, following)
                elif mode == "json":
                    problems = check_json(sb, body, before)
                elif mode in ("yaml", "console"):
                    problems = run_block(sb, "\n".join(command_lines(body)), {"mode": "cli"}, "")
                elif mode == "layout":
                    problems = check_layout(body)
                else:
                    problems = check_dev(body)
                # The installed binary and the example server exist after the first block.
                if sb.server is None and (target_dir() / "release/examples/example_server").exists():
                    sb.start_server()
                status = "ok  " if not problems else "FAIL"
                print(f"{status} block {i:2} {mode:8} {first}")
                failures += [f"block {i} ({first!r}): {p}" for p in problems]
        finally:
            sb.close()
    for f in failures:
        print(f, file=sys.stderr)
    print(f"README: {len(found)} blocks, {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    if os.environ.get("MCP_SIDECAR_README_INSIDE") != "1" and shutil.which("unshare"):
        # Loopback only: a namespace with no network but its own 127.0.0.1.
        inner = "ip link set lo up && exec python3 " + str(pathlib.Path(__file__).resolve())
        env = dict(os.environ, MCP_SIDECAR_README_INSIDE="1")
        sys.exit(subprocess.run(["unshare", "-rn", "bash", "-c", inner], env=env).returncode)
    sys.exit(main())
