#!/usr/bin/env node
// Stages the npm packages (issue 12): the launcher `mcp-sidecar`, whose optionalDependencies name
// one package per platform at the same version, and a package for each binary given.
//
//   node packaging/npm/stage.js OUT VERSION [PLATFORM=BINARY ...]
//   e.g. node packaging/npm/stage.js target/npm 0.1.0 linux-x64=target/release/mcp-sidecar
//
// OUT/launcher and OUT/PLATFORM are then ready for `npm pack` or `npm publish`. Used by
// scripts/packages.sh (tested here) and .github/workflows/release.yml (published there).
"use strict";

const fs = require("fs");
const path = require("path");

const PLATFORMS = { "linux-x64": ["linux", "x64"], "linux-arm64": ["linux", "arm64"],
  "darwin-x64": ["darwin", "x64"], "darwin-arm64": ["darwin", "arm64"], "win32-x64": ["win32", "x64"] };
const [out, version, ...binaries] = process.argv.slice(2);
if (!out || !/^\d+\.\d+\.\d+/.test(version || "")) {
  console.error("usage: node packaging/npm/stage.js OUT VERSION [PLATFORM=BINARY ...]");
  process.exit(2);
}
const here = __dirname;
const json = (file) => JSON.parse(fs.readFileSync(file, "utf8"));
const write = (file, value) => fs.writeFileSync(file, JSON.stringify(value, null, 2) + "\n");

const launcher = path.join(out, "launcher");
fs.mkdirSync(path.join(launcher, "bin"), { recursive: true });
for (const file of ["README.md", "bin/mcp-sidecar.js"]) {
  fs.copyFileSync(path.join(here, "mcp-sidecar", file), path.join(launcher, file));
}
const main = json(path.join(here, "mcp-sidecar", "package.json"));
main.version = version;
main.optionalDependencies = Object.fromEntries(Object.keys(PLATFORMS).map((p) => [`@mcp-sidecar/${p}`, version]));
write(path.join(launcher, "package.json"), main);

for (const arg of binaries) {
  const [platform, binary] = arg.split(/=(.*)/s);
  if (!PLATFORMS[platform] || !binary) {
    console.error(`stage.js: ${arg}: expected PLATFORM=BINARY, PLATFORM one of ${Object.keys(PLATFORMS).join(", ")}`);
    process.exit(2);
  }
  const dir = path.join(out, platform);
  const exe = platform.startsWith("win32") ? "mcp-sidecar.exe" : "mcp-sidecar";
  fs.mkdirSync(path.join(dir, "bin"), { recursive: true });
  fs.copyFileSync(binary, path.join(dir, "bin", exe));
  fs.chmodSync(path.join(dir, "bin", exe), 0o755);
  const pkg = json(path.join(here, "platform", "package.json"));
  pkg.name = `@mcp-sidecar/${platform}`;
  pkg.version = version;
  pkg.description = pkg.description.replace("PLATFORM", platform);
  [pkg.os, pkg.cpu] = [[PLATFORMS[platform][0]], [PLATFORMS[platform][1]]];
  write(path.join(dir, "package.json"), pkg);
}
