"""Drives Outpost's MCP server with the official Python SDK (PyPI `mcp`).

Usage: mcp_client.py http URL TOKEN MODE | stdio OUTPOST_BINARY CONFIG HUB TOKEN MODE

MODE is "auto" (the current revision, 2026-07-28) or "legacy" (the initialize handshake of
2025-11-25). Prints one JSON object: what each step saw. The Rust test judges it.
"""

import json
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return "".join(getattr(block, "text", "") for block in result.content)


def shape(result):
    return {
        "error": bool(result.is_error),
        "text": text_of(result),
        "structured": result.structured_content,
    }


async def session(client, report):
    tools = await client.list_tools()
    report["tools"] = {t.name: t.input_schema for t in tools.tools}
    report["echo"] = shape(await client.call_tool("echo", {"input": "hello from python"}))
    report["gpu"] = shape(await client.call_tool("gpu-job", {"input": "py"}))
    report["add"] = shape(await client.call_tool("add", {"a": 20, "b": 22}))
    report["spin"] = shape(await client.call_tool("spin", {"input": "spin"}))
    report["nodes"] = shape(await client.call_tool("nodes", {"action": "list"}))

    # A call that fits nowhere reports why while it waits, and cancelling it cancels its task.
    progress = []
    seen = anyio.Event()

    async def on_progress(value, total, message):
        progress.append(message)
        # The first word may come before the scheduler has looked at the task.
        if "waiting for the scheduler" not in (message or ""):
            seen.set()

    async def call_huge():
        try:
            await client.call_tool("huge", {"input": "x"}, progress_callback=on_progress)
        except BaseException:
            pass

    async with anyio.create_task_group() as group:
        group.start_soon(call_huge)
        with anyio.fail_after(30):
            await seen.wait()
        group.cancel_scope.cancel()
    report["huge_progress"] = progress


async def main():
    kind = sys.argv[1]
    report = {}
    if kind == "http":
        url, token, mode = sys.argv[2:5]
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                await session(client, report)
    else:
        binary, config, hub, token, mode = sys.argv[2:7]
        params = StdioServerParameters(
            command=binary,
            args=["mcp", "--config", config, "--hub", hub],
            env={"OUTPOST_TOKEN": token},
        )
        async with Client(params, mode=mode) as client:
            await session(client, report)
    print(json.dumps(report))


anyio.run(main)
