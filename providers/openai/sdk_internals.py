"""The openai SDK's internals this provider relies on, in one place.

Each function works around a cost or a gap of the SDK's public API and says which;
``tests/test_third_party_internals.py`` fails loudly when an SDK upgrade changes
what they rely on (the ``openai`` dependency has an upper bound for the same reason).
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx2
import openai
from openai._models import FinalRequestOptions


def request_template(client: openai.AsyncOpenAI, path: str) -> tuple[str, dict[str, str]]:
    """The URL and headers the SDK would send for ``POST path``: built once per upstream.

    Works around the SDK's per-request cost: its request pipeline (options model,
    URL parsing, header merging, httpx's request and response objects) was 1.8 ms of
    the 2.2 ms to a stream's first event, against 0.36 ms for aiohttp alone
    (``python -m tests.benchmarks.provider_ttft``). The SDK still decides the URL,
    the auth and its identifying headers; only the sending is ours.
    """
    options = FinalRequestOptions.construct(method="post", url=path, json_data={})
    request = client._build_request(options)
    skip = {"content-length", "content-type", "accept-encoding", "x-stainless-retry-count"}
    headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
    headers["Content-Type"] = "application/json"
    return str(request.url), headers


def status_error(
    client: openai.AsyncOpenAI,
    url: str,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
) -> openai.APIStatusError:
    """The SDK's typed exception for an error response, as its own client would raise."""
    response = httpx2.Response(
        status, headers=list(headers), content=body, request=httpx2.Request("POST", url)
    )
    return client._make_status_error_from_response(response)
