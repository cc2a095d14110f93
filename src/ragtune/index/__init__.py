"""Embedding, the vector store, the lexical index, fusion, and search over them."""
