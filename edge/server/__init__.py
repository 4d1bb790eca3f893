"""``gloss-edge serve``: the HTTP server subsystem.

Modules, bottom up: ``metrics`` (Prometheus counters), ``request`` (request parsing as pure functions),
``queue`` (bounded queue + the worker thread), ``app`` (the starlette app and its service), ``transport``
(socket, guarded h11 protocol, :class:`~gloss.edge.server.transport.Server`).
"""
