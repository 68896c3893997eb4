"""In-process benchmarks of provider internals; run as modules, never collected as tests.

``python -m tests.benchmarks.relay_cost`` and ``python -m tests.benchmarks.provider_ttft``.
The benchmarks in ``scripts/`` talk HTTP to a started gateway instead.
"""
