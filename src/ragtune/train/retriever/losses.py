"""The LM-supervised retrieval loss of RA-DIT (R-ft) as a sentence-transformers loss: an nn.Module over features.

For a question x with top-k retrieved chunks c_1..c_k:
    p_R(c|x)     = softmax_k( E_q(x) . E_d(c) / temperature )     the retriever's distribution
    p_LSR(c|x,y) = softmax_k( log p_LM(y | c o x) / tau )          which chunks help the LM produce the answer
    loss         = KL( p_R || p_LSR )
Only the query encoder runs here: the document vectors are the index's own (the frozen document tower), looked up by
row, so a training step costs one short query forward pass and the index never has to be rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LSRLoss(nn.Module):
    """KL(p_R || p_LSR) from log-probabilities (numerically safe with tau = 0.01, where p_LSR underflows).

    `labels` has shape (batch, 2, k): row 0 holds the candidates' row indices into `doc_vectors` (as floats, exact
    below 2**24), row 1 their LM scores log p_LM(y | c o x). sentence-transformers' collator builds that tensor from
    a list-valued `label` column.
    """

    def __init__(self, model: nn.Module, doc_vectors: Tensor, tau: float = 0.01, temperature: float = 0.05):
        super().__init__()
        if tau <= 0 or temperature <= 0:
            raise ValueError("tau and temperature must be > 0")
        self.model = model
        self.register_buffer("doc_vectors", F.normalize(doc_vectors.float(), dim=-1), persistent=False)
        self.tau = tau
        self.temperature = temperature

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        query = F.normalize(self.model(features[0])["sentence_embedding"], dim=-1)
        rows = labels[:, 0, :].round().long()
        doc_vectors: Tensor = self.doc_vectors  # type: ignore[assignment]  # a registered buffer
        docs = doc_vectors.to(query.device)[rows]  # (batch, k, dim)
        similarity = torch.einsum("bd,bkd->bk", query, docs)
        return lsr_kl(similarity, labels[:, 1, :].to(query.device), self.tau, self.temperature)

    @property
    def citation(self) -> str:
        return "Lin et al. 2023, RA-DIT: Retrieval-Augmented Dual Instruction Tuning (arXiv:2310.01352)"


def lsr_kl(similarity: Tensor, lm_scores: Tensor, tau: float = 0.01, temperature: float = 0.05) -> Tensor:
    """Mean over the batch of KL(p_R || p_LSR). `F.kl_div(input, target)` is KL(target || input), so the retriever's
    log-distribution is the target and the LM's the input; both are passed as log-probabilities."""
    log_p_r = F.log_softmax(similarity / temperature, dim=-1)
    log_p_lsr = F.log_softmax(lm_scores.float() / tau, dim=-1)
    return F.kl_div(log_p_lsr, log_p_r, reduction="batchmean", log_target=True)


class FrozenIndexContrastiveLoss(nn.Module):
    """InfoNCE of the query encoder against the index's own (frozen) document vectors: every chunk is a negative.

    Contrastive training with the document tower frozen (the query side of a dual encoder, like LSR): each question's
    softmax runs over the whole index, so it sees every hard negative the index holds (not only a batch's) for the
    cost of one short query forward pass, and the index is not re-embedded afterwards. With several positives (both
    gold paragraphs of a multi-hop question) each positive is one term, its fellow positives masked out.

    `labels` has shape (batch, 2, m): row 0 the positives' row indices into `doc_vectors`, row 1 rows that must not
    count as negatives (likely unlabelled positives); both as floats (exact below 2**24), padded with -1.
    """

    def __init__(self, model: nn.Module, doc_vectors: Tensor, scale: float = 20.0):
        super().__init__()
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.model = model
        self.register_buffer("doc_vectors", F.normalize(doc_vectors.float(), dim=-1), persistent=False)
        self.scale = scale

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        query = F.normalize(self.model(features[0])["sentence_embedding"], dim=-1)
        doc_vectors: Tensor = self.doc_vectors  # type: ignore[assignment]  # a registered buffer
        logits = self.scale * query @ doc_vectors.to(query.device).T  # (batch, n_docs)
        return frozen_index_nce(logits, labels.to(query.device))

    @property
    def citation(self) -> str:
        return "van den Oord et al. 2018 (InfoNCE); Karpukhin et al. 2020 (DPR)"


def frozen_index_nce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over (question, positive) pairs of -log softmax(positive) over the positive and every non-gold row."""
    positives = labels[:, 0, :].round().long()  # (batch, p)
    masked = labels[:, 1, :].round().long()
    exclude = torch.zeros_like(logits, dtype=torch.bool)
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    for index in (positives, masked):
        valid = index >= 0
        exclude[rows.expand_as(index)[valid], index[valid]] = True
    base = logits.masked_fill(exclude, float("-inf"))  # (batch, n_docs): negatives only
    valid = positives >= 0
    pos_logits = logits.gather(1, positives.clamp(min=0))  # (batch, p)
    # log-sum-exp over {this positive} ∪ negatives, per positive
    neg_lse = torch.logsumexp(base, dim=-1, keepdim=True).expand_as(pos_logits)
    denom = torch.logaddexp(neg_lse, pos_logits)
    loss = (denom - pos_logits)[valid]
    return loss.mean()
