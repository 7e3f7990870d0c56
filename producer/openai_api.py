"""The gateway's wire shapes: OpenAI's embeddings API (request, response, error) and the jobs API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.jobs import JobRecord

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body; `truncate` is an extension (as text-embeddings-inference)."""

    model_config = ConfigDict(extra="ignore")

    input: EmbeddingInput = Field(description="a text, texts, token ids, or lists of token ids")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None
    truncate: bool = Field(True, description="false: refuse inputs longer than the model reads")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    truncated: bool = Field(False, description="extension: the input was cut at the model's token limit")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    priority: Literal["interactive", "bulk"] | None = None


class JobResponse(BaseModel):
    """A job's record as the jobs API shows it."""

    object: Literal["embedding.job"] = "embedding.job"
    id: str
    status: str
    model: str
    lane: str
    total: int
    done: int
    failed: int
    truncated: int
    created: float
    finished: float
    error: str

    @classmethod
    def of(cls, record: JobRecord) -> JobResponse:
        return cls(
            id=record.id,
            status=record.state.value,
            model=record.model,
            lane=record.lane.value,
            total=record.total,
            done=record.done,
            failed=record.failed,
            truncated=record.truncated,
            created=record.created,
            finished=record.finished,
            error=record.error,
        )
