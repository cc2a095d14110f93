"""Moved to `ragtune.splits` (the foundation): this re-export keeps `ragtune.synth.raft`'s import working until it
imports the foundation module itself; nothing else should import it."""

from ragtune.splits import Split, keep, split_of

__all__ = ["Split", "keep", "split_of"]
