"""A deterministic, rule-based stand-in teacher for tests and benchmarks of the synthesis *machinery*.

It answers ragtune's own teacher prompts without a neural model: questions are built from the chunk's sentences, and
answers quote the sentence that best matches the question; the few-shot (question, answer) prompt of
`teacher_prompts.py` gets a question about its focus sentence and that sentence's last words as the answer. A share
of first attempts deliberately paraphrases the quote, so retries and drops are exercised. It says nothing about data
quality; it makes resume, concurrency and fault tests fast and exact. Serve it over HTTP with `python -m
ragtune.synth.fake_teacher --port 8011`.
"""

from __future__ import annotations

import argparse
import re
import threading
import time

from ragtune.hashing import short_id
from ragtune.llm.base import LLM, Generation, GenerationConfig, Message
from ragtune.synth.validate import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE

_SENT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z0-9]+")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if len(s.split()) >= 6]


class FakeTeacher(LLM):
    """`latency_s` is slept once per `generate` call plus `per_item_s` per conversation (a batched server's cost)."""

    def __init__(self, latency_s: float = 0.0, per_item_s: float = 0.0, bad_share: int = 4, name: str = "fake"):
        self.latency_s = latency_s
        self.per_item_s = per_item_s
        self.bad_share = bad_share  # 1 in bad_share first answers misquotes
        self.name = name
        self.calls = 0
        self._lock = threading.Lock()

    def _questions(self, text: str, n: int) -> str:
        out = []
        for s in _sentences(text)[:n]:
            words = s.split()
            out.append(f"What does the text say about {' '.join(words[:4]).rstrip('.,;:')}?")
        return "\n".join(f"{i}. {q}" for i, q in enumerate(out, start=1))

    def _qa(self, request: str) -> str:
        """The few-shot prompt: "Text: ...\nSentence: S\nWrite one question ..." -> a question about S, its answer."""
        sentence = request.split("\nSentence: ", 1)[1].split("\nWrite one question", 1)[0]
        words = sentence.rstrip(".").split()
        question = f"What does the text say about {' '.join(words[:4]).rstrip('.,;:')}?"
        return f"Question: {question}\nAnswer: {' '.join(words[-3:])}"

    def _answer(self, prompt: str, question: str, retry: bool) -> str:
        docs = re.findall(r"<DOCUMENT>(.*?)</DOCUMENT>", prompt, re.DOTALL)
        if not docs:  # raft.py's prompt: "Question: ...\nContext: ...\n Answer this question ..."
            m = re.search(r"Context: (.*?)\n\s*Answer this question", prompt, re.DOTALL)
            docs = [m.group(1)] if m else []
        q_words = {w.lower() for w in _WORD.findall(question)} - {"what", "does", "the", "text", "say", "about"}
        best, best_score = "", -1
        for doc in docs:
            for s in _sentences(doc) or [doc.strip()]:
                score = len(q_words & {w.lower() for w in _WORD.findall(s)})
                if score > best_score:
                    best, best_score = s, score
        if not best:
            return "I do not know."
        words = best.rstrip(".").split()
        answer = " ".join(words[-3:])
        quote = best
        if not retry and int(short_id("bad", question), 16) % self.bad_share == 0:
            quote = best.upper()  # a paraphrased quote: validation must catch it, the retry fixes it
        return f"The document says {BEGIN_QUOTE}{quote}{END_QUOTE} So the answer is {answer}.\n{ANSWER_TAG} {answer}"

    def _one(self, messages: list[Message]) -> str:
        users = [m["content"] for m in messages if m["role"] == "user"]
        last = users[-1] if users else ""
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        asked = re.search(r"generate (\d+) example questions", system)
        if asked:  # raft.py's question prompt: the chunk is the whole user message
            return self._questions(last, int(asked.group(1)))
        if last.startswith("Text:") and "\nSentence: " in last:
            return self._qa(last)
        retry = last.startswith("That answer is not valid") or last.startswith("Write ")
        source = next((u for u in reversed(users) if "<DOCUMENT>" in u or u.startswith("Text:")), last)
        if source.startswith("Text:"):
            m = re.search(r"Write (\d+) different questions", source)
            text = source.split("\n", 1)[1].rsplit("\n\nWrite ", 1)[0]
            return self._questions(text, int(m.group(1)) if m else 3)
        q = re.search(r"Question: (.*)", source)
        return self._answer(source, q.group(1).strip() if q else "", retry)

    def generate(
        self, conversations: list[list[Message]], config: GenerationConfig | None = None, batch_size: int = 8
    ) -> list[Generation]:
        with self._lock:
            self.calls += 1
        time.sleep(self.latency_s + self.per_item_s * len(conversations))
        out = []
        for conv in conversations:
            text = self._one(conv)
            gen = Generation(
                text=text,
                prompt_tokens=sum(len(m["content"].split()) for m in conv),
                completion_tokens=len(text.split()),
                finish_reason="stop",
            )
            self.usage.add(gen)
            out.append(gen)
        return out

    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8) -> list[float]:
        return [-float(len(c.split())) for _, c in requests]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the rule-based fake teacher over the OpenAI chat API.")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sleep per batch")
    parser.add_argument("--per-item-ms", type=float, default=0.0, help="sleep per conversation in a batch")
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args(argv)
    import uvicorn

    from ragtune.llm.server import create_app

    teacher = FakeTeacher(args.latency_ms / 1000, args.per_item_ms / 1000)
    uvicorn.run(
        create_app(teacher, "fake", max_batch=args.max_batch), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
