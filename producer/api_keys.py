"""API keys for the gateway: from EMBED_API_KEYS (comma-separated) and EMBED_API_KEYS_FILE (one a line)."""

from __future__ import annotations

import hmac
from pathlib import Path

BEARER = "bearer "


def load_keys(listed: str, file: Path | None) -> list[bytes]:
    keys = [key.strip() for key in listed.split(",") if key.strip()]
    if file is not None:
        keys += [
            line.strip()
            for line in file.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return [key.encode() for key in keys]


def authorized(header: str | None, keys: list[bytes]) -> bool:
    """Constant-time comparison against every key, so timing tells nothing about any of them."""
    if not keys:
        return True
    if not header or not header.lower().startswith(BEARER):
        return False
    offered = header[len(BEARER) :].strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key)
    return matched
