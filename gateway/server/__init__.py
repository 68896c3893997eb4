"""Running the gateway: the run loop, signals and drain, worker processes, the header deadline.

Imports gateway.app; nothing imports it but the CLI.
"""
