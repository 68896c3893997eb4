"""Refresh the README screenshot of the live dashboard (docs/dashboard.png), under load.

Starts the gateway as a process (like a user would), runs ``scripts/loadtest.py``
against it in the background (paced ``fake`` streams and an open loop of
``fake-fast`` replies, so the model table has two rows), opens ``/dashboard`` in
Debian's headless Chromium and saves the view after ``--seconds`` of load.

    .venv/bin/python scripts/dashboard_screenshot.py             # start a gateway, shoot
    .venv/bin/python scripts/dashboard_screenshot.py --url URL   # use a running gateway
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from playwright.async_api import async_playwright, expect

# Run as a script, its directory is on sys.path: the chat page's screenshot script's helpers.
from screenshot import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port, wait_ready

#: What the load test sends: (model, load shape, extra body). Light enough for 2 cores.
LOADS = (
    ("fake", ["--concurrency", "24"], '{"fake": {"reply_tokens": 60, "tokens_per_second": 30}}'),
    ("fake-fast", ["--rate", "15"], '{"fake": {"reply_tokens": 120}}'),
)


@contextlib.contextmanager
def load(url: str, seconds: float) -> Iterator[None]:
    """``scripts/loadtest.py`` processes running against ``url`` for ``seconds`` + slack."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "loadtest.py"),
                "--url",
                url + "/v1",
                "--model",
                model,
                *shape,
                "--duration",
                str(seconds + 5),
                "--extra-body",
                extra,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for model, shape, extra in LOADS
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


async def shoot(url: str, output: Path, seconds: float) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(
                viewport={"width": 1200, "height": 560}, color_scheme="light"
            )
            await page.goto(url + "/dashboard")
            status = page.get_by_test_id("status")
            await expect(status).to_have_attribute("data-state", "live", timeout=30_000)
            await asyncio.sleep(seconds)
            output.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=output)
        finally:
            await browser.close()


def main() -> None:
    """Parse arguments, start a gateway unless given one, load it and save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="base URL of a running gateway (no admin key)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--seconds", type=float, default=12.0, help="of load before the shot")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        url = args.url.rstrip("/") if args.url else None
        if url is None:
            port = free_port()
            env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning"}
            server = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT,
                env=env,
            )
            stack.callback(server.wait, timeout=30)
            stack.callback(server.terminate)
            url = f"http://127.0.0.1:{port}"
            wait_ready(url)
        stack.enter_context(load(url, args.seconds))
        asyncio.run(shoot(url, args.output, args.seconds))
    size = args.output.stat().st_size
    print(f"saved {args.output} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
