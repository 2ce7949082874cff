// The TypeScript SDK's MCP servers (@modelcontextprotocol/sdk) for the interop matrix (issue 20),
// behind a recording layer.
//
//   node ts_server.mjs --variant sdk|everything --record FILE [--first-429]
//
// Prints its URL on stdout once it listens on 127.0.0.1. Variants:
// - sdk: an McpServer with the matrix's tools (echo, slow, ask) over StreamableHTTPServerTransport
//   with sessions, as the SDK's README sets it up;
// - everything: the reference "everything" server (@modelcontextprotocol/server-everything): its
//   own createServer(), one per session, over the same transport, as its streamableHttp entry does.
// The recording layer writes one JSON line per HTTP request (http, rpc, session, version, status)
// and one per tool event (slow-started, slow-cancelled), and with --first-429 answers the first
// POST with 429 and Retry-After: 1.
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import { parseArgs } from "node:util";
import express from "express";
import { z } from "zod";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { ElicitResultSchema, isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { createServer as createEverything } from "@modelcontextprotocol/server-everything/dist/server/index.js";

const { values: opts } = parseArgs({
  options: {
    variant: { type: "string", default: "sdk" },
    record: { type: "string" },
    "first-429": { type: "boolean", default: false },
  },
});
const note = (entry) => fs.appendFileSync(opts.record, JSON.stringify(entry) + "\n");

function sdkServer() {
  const server = new McpServer({ name: "ts-interop", version: "1.32.2" });
  server.registerTool("echo", { description: "Send the text back", inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: "text", text: `echo: ${text}` }] }));
  server.registerTool("slow", {
    description: "Work for a while, reporting progress once at the start",
    inputSchema: { seconds: z.number() },
  }, async ({ seconds }, extra) => {
    note({ event: "slow-started" });
    const token = extra._meta?.progressToken;
    if (token !== undefined) {
      await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress: 0, total: 1 } });
    }
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, seconds * 1000);
      extra.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        note({ event: "slow-cancelled" });
        resolve();
      });
    });
    return { content: [{ type: "text", text: "done" }] };
  });
  server.registerTool("ask", { description: "Ask the client for a name (elicitation)" }, async (extra) => {
    const answer = await extra.sendRequest({
      method: "elicitation/create",
      params: { message: "Who is there?", requestedSchema: { type: "object", properties: { name: { type: "string" } }, required: ["name"] } },
    }, ElicitResultSchema);
    return { content: [{ type: "text", text: `hello ${answer.content?.name ?? `(${answer.action})`}` }] };
  });
  return { server, cleanup: () => {} };
}

const make = opts.variant === "everything" ? createEverything : sdkServer;
const transports = new Map();
let first429 = opts["first-429"];
const app = express();
app.use(express.json({ limit: "8mb" }));
app.use((req, res, next) => {
  const messages = Array.isArray(req.body) ? req.body : req.body && typeof req.body === "object" ? [req.body] : [];
  const entry = {
    http: req.method,
    session: req.headers["mcp-session-id"] ?? null,
    version: req.headers["mcp-protocol-version"] ?? null,
    rpc: messages.map((m) => ({ method: m.method ?? null, id: m.id ?? null, requestId: m.params?.requestId ?? null, result: "result" in m, error: "error" in m })),
  };
  res.on("finish", () => note({ ...entry, status: res.statusCode }));
  if (req.method === "POST" && first429) {
    first429 = false;
    res.status(429).set("Retry-After", "1").json({ error: "slow down" });
    return;
  }
  next();
});
app.post("/mcp", async (req, res) => {
  const id = req.headers["mcp-session-id"];
  let transport = id ? transports.get(id) : undefined;
  if (!transport) {
    if (id || !isInitializeRequest(req.body)) {
      res.status(400).json({ jsonrpc: "2.0", error: { code: -32000, message: "Bad Request: No valid session ID provided" }, id: req.body?.id ?? null });
      return;
    }
    const { server, cleanup } = make();
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (sid) => transports.set(sid, transport),
    });
    transport.onclose = () => {
      if (transport.sessionId) transports.delete(transport.sessionId);
      cleanup(transport.sessionId);
    };
    await server.connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});
const session = async (req, res) => {
  const transport = transports.get(req.headers["mcp-session-id"]);
  if (!transport) {
    res.status(400).json({ jsonrpc: "2.0", error: { code: -32000, message: "Bad Request: No valid session ID provided" }, id: null });
    return;
  }
  await transport.handleRequest(req, res);
};
app.get("/mcp", session);
app.delete("/mcp", session);
const listener = app.listen(0, "127.0.0.1", () => {
  console.log(`http://127.0.0.1:${listener.address().port}/mcp`);
});
