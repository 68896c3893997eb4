"""The in-memory reply log: what an open reply costs it (issue 12: at most 2 KB)."""

from __future__ import annotations

import gc
import tracemalloc

import orjson

from gateway.streaming.replylog import ReplyMeta, new_reply_id, new_token
from gateway.streaming.replylog_memory import MemoryReplyLogStore
from providers.events import TextDelta

REPLIES = 1000
#: A typical streamed request body (the log keeps it, to rebuild the encoder).
BODY = orjson.dumps(
    {
        "model": "relay",
        "messages": [{"role": "user", "content": "Benchmark the relay."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)


async def test_an_open_reply_costs_the_memory_log_under_2_kb() -> None:
    """Measured exactly (tracemalloc counts every Python allocation), not by RSS: the
    log's share of a held stream, its meta and the body kept, and its first tokens."""
    store = MemoryReplyLogStore(ttl=300)
    texts = [TextDelta(f" token{i}") for i in range(3)]  # made by the provider anyway
    metas = [  # the ids and token exist without the log too (the reply's id, the header)
        ReplyMeta(
            reply_id=new_reply_id(),
            dialect="chat_completions",
            body=BODY,
            created=0,
            token=new_token(),
        )
        for _ in range(REPLIES)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        logs = [await store.create(meta) for meta in metas]
        for log in logs:
            for text in texts:
                log.append(text)
        gc.collect()
        per_reply = (tracemalloc.get_traced_memory()[0] - before) / REPLIES
    finally:
        tracemalloc.stop()
    assert len(logs) == REPLIES
    print(f"memory reply log: {per_reply:.0f} bytes per open reply")
    assert per_reply < 2048, per_reply
