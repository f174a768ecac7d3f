"""The one factory of HTTP clients for talking to our own servers (TorchServe, the gateway), and their named timeouts.

Every server this package calls listens on 127.0.0.1, so every client ignores proxy settings from the environment
(`trust_env=False`: a proxy must not intercept a token) and connects within CONNECT_S. What differs is how long a
caller waits for an answer, named here by what it asks:

    PROBE_S       5 s   readiness polls, status, the gateway's identity check: a live server answers at once
    MANAGEMENT_S 30 s   management calls (describe, set-default, register, unregister) and live updates' smoke request
    TOKEN_S      10 s   renewing a key through the token API for `aiaas serve token`
    REQUEST_S    30 s   one prediction through `Client` (also `aiaas predict --request-timeout`'s default)

Scaling and unregistering wait for TorchServe to start or stop workers; their own `timeout` arguments say how long.
"""

from __future__ import annotations

import httpx

CONNECT_S = 5.0
PROBE_S = 5.0
MANAGEMENT_S = 30.0
TOKEN_S = 10.0
REQUEST_S = 30.0


def timeout(seconds: float) -> httpx.Timeout:
    """Return an httpx.Timeout of `seconds` for reading, writing and the pool, and at most CONNECT_S to connect."""
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_S))


def http_client(seconds: float) -> httpx.Client:
    """Return a keep-alive httpx.Client for our loopback servers that waits `seconds` for an answer (see timeout)."""
    return httpx.Client(timeout=timeout(seconds), trust_env=False)
