"""gateway.server.heap_trim: freed C-heap pages go back to the OS (in a fresh process)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from gateway.server.heap_trim import glibc_trim

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

#: Fragments the C heap the way a burst of set-ups does (a few KB of transients freed
#: between long-lived blocks), then lets ``trim_heap_every`` run, and prints RSS (KB)
#: after the frees and after the trimmer's first turns.
SCRIPT = textwrap.dedent(
    """
    import asyncio, contextlib
    from gateway.server.heap_trim import trim_heap_every

    def rss():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))

    kept, transient = [], []
    for i in range(20_000):
        transient += (bytearray(3000), bytearray(3000), bytearray(3000))
        kept.append(bytearray(600))
    del transient
    freed = rss()

    async def main():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(trim_heap_every(0.05), 0.5)

    asyncio.run(main())
    print(freed, rss(), len(kept))
    """
)


def test_the_trimmer_gives_freed_heap_pages_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    freed, trimmed = int(out[0]), int(out[1])
    # 180 MB of transients freed below kept blocks, in 9 KB holes: whole pages go back.
    assert freed - trimmed > 60_000, (freed, trimmed)


def test_glibc_trim_is_found_here() -> None:
    trim = glibc_trim()
    assert trim is not None
    assert trim() in (0, 1)
