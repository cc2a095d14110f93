"""Moved to `ragtune.prompts` (the foundation, shared with serving and training): this re-export keeps
`ragtune.eval.runner`'s import working until it imports `ragtune.prompts` itself."""

from ragtune.prompts import PROMPT_STYLES, PromptStyle, build_messages

__all__ = ["PROMPT_STYLES", "PromptStyle", "build_messages"]
