"""Who may call and how much: keys, limits, the state store (memory | redis).

Imports config and errors.
"""
