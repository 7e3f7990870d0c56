"""Content addresses: one digest per (model fingerprint, text), so a text is embedded once."""

from __future__ import annotations

import hashlib

DIGEST_BYTES = 20


def digest_for(fingerprint: str, text: str) -> str:
    """Hex digest of a text under a model fingerprint (which covers pooling, normalisation, length)."""
    hasher = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"embedfleet-v1")
    hasher.update(fingerprint.encode())
    hasher.update(b"\0")
    hasher.update(text.encode("utf-8"))
    return hasher.hexdigest()
