#!/usr/bin/env node
// The launcher of `npx -y mcp-sidecar …` (issue 12): finds the native binary that npm installed
// for this platform (one package per platform in optionalDependencies, as esbuild and Biome do)
// and starts it on this process's own stdin, stdout and stderr. Node is not in the data path:
// the binary reads and writes the client's pipes directly; this process only waits, passes on
// the signals that ask it to stop, and exits with the binary's status.
"use strict";

const { spawn } = require("child_process");
const path = require("path");

const PACKAGES = {
  "linux-x64": "@mcp-sidecar/linux-x64",
  "linux-arm64": "@mcp-sidecar/linux-arm64",
  "darwin-x64": "@mcp-sidecar/darwin-x64",
  "darwin-arm64": "@mcp-sidecar/darwin-arm64",
  "win32-x64": "@mcp-sidecar/win32-x64",
};

function binary() {
  // An explicit binary wins (a build of one's own, a platform without a package).
  if (process.env.MCP_SIDECAR_BINARY) return process.env.MCP_SIDECAR_BINARY;
  const platform = `${process.platform}-${process.arch}`;
  const pkg = PACKAGES[platform];
  const exe = process.platform === "win32" ? "mcp-sidecar.exe" : "mcp-sidecar";
  if (!pkg) {
    fail(`there is no mcp-sidecar package for ${platform}: build it with cargo install mcp-sidecar, then set MCP_SIDECAR_BINARY to its path`);
  }
  try {
    return path.join(path.dirname(require.resolve(`${pkg}/package.json`)), "bin", exe);
  } catch {
    fail(`${pkg} is not installed (npm skips optional dependencies with --omit=optional or --no-optional): install again without that flag, or set MCP_SIDECAR_BINARY`);
  }
}

function fail(message) {
  process.stderr.write(`mcp-sidecar: ${message}\n`);
  process.exit(2);
}

const child = spawn(binary(), process.argv.slice(2), { stdio: "inherit", windowsHide: true });
child.on("error", (e) => fail(`cannot start ${e.path || "the binary"} (${e.code || e.message})`));
// What asks this process to stop asks the binary: it then answers what is in flight and exits,
// and this process with it. On Windows the console events (Ctrl-C, Ctrl-Break, the window
// closing) reach every process of the console, the binary included, and `kill` there would be
// TerminateProcess (no orderly end): the handlers only keep Node alive until the binary exits.
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"]) {
  try {
    process.on(signal, () => {
      if (process.platform !== "win32") child.kill(signal);
    });
  } catch {
    // Not a signal on this platform.
  }
}
child.on("exit", (code, signal) => {
  if (signal) {
    // End the same way, so that the client sees the signal, not a made-up status.
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  } else {
    process.exit(code ?? 1);
  }
});
