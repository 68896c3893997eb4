"""What one spawned worker process does in the multiprocess tests.

It runs in a fresh interpreter (multiprocessing's spawn), so prometheus-client is
imported here with ``PROMETHEUS_MULTIPROC_DIR`` already set, as in a real worker.
"""

from __future__ import annotations

from multiprocessing.synchronize import Event

from prometheus_client import values

from gateway.observability.live_stats import LiveStats
from gateway.observability.metrics import multiprocess_dir
from tests.gateway.observability.support import Facts, make_metrics


def record(replies: int, streams: int, ready: Event, release: Event) -> None:
    """Record ``replies`` replies and open ``streams`` streams, then wait to be released."""
    assert values.ValueClass.__name__ == "MmapedValue", "not in multiprocess mode"
    metrics = make_metrics()
    live = LiveStats(["fake"], share_dir=multiprocess_dir())
    for _ in range(replies):
        facts = Facts(ttft=0.1, duration=1.0, prompt_tokens=10, completion_tokens=20)
        metrics.observe_reply(facts)
        live.record_reply(facts)
    for _ in range(streams):
        metrics.stream_started()
        live.stream_started()
    metrics.observe_request("/v1/chat/completions", 200)
    live.publish()
    ready.set()
    release.wait(60)
