"""Providers: the things that generate tokens.

A provider is any object satisfying :class:`providers.base.Provider`: one streaming
method yielding provider-neutral events (:mod:`providers.events`) and ``aclose()``.
Nothing in this package knows about HTTP serving, SSE or the OpenAI wire schema of
the gateway's inbound API; foreign exceptions are translated into
:mod:`providers.errors` at this boundary.
"""
