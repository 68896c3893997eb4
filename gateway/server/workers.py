"""Worker processes: ``--workers N`` servers sharing one port.

The parent starts that many server processes bound to the same port with
``SO_REUSEPORT`` (the kernel spreads connections across them), passes SIGTERM and
SIGINT on to all of them, and exits when they have all drained. SIGHUP is passed on
too: every worker reloads its configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from config import Settings
from gateway.observability.logging import configure_logging
from gateway.observability.metrics import (
    cleanup_multiprocess_dir,
    mark_dead,
    prepare_multiprocess_dir,
)
from gateway.server.run import new_loop, run_server

log = structlog.get_logger("tokenpipe.server")


class EventLike(Protocol):
    """``multiprocessing.Event``: set by a worker once it handles SIGHUP."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...


def _worker(settings: Settings, overrides: Mapping[str, Any], reloadable: EventLike) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # The parent forwards SIGINT as SIGTERM; a terminal's Ctrl-C reaches every
    # process of the group, and one drain per worker is what we want either way.
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(
            run_server(settings, reuse_port=True, overrides=overrides, on_reloadable=reloadable.set)
        )


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def supervise_workers(settings: Settings, overrides: Mapping[str, Any] | None = None) -> int:
    """Run ``settings.workers`` servers until they have all stopped; the exit status.

    ``overrides``: the flags ``settings`` came from, which each worker's reloads apply.
    """
    overrides = dict(overrides or {})
    if settings.port == 0:
        settings = settings.model_copy(update={"port": _free_port(settings.host)})
        # Every worker binds, and keeps across reloads, the one port picked here.
        overrides["port"] = settings.port
    # Every worker's metrics in one directory, merged by any worker's /metrics.
    metrics_dir = prepare_multiprocess_dir()
    try:
        return _run_workers(settings, overrides)
    finally:
        cleanup_multiprocess_dir(metrics_dir)


def _run_workers(settings: Settings, overrides: Mapping[str, Any]) -> int:
    ctx = multiprocessing.get_context("spawn")
    reloadable = [ctx.Event() for _ in range(settings.workers)]
    workers = [
        ctx.Process(target=_worker, args=(settings, overrides, ready), name=f"tokenpipe-worker-{i}")
        for i, ready in enumerate(reloadable)
    ]
    # Ignored until each worker's loop handles it: the disposition survives the spawn's
    # exec, so a SIGHUP reaching a worker still starting cannot end it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for worker in workers:
        worker.start()
    log.info("workers_started", workers=len(workers), port=settings.port)

    # SIGHUP is passed on by the loop below, not by the handler: a worker still starting
    # would ignore it, so it gets it once it says it handles SIGHUP (``reloadable``).
    owed: set[int] = set()

    def reload_all(signum: int, frame: object) -> None:
        owed.update(range(len(workers)))

    signal.signal(signal.SIGHUP, reload_all)

    def pass_on_reloads() -> None:
        for i in sorted(owed):
            worker = workers[i]
            if not worker.is_alive() or worker.pid is None:
                owed.discard(i)
            elif reloadable[i].is_set():
                owed.discard(i)
                log.info("reload_forwarded", worker=worker.name, pid=worker.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGHUP)

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = 0
    reaped: set[int] = set()
    while any(w.is_alive() for w in workers):
        for worker in workers:
            worker.join(timeout=0.2)
            pass_on_reloads()
            if worker.is_alive() or worker.pid is None or worker.pid in reaped:
                continue
            reaped.add(worker.pid)
            mark_dead(worker.pid)
            if worker.exitcode and not stopping:
                failed += 1
                log.error("worker_died", worker=worker.name, exitcode=worker.exitcode)
    log.info("workers_stopped", failed=failed)
    return 1 if failed else 0
