"""The Python SDK's MCP server (`mcp` on PyPI, MCPServer over Streamable HTTP) for the interop
matrix (issue 20), behind a recording layer.

    python py_server.py --variant stateful|stateless|modern-only --record FILE [--first-429]

Prints its URL on stdout once it listens on 127.0.0.1. Variants:
- stateful: `streamable_http_app()` as most servers run it (sessions, both eras on one endpoint);
- stateless: the same with `stateless_http=True` (no sessions);
- modern-only: the stateful app behind a layer that refuses the handshake era the way a
  2026-07-28-only server does (400 with -32020 for a request without a 2026 MCP-Protocol-Version,
  405 for GET and DELETE): a stateless-only server whose every answer is the real SDK's.

The recording layer writes one JSON line per HTTP request (`http`, `rpc` methods and ids,
`session`, `version`, `status`) and one per tool event (`event`: slow-started, slow-cancelled),
and with --first-429 answers the first POST with 429 and `Retry-After: 1`.
"""

import argparse
import json
import socket
import sys
from typing import Annotated

import anyio
import uvicorn
from pydantic import BaseModel

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["stateful", "stateless", "modern-only"], default="stateful")
    parser.add_argument("--record", required=True)
    parser.add_argument("--first-429", action="store_true")
    args = parser.parse_args()
    record = open(args.record, "a", buffering=1)

    def note(entry: dict) -> None:
        record.write(json.dumps(entry) + "\n")

    server = MCPServer("py-interop", version="2.3.0")

    @server.tool()
    def echo(text: str) -> str:
        """Send the text back."""
        return f"echo: {text}"

    @server.tool()
    async def slow(seconds: float, ctx: Context) -> str:
        """Work for a while, reporting progress once at the start."""
        note({"event": "slow-started"})
        try:
            await ctx.report_progress(0, 1)
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            note({"event": "slow-cancelled"})
            raise
        return "done"

    class Name(BaseModel):
        name: str

    def who() -> Elicit[Name]:
        return Elicit("Who is there?", Name)

    # A resolver, the SDK's way that works in both eras: a server request mid-call in the
    # handshake era, an `input_required` round in the stateless era.
    @server.tool()
    async def ask(name: Annotated[Name, Resolve(who)]) -> str:
        """Ask the client for a name (elicitation)."""
        return f"hello {name.name}"

    app = server.streamable_http_app(stateless_http=args.variant == "stateless")
    app = Recorder(app, note, first_429=args.first_429, modern_only=args.variant == "modern-only")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    print(f"http://127.0.0.1:{port}/mcp", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


class Recorder:
    """An ASGI layer that records each request and may refuse it before the SDK sees it."""

    def __init__(self, app, note, first_429: bool, modern_only: bool):
        self.app, self.note, self.first_429, self.modern_only = app, note, first_429, modern_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        entry = {
            "http": scope["method"],
            "session": headers.get("mcp-session-id"),
            "version": headers.get("mcp-protocol-version"),
            "rpc": rpc_summary(body),
        }
        status = {"code": None}
        replayed = {"done": False}

        async def replay():
            if replayed["done"]:
                return await receive()
            replayed["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                entry["status"] = message["status"]
                self.note(entry)
            await send(message)

        if scope["method"] == "POST" and self.first_429:
            self.first_429 = False
            return await plain(watch, 429, b'{"error":"slow down"}', [(b"retry-after", b"1")])
        if self.modern_only:
            version = headers.get("mcp-protocol-version", "")
            if scope["method"] != "POST":
                return await plain(watch, 405, b"", [])
            if version < "2026-07-28":
                ids = [m.get("id") for m in parse(body) if isinstance(m, dict)]
                error = {"jsonrpc": "2.0", "id": ids[0] if ids else None,
                         "error": {"code": -32020, "message": "this server speaks only MCP 2026-07-28"}}
                return await plain(watch, 400, json.dumps(error).encode(), [(b"content-type", b"application/json")])
        await self.app(scope, replay, watch)


async def plain(send, status, body, headers):
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def parse(body: bytes) -> list:
    try:
        value = json.loads(body) if body else []
    except ValueError:
        return []
    return value if isinstance(value, list) else [value]


def rpc_summary(body: bytes) -> list:
    out = []
    for m in parse(body):
        if isinstance(m, dict):
            out.append({"method": m.get("method"), "id": m.get("id"),
                        "requestId": (m.get("params") or {}).get("requestId") if isinstance(m.get("params"), dict) else None,
                        "result": "result" in m, "error": "error" in m})
    return out


if __name__ == "__main__":
    sys.exit(main())
