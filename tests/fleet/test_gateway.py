"""The HTTP gateway (`python -m producer serve`) against the real fleet: OpenAI's client unchanged,
errors in OpenAI's shape, API keys, size limits, the jobs API, health, readiness and metrics."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from localfleet.fleet import LocalFleet
from localfleet.redis_server import free_port
from tests.conftest import ROOT
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts
from worker.engine import EmbeddingEngine

pytestmark = pytest.mark.fleet

API_KEY = "test-key-1"
BODY_LIMIT = 256 * 1024
MODEL = "all-MiniLM-L6-v2"


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = API_KEY, accept: str = ""
    ) -> tuple[int, bytes, dict[str, str]]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if accept:
            headers["Accept"] = accept
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=JOB_TIMEOUT_S) as reply:
                return reply.status, reply.read(), dict(reply.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)


def start_gateway(fleet: LocalFleet, log: Path, **env: str) -> Gateway:
    port = free_port()
    command = [sys.executable, "-m", "producer", "serve", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **fleet.env, **env}, stdout=sink, stderr=sink
        )
    gateway = Gateway(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if gateway.request("GET", "/healthz", key=None)[0] == 200:
                return gateway
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"gateway did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def gateway(fleet: LocalFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = start_gateway(
        fleet,
        tmp_path_factory.mktemp("gateway") / "gateway.log",
        EMBED_API_KEYS=f"other-key,{API_KEY}",
        EMBED_MAX_REQUEST_BYTES=str(BODY_LIMIT),
    )
    yield server
    server.process.terminate()
    server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def engine(static_artifact: Path) -> EmbeddingEngine:
    from contract.settings import FleetSettings

    return EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1))


def openai_client(gateway: Gateway, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def test_the_openai_client_gets_the_engines_vectors(gateway: Gateway, engine: EmbeddingEngine) -> None:
    texts = unique_texts(5)
    expected = engine.embed(texts).vectors
    client = openai_client(gateway)
    implicit = client.embeddings.create(model=MODEL, input=texts)  # the client asks for base64 and decodes it
    floats = client.embeddings.create(
        model=f"sentence-transformers/{MODEL}", input=texts, encoding_format="float"
    )
    for reply in (implicit, floats):
        vectors = np.array([item.embedding for item in sorted(reply.data, key=lambda item: item.index)])
        assert vectors.shape == (5, 384) and float(np.min(np.sum(vectors * expected, axis=1))) >= 0.9999
    tokens = [len(encoding.ids) for encoding in engine.tokenizer.encode(texts)[0]]
    assert floats.usage.prompt_tokens == sum(tokens)


def test_base64_is_little_endian_float32(gateway: Gateway, engine: EmbeddingEngine) -> None:
    text = unique_texts(1)[0]
    status, body, _ = gateway.request(
        "POST", "/v1/embeddings", {"model": MODEL, "input": text, "encoding_format": "base64"}
    )
    vector = np.frombuffer(base64.b64decode(json.loads(body)["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and float(np.dot(vector, engine.embed([text]).vectors[0])) >= 0.9999


def test_token_ids_are_read_with_the_models_tokenizer(gateway: Gateway, engine: EmbeddingEngine) -> None:
    text = "token ids are decoded " + unique_texts(1)[0]
    ids = engine.tokenizer.encode([text])[0][0].ids
    client = openai_client(gateway)
    by_ids = client.embeddings.create(model=MODEL, input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model=MODEL, input=text, encoding_format="float")
    assert float(np.dot(by_ids.data[0].embedding, by_text.data[0].embedding)) >= 0.999


def test_long_inputs_are_flagged_or_refused(gateway: Gateway) -> None:
    long_text = " ".join(f"word{i}" for i in range(600))
    status, body, _ = gateway.request(
        "POST", "/v1/embeddings", {"model": MODEL, "input": ["short", long_text]}
    )
    flags = [item["truncated"] for item in json.loads(body)["data"]]
    assert status == 200 and flags == [False, True]
    status, body, _ = gateway.request(
        "POST", "/v1/embeddings", {"model": MODEL, "input": ["short", long_text], "truncate": False}
    )
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "context_length_exceeded"
    assert error["message"].startswith("inputs 1 are longer than the 256 tokens")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "gpt-x", "input": "a"}, 404, "does not exist"),
        ({"model": MODEL, "input": "a", "dimensions": 64}, 400, "dimensions"),
        ({"model": MODEL, "input": []}, 400, "must not be empty"),
        ({"model": MODEL, "input": [1.5]}, 400, "input"),
        ({"input": "a"}, 400, "model"),
    ],
)
def test_errors_come_in_openais_shape(
    gateway: Gateway, body: dict[str, Any], status: int, words: str
) -> None:
    got, reply, _ = gateway.request("POST", "/v1/embeddings", body)
    error = json.loads(reply)["error"]
    assert got == status and words in error["message"] and error["type"]


def test_api_keys_and_open_probes(gateway: Gateway) -> None:
    body = {"model": MODEL, "input": "x"}
    assert gateway.request("POST", "/v1/embeddings", body, key=None)[0] == 401
    assert gateway.request("POST", "/v1/embeddings", body, key="wrong")[0] == 401
    assert gateway.request("POST", "/v1/embeddings", body, key="other-key")[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai_client(gateway, key="wrong").embeddings.create(model=MODEL, input="x")
    assert gateway.request("GET", "/healthz", key=None)[0] == 200
    assert gateway.request("GET", "/readyz", key=None)[0] == 200


def test_an_oversized_request_is_refused(gateway: Gateway) -> None:
    status, body, _ = gateway.request("POST", "/v1/embeddings", {"model": MODEL, "input": ["x" * 1000] * 300})
    assert status == 413 and "EMBED_MAX_REQUEST_BYTES" in json.loads(body)["error"]["message"]


def test_a_large_input_list_is_split_server_side(gateway: Gateway) -> None:
    texts = unique_texts(1_500)
    status, body, _ = gateway.request(
        "POST", "/v1/embeddings", {"model": MODEL, "input": texts, "encoding_format": "base64"}
    )
    assert status == 200 and len(json.loads(body)["data"]) == 1_500


def test_the_jobs_api(gateway: Gateway) -> None:
    texts = unique_texts(2_000)
    status, body, headers = gateway.request("POST", "/v1/jobs", {"input": texts, "model": MODEL})
    job = json.loads(body)
    assert status == 202 and headers["location"] == f"/v1/jobs/{job['id']}" and job["total"] == 2_000
    events = _events(gateway, job["id"])
    assert events[-1][0] == "done" and events[-1][1]["done"] == 2_000
    status, npy, _ = gateway.request("GET", f"/v1/jobs/{job['id']}/result", accept="application/x-npy")
    assert status == 200 and np.load(io.BytesIO(npy)).shape == (2_000, 384)
    status, body, _ = gateway.request("GET", f"/v1/jobs/{job['id']}/result")
    assert status == 200 and len(json.loads(body)["data"]) == 2_000
    running = json.loads(gateway.request("POST", "/v1/jobs", {"input": unique_texts(3_000)})[1])
    assert gateway.request("GET", f"/v1/jobs/{running['id']}/result")[0] == 409
    status, body, _ = gateway.request("DELETE", f"/v1/jobs/{running['id']}")
    assert status == 200 and json.loads(body)["status"] == "cancelled"
    assert gateway.request("GET", "/v1/jobs/no-such-job")[0] == 404


def test_metrics_move_during_a_job(gateway: Gateway) -> None:
    depths: list[float] = []
    job = json.loads(
        gateway.request("POST", "/v1/jobs", {"input": unique_texts(2_500), "priority": "bulk"})[1]
    )
    while json.loads(gateway.request("GET", f"/v1/jobs/{job['id']}")[1])["status"] == "queued":
        text = gateway.request("GET", "/metrics", key=None)[1].decode()
        depths.append(_sample(text, 'embedfleet_queue_depth{build="', 'lane="bulk"'))
        time.sleep(0.2)
    text = gateway.request("GET", "/metrics", key=None)[1].decode()
    assert max(depths) > 0 and _sample(text, 'embedfleet_queue_depth{build="', 'lane="bulk"') == 0
    assert (
        "embedfleet_cache_lookups_total" in text
        and 'embedfleet_gateway_request_seconds_count{route="/v1/jobs"' in text
    )


def _sample(text: str, prefix: str, label: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix) and label in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def _events(gateway: Gateway, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    request = urllib.request.Request(
        f"{gateway.url}/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    events: list[tuple[str, dict[str, Any]]] = []
    with urllib.request.urlopen(request, timeout=JOB_TIMEOUT_S) as stream:
        name = ""
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_concurrent_requests(gateway: Gateway) -> None:
    results: list[int] = []

    def call() -> None:
        results.append(
            gateway.request("POST", "/v1/embeddings", {"model": MODEL, "input": unique_texts(2)})[0]
        )

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 16
