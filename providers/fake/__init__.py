"""The fake provider: deterministic, realistic replies with fault injection.

The embedded default, so the gateway runs with no API key and no network.
"""
