"""Typed requests and responses of the RAG server, and its OpenAI-style error.

The chat request is OpenAI's; unknown OpenAI parameters (logprobs, penalties, ...) are accepted and ignored so
existing client code runs unchanged. ragtune's own options travel in one `ragtune` object (the `extra_body` of the
official client) and are strict: a typo is an error, not a silent default. None of them can name a tenant: the tenant
always comes from the API key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragtune.config import SearchMode

# Fixed bounds of the wire format (the tunable ones are `guardrails.Limits`, checked by the handlers).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # OpenAI's seed is an int64; SQLite and torch refuse wider integers
MAX_ID = 128  # characters of any id
MAX_NAME = 256  # model, user, message name
MAX_TEXT = 32_000  # one free-text field
MAX_IDS = 100  # ids in one list
MAX_OFFSET = 1_000_000  # paging offset
MAX_PAGE = 200  # items per page
MAX_FILTER = 256  # characters of one filter key or value

Id = Annotated[str, Field(max_length=MAX_ID)]
FilterText = Annotated[str, Field(max_length=MAX_FILTER)]
Filters = dict[FilterText, FilterText]


def clip(text: object, n: int = 100) -> str:
    """At most `n` characters of something a client sent, for an error message: errors never echo more."""
    text = str(text)
    return text if len(text) <= n else text[:n] + "..."


class APIError(Exception):
    """An error the client can act on, rendered as OpenAI's `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": clip(self.message, 400), "type": self.type,
                          "param": None if self.param is None else clip(self.param), "code": self.code}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, max_length=MAX_NAME)

    def text(self) -> str:
        """The message as plain text; text parts of a multi-part content are joined, other parts refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"content parts of type {clip(repr(part.get('type')), 40)} are not supported "
                               "(text only)", param="messages")
            if not isinstance(part.get("text", ""), str):
                raise APIError(400, "a text part's `text` must be a string", param="messages")
            parts.append(part.get("text", ""))
        return "\n".join(parts)


class RagOptions(BaseModel):
    """Per-request retrieval options (`extra_body={"ragtune": {...}}` in the openai client)."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(None, ge=0, description="chunks given to the model (0: no retrieval)")
    mode: SearchMode | None = None
    filters: Filters = Field(default_factory=dict, description="metadata filters; can only narrow")
    cache: bool = True


class ChatRequest(BaseModel):
    """OpenAI's chat request. Counts and lengths the operator tunes (messages, parts, stops, logit_bias, max_tokens,
    k) are checked against `Limits` by `RagPipeline.prepare`; the bounds here are those of the wire format."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, max_length=MAX_NAME)
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    n: int | None = Field(None, ge=1, le=INT64_MAX)
    logit_bias: dict[str, float] | None = Field(None, description="accepted and ignored")
    user: str | None = Field(None, max_length=MAX_NAME)
    ragtune: RagOptions = Field(default_factory=RagOptions)  # type: ignore[arg-type]  # mypy lacks the pydantic plugin


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1)
    k: int = Field(5, ge=1, le=INT64_MAX)
    mode: SearchMode | None = None
    filters: Filters = Field(default_factory=dict)


class FeedbackRequest(BaseModel):
    """Thumbs up / down and / or a corrected answer, on a served response (`response_id` = the completion's id) or
    on a question and answer given here."""

    model_config = ConfigDict(extra="forbid")

    response_id: str | None = Field(None, max_length=MAX_ID)
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, max_length=MAX_TEXT)
    comment: str | None = Field(None, max_length=MAX_TEXT)
    relevant_chunk_ids: list[Id] = Field(default_factory=list, max_length=MAX_IDS)
    irrelevant_chunk_ids: list[Id] = Field(default_factory=list, max_length=MAX_IDS)
    question: str | None = Field(None, max_length=MAX_TEXT)
    answer: str | None = Field(None, max_length=MAX_TEXT)


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "edit", "reject"]
    edits: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=MAX_TEXT)]] = Field(
        default_factory=dict, max_length=8)


class Citation(BaseModel):
    """A chunk the answer was given, numbered as the model saw it."""

    index: int
    chunk_id: str
    doc_id: str
    source: str
    title: str = ""
    score: float
    snippet: str = ""


class Flagged(BaseModel):
    """A retrieved chunk that reads like instructions to the model (prompt injection)."""

    chunk_id: str
    source: str
    rule: str
    excerpt: str
    action: Literal["dropped", "kept"]
