"""ragtune: fine-tune both halves of a RAG system on your own documents, and prove it helps."""

from ragtune.records import Chunk, Document, Hit

__version__ = "0.1.0"
__all__ = ["Chunk", "Document", "Hit", "__version__"]
