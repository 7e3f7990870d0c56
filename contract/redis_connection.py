"""Every redis-py client of the fleet is made here: the same timeouts, retries and masking everywhere."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from contract.settings import FleetSettings

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
TLS_SCHEME = "rediss://"
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
MASK = "***"


def retries_for(outage_s: float) -> int:
    """Retries of an exponential backoff (base 50 ms, cap 1 s) that span about `outage_s` seconds."""
    if outage_s <= 0:
        return 0
    ramp = int(math.log2(BACKOFF_CAP_S / BACKOFF_BASE_S)) + 1
    ramp_s = sum(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**step) for step in range(ramp))
    return ramp + max(0, math.ceil((outage_s - ramp_s) / BACKOFF_CAP_S))


def tls_options(settings: FleetSettings) -> dict[str, object]:
    """redis-py's TLS arguments from the settings (for rediss:// URLs); Celery's broker gets the same."""
    options: dict[str, object] = {"ssl_cert_reqs": settings.redis_tls_verify}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
    if settings.redis_tls_key_file:
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def connect(url: str, settings: FleetSettings, outage_s: float | None = None) -> redis.Redis:
    """A client that rides out a Redis restart of up to `outage_s` (default: EMBED_REDIS_OUTAGE_S).

    Commands are retried on connection errors and timeouts with backoff; every step of the
    protocol is idempotent (content-addressed SETs, counting by set membership), so a command
    retried after a timeout cannot count twice.
    """
    budget = settings.redis_outage_s if outage_s is None else outage_s
    retry = Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries_for(budget))
    return redis.Redis.from_url(url, retry=retry, **client_options(url, settings))


def server_time(client: redis.Redis) -> float:
    """Redis' clock in seconds, so every host measures ages against the same one."""
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def broker_client(settings: FleetSettings, cache: redis.Redis) -> redis.Redis | None:
    """A client of the broker's Redis (the cache's own where they are one server); None for AMQP."""
    if not settings.broker_url.startswith(REDIS_SCHEMES):
        return None
    return cache if settings.broker_url == settings.cache_url else connect(settings.broker_url, settings)


def client_options(url: str, settings: FleetSettings) -> dict[str, Any]:
    """Timeouts, keepalive, retried errors and TLS shared by the sync and asyncio clients."""
    return {
        **(tls_options(settings) if url.startswith(TLS_SCHEME) else {}),
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": settings.redis_health_check_interval_s,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def async_connect(url: str, settings: FleetSettings, outage_s: float | None = None) -> aioredis.Redis:
    """As `connect`, for asyncio (redis.asyncio), with the same timeouts, retries and TLS options."""
    budget = settings.redis_outage_s if outage_s is None else outage_s
    retry = AsyncRetry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries_for(budget))
    return aioredis.Redis.from_url(url, retry=retry, **client_options(url, settings))


def mask_url(url: str) -> str:
    """The URL with its password (and a user name that may be a token) replaced, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None and not parts.username:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    credentials = f"{user}:{MASK}" if parts.password is not None else MASK
    return urlunsplit((parts.scheme, f"{credentials}@{host}", parts.path, parts.query, parts.fragment))


def explain(exc: Exception) -> str:
    """A Redis error as a user can act on it; a failed certificate check says which setting to look at."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"{text} (Redis' certificate is not signed by EMBED_REDIS_TLS_CA_FILE: nothing was sent)"
    if "certificate" in text.lower() or "alert" in text.lower():
        return f"{text} (TLS handshake refused: check EMBED_REDIS_TLS_CERT_FILE and EMBED_REDIS_TLS_KEY_FILE)"
    return text


def as_text(value: object) -> str:
    """A Redis reply as text (redis-py returns bytes unless decode_responses, which we never set)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
