"""Running the gateway: the run loop, signals and drain, worker processes, the header deadline.

Imports gateway.app; nothing imports it but the CLI, and the reload (``gateway.reload``)
its start-up refusals (``preflight``).
"""
