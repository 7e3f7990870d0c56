"""The asyncio client against the real fleet: the same results and errors as the sync client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from localfleet.fleet import LocalFleet
from producer import EmbeddingClient, InvalidTextError, JobFailedError, JobNotFoundError
from producer.async_client import AsyncEmbeddingClient
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet


def test_async_results_equal_the_sync_clients(fleet: LocalFleet, client: EmbeddingClient) -> None:
    texts = unique_texts(300) + unique_texts(3)
    expected = client.embed(texts, timeout=JOB_TIMEOUT_S)

    async def run() -> tuple[np.ndarray, np.ndarray, int]:
        async with AsyncEmbeddingClient(fleet.settings) as aclient:
            again = await aclient.embed(texts, timeout=JOB_TIMEOUT_S)  # all cache hits
            fresh_texts = unique_texts(500)
            job = await aclient.submit(fresh_texts)
            record = await job.wait(timeout=JOB_TIMEOUT_S)
            fresh = await job.result()
            return again, fresh, record.done

    again, fresh, done = asyncio.run(run())
    np.testing.assert_array_equal(again, expected)
    assert fresh.shape == (500, 384) and done == 500


def test_concurrent_requests_share_jobs_and_each_gets_its_own_rows(
    fleet: LocalFleet, client: EmbeddingClient
) -> None:
    requests = [unique_texts(2) for _ in range(40)]
    jobs: list[int] = []

    async def run() -> list[np.ndarray]:
        async with AsyncEmbeddingClient(
            fleet.settings, on_submit=lambda _, total: jobs.append(total)
        ) as aclient:
            return await asyncio.gather(*(aclient.embed(texts, timeout=JOB_TIMEOUT_S) for texts in requests))

    results = asyncio.run(run())
    assert sum(jobs) == 80 and len(jobs) < 40  # coalesced: fewer jobs than calls, every text once
    expected = client.embed([text for texts in requests for text in texts], timeout=JOB_TIMEOUT_S)
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)


def test_async_cancel_and_unknown_job(fleet: LocalFleet) -> None:
    async def run() -> None:
        async with AsyncEmbeddingClient(fleet.settings) as aclient:
            job = await aclient.submit(unique_texts(3_000), priority="bulk")
            record = await job.cancel()
            assert record.state.value == "cancelled"
            with pytest.raises(JobFailedError, match="cancelled"):
                await job.result()
            with pytest.raises(JobNotFoundError):
                await aclient.job("no-such-job")

    asyncio.run(run())


def test_async_embed_refuses_what_is_not_a_list_of_texts(fleet: LocalFleet) -> None:
    async def run() -> None:
        async with AsyncEmbeddingClient(fleet.settings) as aclient:
            for wrong in ("one string", {"a": 1}, (text for text in ["a"])):
                with pytest.raises(InvalidTextError, match="must be a list of strings"):
                    await aclient.embed(wrong)  # type: ignore[arg-type]

    asyncio.run(run())
