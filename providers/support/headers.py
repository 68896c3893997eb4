"""The headers a provider sends with every upstream request, built once."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, istr


def request_headers(fields: Mapping[str, str]) -> CIMultiDict[str]:
    """``fields`` as aiohttp takes them as they are: a CIMultiDict with ``istr`` names.

    A plain ``str`` name makes every request's CIMultiDict keep a lower-cased copy
    of it; an ``istr`` carries its own (about 1 KB per open stream for the OpenAI
    SDK's dozen headers, tracemalloc).
    """
    return CIMultiDict((istr(name), value) for name, value in fields.items())
