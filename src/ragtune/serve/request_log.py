"""One JSON line per request in WORKSPACE/serve/requests.jsonl: who, what, how long, what status.

With `redact_pii` the logged question has e-mail addresses, card / phone numbers and the like replaced
(`guardrails.redact_pii`); the feedback database keeps the text as given, since it is training data the operator owns.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ragtune.serve.feedback import make_private
from ragtune.serve.guardrails import redact_pii


class RequestLog:
    """Appends one line per request. The file holds every tenant's questions, so it is created 0600 (an existing
    one is made 0600 when the server starts)."""

    def __init__(self, path: Path | None, redact: bool = False, max_text: int = 500):
        self.path = path
        self.redact = redact
        self.max_text = max_text
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            make_private(path)

    def write(self, **event: Any) -> None:
        if self.path is None:
            return
        text = event.get("query")
        if isinstance(text, str):
            text = text[: self.max_text]
            event["query"] = redact_pii(text) if self.redact else text
        line = json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False, default=str) + "\n"
        data = line.encode("utf-8", errors="backslashreplace")  # a lone surrogate must not lose the line
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # recreated 0600 if rotated away
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
