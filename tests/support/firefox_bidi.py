"""A minimal WebDriver BiDi client for Debian's Firefox ESR (no driver binary needed).

Firefox speaks WebDriver BiDi itself when started with ``--remote-debugging-port``;
Playwright cannot drive a stock Firefox (it needs its own patched build, which would
be a download), so the Firefox tests use this instead: start, navigate, evaluate
JavaScript in the page, and collect console errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = Path("/usr/bin/firefox-esr")
_LISTENING = re.compile(rb"WebDriver BiDi listening on (ws://\S+)")


class BiDiError(RuntimeError):
    """Firefox answered a command with an error, or a script threw."""


class Firefox:
    """One headless Firefox with one tab, driven over WebDriver BiDi."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.console_errors: list[str] = []
        self.context = ""

    async def _read(self) -> None:
        async for message in self._ws:
            data = message.json()
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "log.entryAdded":
                entry = data["params"]
                if entry.get("level") == "error":
                    self.console_errors.append(str(entry.get("text")))

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 30)
        if reply.get("type") == "error":
            raise BiDiError(f"{method}: {reply.get('error')}: {reply.get('message')}")
        result: dict[str, Any] = reply["result"]
        return result

    async def start(self) -> None:
        await self.command("session.new", capabilities={})
        await self.command("session.subscribe", events=["log.entryAdded"])
        tree = await self.command("browsingContext.getTree")
        self.context = tree["contexts"][0]["context"]

    async def goto(self, url: str) -> None:
        await self.command(
            "browsingContext.navigate", context=self.context, url=url, wait="complete"
        )

    async def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (awaiting promises); its JSON value."""
        result = await self.command(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
        )
        if result.get("type") == "exception":
            raise BiDiError(str(result["exceptionDetails"].get("text")))
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll until ``expression`` is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.js(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"still falsy after {timeout} s: {expression}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.command("session.end")
        self._reader.cancel()
        await self._ws.close()


@contextlib.asynccontextmanager
async def firefox() -> AsyncIterator[Firefox]:
    """A headless Firefox with a fresh profile, stopped afterwards."""
    profile = tempfile.mkdtemp(prefix="tokenpipe-firefox-")
    proc = subprocess.Popen(
        [
            str(FIREFOX),
            "--headless",
            "--no-remote",
            "--profile",
            profile,
            "--remote-debugging-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    loop = asyncio.get_running_loop()
    drain: asyncio.Future[bytes] | None = None
    try:
        url = None
        async with asyncio.timeout(60):
            while url is None:
                line = await loop.run_in_executor(None, proc.stderr.readline)
                if not line:
                    raise RuntimeError("firefox exited before listening")
                if found := _LISTENING.search(line):
                    url = found.group(1).decode()
        # Keep draining stderr so Firefox never blocks on a full pipe.
        drain = loop.run_in_executor(None, proc.stderr.read)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url + "/session", max_msg_size=0) as ws,
        ):
            browser = Firefox(ws)
            try:
                await browser.start()
                yield browser
            finally:
                await browser.close()
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, proc.wait), 20)
        except TimeoutError:
            proc.kill()
        if drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drain, 5)
        proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)
