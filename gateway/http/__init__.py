"""HTTP: middleware, JSON errors, handlers, health, the static chat page.

May import every other gateway package; nothing imports it but gateway.app.
"""
