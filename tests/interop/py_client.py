"""The Python SDK's MCP client (`mcp` on PyPI) for the interop matrix (issue 20): it launches
mcp-sidecar as its stdio server and plays one scenario, then prints a JSON report on stdout.

    python py_client.py --mode handshake|auto SCENARIO_JSON

handshake: `ClientSession` over `stdio_client` (the initialize handshake, as most Python clients
are written); auto: the high-level `Client(mode="auto")`, which sends `server/discover` first and
speaks the 2026-07-28 era when it is answered.

SCENARIO_JSON names the command to launch (`command`, `args`, `env`) and the tools to call:
`echo` and `ask` as {"name", "arguments"}, `slow` as {"name", "arguments"} (a tool that reports
progress once it has started, then works for long: it is cancelled at the first progress);
`only`: ["tools/list"] to connect and list only (the server is down: issue 24.5).
The report has one member per step, each "ok" or the error, plus the texts seen.
"""

import argparse
import json
import sys
import traceback

import anyio
import mcp_types as types

from mcp import ClientSession, StdioServerParameters
from mcp.client.client import Client
from mcp.client.stdio import stdio_client


async def elicit(context, params):
    return types.ElicitResult(action="accept", content={"name": "Ada"})


def text_of(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def steps(session, scenario, report) -> None:
    async def step(name, work):
        try:
            report[name] = await work()
        except Exception as e:  # the report says what failed; the driver judges
            report[name] = f"error: {type(e).__name__}: {e}"
            report.setdefault("traceback", {})[name] = traceback.format_exc()

    async def list_tools():
        tools = await session.list_tools()
        names = [t.name for t in tools.tools]
        for want in ("echo", "ask", "slow"):
            if scenario[want]["name"] not in names:
                return f"error: {scenario[want]['name']} not listed in {names}"
        return "ok"

    async def echo():
        text = text_of(await session.call_tool(scenario["echo"]["name"], scenario["echo"]["arguments"]))
        return "ok" if scenario["echo"]["expect"] in text else f"error: answered {text!r}"

    async def cancel():
        started = anyio.Event()

        async def progress(progress, total, message):
            started.set()

        async with anyio.create_task_group() as tg:
            async def call():
                await session.call_tool(scenario["slow"]["name"], scenario["slow"]["arguments"], progress_callback=progress)

            tg.start_soon(call)
            with anyio.fail_after(30):
                await started.wait()
            tg.cancel_scope.cancel()
        return "ok"

    async def ask():
        text = text_of(await session.call_tool(scenario["ask"]["name"], scenario["ask"]["arguments"]))
        return "ok" if "Ada" in text else f"error: answered {text!r}"

    await step("tools/list", list_tools)
    if scenario.get("only"):
        return
    await step("tools/call", echo)
    await step("cancel", cancel)
    await step("elicitation", ask)


async def run(mode: str, scenario: dict) -> dict:
    params = StdioServerParameters(command=scenario["command"], args=scenario["args"], env=scenario["env"])
    report: dict = {}
    with anyio.fail_after(90):
        if mode == "handshake":
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write, elicitation_callback=elicit) as session:
                    await session.initialize()
                    report["connect"] = "ok"
                    await steps(session, scenario, report)
        else:
            async with Client(params, mode="auto", elicitation_callback=elicit) as client:
                report["connect"] = "ok"
                await steps(client, scenario, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["handshake", "auto"], required=True)
    parser.add_argument("scenario")
    args = parser.parse_args()
    scenario = json.loads(args.scenario)
    try:
        report = anyio.run(run, args.mode, scenario)
    except BaseException as e:  # noqa: BLE001 - reported, not raised
        report = {"connect": f"error: {type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
