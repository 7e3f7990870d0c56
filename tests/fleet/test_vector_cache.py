"""The vector cache against a real redis-server: lookups in batches, hits kept alive."""

from __future__ import annotations

import numpy as np
import pytest

from contract import keys
from contract.redis_connection import connect
from contract.settings import FleetSettings
from contract.vector_cache import VectorCache
from localfleet.redis_server import RedisServer

pytestmark = pytest.mark.fleet

TTL_S = 600
SHORT_TTL_S = 5


def test_look_answers_per_digest_across_batches_and_renews_hits(cache_server: RedisServer) -> None:
    client = connect(cache_server.url, FleetSettings())
    cache = VectorCache(client, TTL_S, fetch_batch_size=2)  # 5 digests: three lookup batches
    fingerprint = "look-test"
    digests = [f"digest{i}" for i in range(5)]
    stored = [digests[0], digests[3], digests[4]]
    cache.write(fingerprint, stored, np.ones((3, 4), dtype=np.float32), [False, True, False])
    for digest in stored:
        client.expire(keys.vector_key(fingerprint, digest), SHORT_TTL_S)

    exists, cut = cache.look(fingerprint, digests)

    assert exists == [True, False, False, True, True]
    assert cut == [False, False, False, True, False]
    assert all(client.ttl(keys.vector_key(fingerprint, d)) > SHORT_TTL_S for d in stored)
    assert cache.look(fingerprint, []) == ([], [])
