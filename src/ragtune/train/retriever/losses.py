"""The LM-supervised retrieval loss of RA-DIT (R-ft) as a sentence-transformers loss: an nn.Module over features.

For a question x with top-k retrieved chunks c_1..c_k:
    p_R(c|x)     = softmax_k( E_q(x) . E_d(c) / temperature )     the retriever's distribution
    p_LSR(c|x,y) = softmax_k( log p_LM(y | c o x) / tau )          which chunks help the LM produce the answer
    loss         = KL( p_R || p_LSR )
Only the query encoder runs here: the document vectors are the index's own (the frozen document tower), looked up by
row, so a training step costs one short query forward pass and the index never has to be rebuilt.

With `gold_weight` w > 0 the loss is (1 - w) KL + w InfoNCE(gold chunks vs the whole index): the LM says which of the
retrieved chunks help, the gold labels pin down the chunk the question was written about even when the first stage
missed it (LSR alone can only reorder what was retrieved).
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
    a list-valued `label` column. With `gold_weight` > 0 it is (batch, 4, width >= k): rows 0-1 as before in the
    first k columns (every question has exactly k candidates), rows 2-3 the gold rows and the rows never to count as
    negatives, as `frozen_index_nce` reads them (padded with -1); `doc_vectors` is then the whole index.
    """

    def __init__(self, model: nn.Module, doc_vectors: Tensor, tau: float = 0.01, temperature: float = 0.05,
                 gold_weight: float = 0.0, scale: float = 20.0):
        super().__init__()
        if tau <= 0 or temperature <= 0 or scale <= 0:
            raise ValueError("tau, temperature and scale must be > 0")
        if not 0.0 <= gold_weight <= 1.0:
            raise ValueError("gold_weight must be in [0, 1]")
        self.model = model
        self.register_buffer("doc_vectors", F.normalize(doc_vectors.float(), dim=-1), persistent=False)
        self.tau = tau
        self.temperature = temperature
        self.gold_weight = gold_weight
        self.scale = scale

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        query = F.normalize(self.model(features[0])["sentence_embedding"], dim=-1)
        labels = labels.to(query.device)
        buffer: Tensor = self.doc_vectors  # type: ignore[assignment]  # a registered buffer
        doc_vectors = buffer.to(query.device)
        k = int((labels[0, 0] >= 0).sum()) if labels.shape[1] == 4 else labels.shape[2]
        rows = labels[:, 0, :k].round().long()
        similarity = torch.einsum("bd,bkd->bk", query, doc_vectors[rows])  # (batch, k)
        kl = lsr_kl(similarity, labels[:, 1, :k], self.tau, self.temperature)
        if self.gold_weight == 0.0:
            return kl
        if labels.shape[1] != 4:
            raise ValueError("gold_weight > 0 needs labels with gold rows: shape (batch, 4, width)")
        gold = frozen_index_nce(self.scale * query @ doc_vectors.T, labels[:, 2:4, :])
        return (1.0 - self.gold_weight) * kl + self.gold_weight * gold

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
