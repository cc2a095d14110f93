"""Retriever training: RA-DIT's LM-supervised retrieval (a query tower), contrastive fine-tuning, a reranker.

Built on sentence-transformers' trainers: each method is a dataset plus a loss (`losses.LSRLoss`,
MultipleNegativesRankingLoss, BinaryCrossEntropyLoss). What search needs to use the results lives in
`ragtune.index.retriever` and `ragtune.index.rerank`, which only read the saved folders.
"""
