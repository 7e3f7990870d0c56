"""Load on the gateway's /v1/embeddings, as many web clients would send it (locust).

    .venv/bin/python bench/locust_fleet.py --users 32 --seconds 60   # private fleet + gateway + locust
    .venv/bin/locust -f bench/locustfile.py --headless -u 32 -r 8 -t 60s --host http://127.0.0.1:8000
        # against a gateway you started (`python -m producer serve --port 8000`)

Each user sends 1-text requests (a search box) and now and then 16 texts (a document's chunks);
every text is new, so nothing is served from the cache. EMBED_API_KEYS, if the gateway has keys,
gives the key to send (the first one).
"""

from __future__ import annotations

import itertools
import os
import uuid

from locust import HttpUser, between, task

MODEL = os.environ.get("EMBED_MODEL_NAME", "all-MiniLM-L6-v2")
KEY = os.environ.get("EMBED_API_KEYS", "").split(",")[0].strip()
SENTENCES = (
    "How do I reset my password?",
    "The stock market fell sharply on Monday.",
    "A man is playing a guitar on the street.",
    "Quantum computers use qubits instead of bits.",
)
_counter = itertools.count()
_tag = uuid.uuid4().hex[:6]


def fresh(count: int) -> list[str]:
    return [f"{SENTENCES[n % len(SENTENCES)]} ({_tag}.{n})" for n in (next(_counter) for _ in range(count))]


class WebApp(HttpUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        if KEY:
            self.client.headers["Authorization"] = f"Bearer {KEY}"

    @task(10)
    def one_text(self) -> None:
        self.client.post("/v1/embeddings", json={"model": MODEL, "input": fresh(1)[0]}, name="1 text")

    @task(1)
    def sixteen_texts(self) -> None:
        self.client.post("/v1/embeddings", json={"model": MODEL, "input": fresh(16)}, name="16 texts")
