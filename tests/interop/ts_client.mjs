// The TypeScript SDK's MCP client (@modelcontextprotocol/sdk) for the interop matrix (issue 20):
// it launches mcp-sidecar over stdio (StdioClientTransport), plays one scenario and prints a JSON
// report on stdout. SCENARIO_JSON is described in py_client.py.
//
//   node ts_client.mjs SCENARIO_JSON
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const scenario = JSON.parse(process.argv[2]);
const report = {};
const textOf = (result) => (result.content ?? []).map((c) => c.text ?? "").join(" ");

async function step(name, work) {
  try {
    report[name] = await work();
  } catch (e) {
    report[name] = `error: ${e?.message ?? e}`;
  }
}

async function main() {
  const client = new Client({ name: "ts-interop-client", version: "1.32.2" }, { capabilities: { elicitation: {} } });
  client.setRequestHandler(ElicitRequestSchema, async () => ({ action: "accept", content: { name: "Ada" } }));
  const transport = new StdioClientTransport({
    command: scenario.command,
    args: scenario.args,
    env: scenario.env,
    stderr: "inherit",
  });
  await step("connect", async () => {
    await client.connect(transport);
    return "ok";
  });
  if (report.connect !== "ok") return;
  await step("tools/list", async () => {
    const names = (await client.listTools()).tools.map((t) => t.name);
    const missing = ["echo", "ask", "slow"].map((k) => scenario[k].name).filter((n) => !names.includes(n));
    return missing.length ? `error: ${missing} not listed in ${names}` : "ok";
  });
  if (scenario.only) {
    await client.close();
    return;
  }
  await step("tools/call", async () => {
    const text = textOf(await client.callTool({ name: scenario.echo.name, arguments: scenario.echo.arguments }));
    return text.includes(scenario.echo.expect) ? "ok" : `error: answered ${JSON.stringify(text)}`;
  });
  await step("cancel", async () => {
    const abort = new AbortController();
    let started;
    const progressed = new Promise((resolve) => (started = resolve));
    const call = client
      .callTool({ name: scenario.slow.name, arguments: scenario.slow.arguments }, undefined, {
        signal: abort.signal,
        onprogress: () => started(),
        timeout: 60000,
      })
      .catch((e) => e);
    await progressed;
    abort.abort("the user stopped it");
    const outcome = await call;
    return outcome instanceof Error ? "ok" : `error: not cancelled: ${JSON.stringify(outcome)}`;
  });
  await step("elicitation", async () => {
    const text = textOf(await client.callTool({ name: scenario.ask.name, arguments: scenario.ask.arguments }));
    return text.includes("Ada") ? "ok" : `error: answered ${JSON.stringify(text)}`;
  });
  await client.close();
}

const guard = setTimeout(() => {
  report.connect ??= "error: timed out";
  console.log(JSON.stringify({ ...report, timeout: "error: the scenario took over 90 s" }));
  process.exit(0);
}, 90000);
main()
  .catch((e) => (report.connect = `error: ${e?.message ?? e}`))
  .finally(() => {
    clearTimeout(guard);
    console.log(JSON.stringify(report));
    process.exit(0);
  });
