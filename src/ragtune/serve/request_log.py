"""One JSON line per request in WORKSPACE/serve/requests.jsonl: who, what, how long, what status.

With `redact_pii` the logged question has e-mail addresses, card / phone numbers and the like replaced
(`guardrails.redact_pii`); the feedback database keeps the text as given, since it is training data the operator owns.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ragtune.serve.guardrails import redact_pii


class RequestLog:
    def __init__(self, path: Path | None, redact: bool = False, max_text: int = 500):
        self.path = path
        self.redact = redact
        self.max_text = max_text
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **event: Any) -> None:
        if self.path is None:
            return
        text = event.get("query")
        if isinstance(text, str):
            text = text[: self.max_text]
            event["query"] = redact_pii(text) if self.redact else text
        line = json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
