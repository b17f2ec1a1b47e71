"""Settings of the server and the wire format of OpenAI's embeddings API (plus two extension fields)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class ServeSettings(BaseModel):
    """Every limit of `poolattn serve`; the CLI options map one to one onto these fields."""
    model_config = ConfigDict(extra="forbid")
    model_name: str = Field("poolattn", description="the name clients pass as `model`")
    api_key: str | None = Field(None, description="require `Authorization: Bearer <key>` on /v1/* when set")
    max_inputs: PositiveInt = Field(2048, description="inputs per request")
    max_input_tokens: PositiveInt | None = Field(None, description="tokens per input, instruction and EOS "
                                                 "included (default: the model's max_length)")
    truncate: bool = Field(False, description="cut over-long inputs instead of rejecting them (a request's "
                                              "`truncate` field overrides)")
    max_body_bytes: PositiveInt = Field(16 * 2**20, description="request body size")
    batch_tokens: PositiveInt | None = Field(None, description="padded tokens per encoded batch (default: 4096 on "
                                             "a CPU, 16384 on a GPU)")
    max_batch_size: PositiveInt | None = Field(None, description="inputs per encoded batch (default: 32 on a CPU, "
                                               "where larger batches run slower per text, 256 on a GPU)")
    max_queue: PositiveInt = Field(8192, description="inputs waiting or being encoded; more gets 429")
    batch_wait_ms: float = Field(0.0, ge=0, description="how long the worker waits for a batch to fill")
    gil_switch_ms: float | None = Field(0.5, gt=0, description="Python's GIL switch interval while serving (CPython's "
                                        "default 5 ms lets the event loop stall the inference thread); None: keep")
    instruction: str | None = Field(None, description="instruction for requests that do not send one "
                                                      "(default: none, as for documents)")
    graceful_shutdown_s: float = Field(30.0, gt=0, description="on SIGTERM, how long requests in flight may take")

    def batch_limits(self, device_type: str) -> tuple[int, int]:
        """(batch_tokens, max_batch_size) for the device the model runs on. On a CPU a batch of 256 mixed-length
        texts encoded fewer texts per second than batches of 32 (benchmarks/serve.py at 50 clients: 19.4 texts/s
        at 256, while infinity, which batches 32, reached 29.8): activations outgrow the caches."""
        cpu = device_type == "cpu"
        return (self.batch_tokens or (4096 if cpu else 16384), self.max_batch_size or (32 if cpu else 256))

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServeSettings:
        if self.max_queue < self.max_inputs:
            raise ValueError(f"max_queue={self.max_queue} is smaller than max_inputs={self.max_inputs}: a full "
                             "request could never be queued")
        return self


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a text, a list of texts, or token ids (tokenizer(text)['input_ids']; EOS is appended)")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="keep the first N components and renormalise: a width the "
                                   "model was Matryoshka-trained at (GET /v1/models: matryoshka_dimensions), else a "
                                   "plain truncation (response header x-poolattn-dimensions: untrained)")
    user: str | None = None
    instruction: str | None = Field(None, description="extension: the task instruction for these inputs "
                                                      "(\"\" for none); default: the server's")
    truncate: bool | None = Field(None, description="extension: cut over-long inputs instead of a 400")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "poolattn"
    dimensions: int | None = Field(None, description="extension: the model's full embedding width")
    matryoshka_dimensions: list[int] | None = Field(
        None, description="extension: the widths the model was Matryoshka-trained to be truncated to, the full width "
        "last (vLLM's config key); None: only the full width was trained, a shorter `dimensions` is a plain truncation")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
