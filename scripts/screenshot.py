"""Refresh the README screenshot of the chat page (docs/chat.png).

Starts the gateway as a process (like a user would), opens the page in Debian's
headless Chromium, has one exchange with the ``fake`` model and saves the view.

    .venv/bin/python scripts/screenshot.py            # start a gateway, shoot
    .venv/bin/python scripts/screenshot.py --url URL  # use a running gateway
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.async_api import async_playwright, expect

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT = "How should a gateway handle a client that disconnects?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def shoot(url: str, output: Path, model: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(
                viewport={"width": 1100, "height": 750}, color_scheme="light"
            )
            await page.goto(url + "/")
            select = page.get_by_test_id("model-select")
            await expect(select.locator(f'option[value="{model}"]')).to_be_attached()
            await select.select_option(model)
            await page.get_by_test_id("prompt").fill(PROMPT)
            await page.get_by_test_id("prompt").press("Enter")
            reply = page.get_by_test_id("assistant-message").last
            await expect(reply).to_have_attribute("data-state", "done", timeout=120_000)
            await page.get_by_test_id("prompt").blur()
            output.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=output)
        finally:
            await browser.close()


def main() -> None:
    """Parse arguments, start a gateway unless given one, and save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="base URL of a running gateway")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "chat.png")
    parser.add_argument("--model", default="fake")
    args = parser.parse_args()

    if args.url:
        asyncio.run(shoot(args.url.rstrip("/"), args.output, args.model))
        return
    port = free_port()
    env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        asyncio.run(shoot(url, args.output, args.model))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
