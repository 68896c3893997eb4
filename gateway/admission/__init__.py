"""Who may call and how much: keys, limits, the state store (memory | redis).

- ``keys``: ``KeyRing`` finds the ``Identity`` (name, models, ``Limits``) a request's key grants.
- ``store``: the ``StateStore`` contract, its values, and ``StoreUnavailable``.
- ``memory_store``: ``MemoryStore``, one process (the default).
- ``redis_store`` (+ ``redis_scripts``): ``RedisStore``, shared by several processes.
- ``headers``: OpenAI's ``x-ratelimit-*`` / ``retry-after`` values from an ``Admission``.
"""
