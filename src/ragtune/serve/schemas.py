"""Typed requests and responses of the RAG server, and its OpenAI-style error.

The chat request is OpenAI's; unknown OpenAI parameters (logprobs, penalties, ...) are accepted and ignored so
existing client code runs unchanged. ragtune's own options travel in one `ragtune` object (the `extra_body` of the
official client) and are strict: a typo is an error, not a silent default. None of them can name a tenant: the tenant
always comes from the API key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragtune.config import SearchMode


class APIError(Exception):
    """An error the client can act on, rendered as OpenAI's `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message as plain text; text parts of a multi-part content are joined, other parts refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"content parts of type {part.get('type')!r} are not supported (text only)",
                               param="messages")
            parts.append(str(part.get("text", "")))
        return "\n".join(parts)


class RagOptions(BaseModel):
    """Per-request retrieval options (`extra_body={"ragtune": {...}}` in the openai client)."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(None, ge=0, description="chunks given to the model (0: no retrieval)")
    mode: SearchMode | None = None
    filters: dict[str, str] = Field(default_factory=dict, description="metadata filters; can only narrow")
    cache: bool = True


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    user: str | None = None
    ragtune: RagOptions = Field(default_factory=RagOptions)  # type: ignore[arg-type]  # mypy lacks the pydantic plugin


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1)
    k: int = Field(5, ge=1)
    mode: SearchMode | None = None
    filters: dict[str, str] = Field(default_factory=dict)


class FeedbackRequest(BaseModel):
    """Thumbs up / down and / or a corrected answer, on a served response (`response_id` = the completion's id) or
    on a question and answer given here."""

    model_config = ConfigDict(extra="forbid")

    response_id: str | None = None
    rating: Literal["up", "down"] | None = None
    correction: str | None = None
    comment: str | None = None
    relevant_chunk_ids: list[str] = Field(default_factory=list)
    irrelevant_chunk_ids: list[str] = Field(default_factory=list)
    question: str | None = None
    answer: str | None = None


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "edit", "reject"]
    edits: dict[str, str] = Field(default_factory=dict)


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
