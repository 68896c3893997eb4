"""Streaming a reply: framer, writer, relay, watchdog, collector, and the reply record.

The framer is the only place SSE bytes are made; the reply record is the one sink
of a reply. Imports dialects, routing and providers' events; never http.
"""
