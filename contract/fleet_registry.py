"""Who serves what, right now: worker heartbeats per build, read by producers and the reconciler.

A worker node renews its entry every EMBED_HEARTBEAT_INTERVAL_S; an entry not renewed within
EMBED_HEARTBEAT_TTL_S counts as gone. Expiry is scored in Redis' own clock, so hosts with
skewed clocks agree on who is alive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import redis

from contract import keys
from contract.lua_scripts import load_lua
from contract.redis_connection import as_text, server_time

LIVE_BUILD_FIELDS = 8  # fields per build in live_builds.lua's reply


@dataclass(frozen=True)
class BuildAdvert:
    """What a producer needs to submit to a build; `processes` counts its live pool processes.

    `artifact` is the manifest's fingerprint: builds of one artifact differ only in the CPU kernel
    path of the hosts serving it (contract.manifest.Manifest.serving_fingerprint).
    """

    model: str
    fingerprint: str
    artifact: str
    dims: int
    since: float
    nodes: int = 0
    processes: int = 0
    name: str = ""
    max_tokens: int = 0


@dataclass(frozen=True)
class NodeAdvert:
    node: str
    model: str
    fingerprint: str
    artifact: str
    dims: int
    name: str
    max_tokens: int
    processes: int
    host: str
    pid: int


class FleetRegistry:
    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def now(self) -> float:
        return server_time(self.redis)

    def beat(self, advert: NodeAdvert) -> None:
        """Renew this node's entry and its build's advert; also what re-advertises after a reconnect."""
        now = self.now()
        nodes = keys.build_nodes_key(advert.model, advert.fingerprint)
        build = keys.build_key(advert.model, advert.fingerprint)
        ttl_ms = int(self.ttl_s * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.node_key(advert.node), mapping=asdict(advert))  # type: ignore[arg-type]
        pipe.pexpire(keys.node_key(advert.node), ttl_ms)
        pipe.zadd(nodes, {advert.node: now + self.ttl_s})
        pipe.zremrangebyscore(nodes, "-inf", now)
        pipe.pexpire(nodes, ttl_ms)
        build_fields = ("model", "fingerprint", "artifact", "dims", "name", "max_tokens")
        pipe.hset(build, mapping={name: getattr(advert, name) for name in build_fields})
        pipe.pexpire(build, ttl_ms)
        pipe.zadd(keys.builds_key(advert.model), {advert.fingerprint: now}, nx=True)
        pipe.execute()

    def keep_tokenizer(self, artifact: str, tokenizer_json: bytes, ttl_s: int) -> None:
        """The artifact's tokenizer, for producers that count tokens without the artifact (the gateway):
        its TTL renewed while a node serves it, written again only where it is missing."""
        key = keys.tokenizer_key(artifact)
        if not self.redis.expire(key, ttl_s):
            self.redis.set(key, tokenizer_json, ex=ttl_s)

    def withdraw(self, advert: NodeAdvert) -> None:
        """Leave at once on warm shutdown, so producers stop choosing a build nobody serves."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.node_key(advert.node))
        pipe.zrem(keys.build_nodes_key(advert.model, advert.fingerprint), advert.node)
        pipe.execute()

    def live_nodes(self, model: str, fingerprint: str) -> list[str]:
        now = self.now()
        found = self.redis.zrangebyscore(keys.build_nodes_key(model, fingerprint), now, "+inf")
        return [as_text(node) for node in found]

    def live_builds(self, model: str) -> list[BuildAdvert]:
        """Builds of a model with at least one live node, newest first (one round trip)."""
        script_keys, args = live_builds_call(model)
        # EVAL_RO: a user with read-only access to the fleet's keys (a producer) may run it.
        reply = self.redis.eval_ro(load_lua("live_builds"), len(script_keys), *script_keys, *args)
        return parse_live_builds(model, cast(list[object], reply))


def live_builds_call(model: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of live_builds.lua (sync and asyncio clients run the same script)."""
    return [keys.builds_key(model)], [keys.build_key(model, ""), keys.node_key("")]


def parse_live_builds(model: str, reply: list[object]) -> list[BuildAdvert]:
    fields = [as_text(value) for value in reply]
    rows = zip(*[iter(fields)] * LIVE_BUILD_FIELDS, strict=True)
    return [
        BuildAdvert(
            model, fp, artifact, int(dims), float(since), int(nodes), int(processes), name, int(tokens)
        )
        for fp, artifact, dims, since, nodes, processes, name, tokens in rows
    ]
