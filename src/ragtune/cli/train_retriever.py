"""`ragtune train retriever` and `ragtune train reranker`: parse, call the trainer, print the before/after table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ragtune.cli.common import console, shown
from ragtune.cli.common import fail as _fail
from ragtune.cli.common import out as out_console
from ragtune.cli.options import workspace_option

METHODS = ("lsr", "contrastive", "unsupervised", "gpl")


def _errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from ragtune.models import ModelNotFoundError

    return (FileNotFoundError, ValueError, ValidationError, ModelNotFoundError)


def _message(exc: BaseException) -> str:
    errors: Any = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return f"--{'-'.join(str(x) for x in first.get('loc', ())).replace('_', '-')}: {first.get('msg')}"
        except (IndexError, TypeError, AttributeError):
            pass
    return str(exc)


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set: the rest keep the config's defaults (one place for the recipe)."""
    return {k: v for k, v in options.items() if v is not None}


def _report(result: Any, title: str) -> None:
    console.print(
        f"[green]{title}[/] {result.examples} training rows, {result.steps} steps, train {result.train_seconds:.1f}s "
        f"(+{result.prepare_seconds:.1f}s preparing), peak RSS {result.peak_rss_mb:.0f} MB -> {result.out}"
    )
    if result.counts:
        console.print("counts: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()))
    if result.before and result.after:
        table = Table(title=f"held-out questions ({int(result.before.get('n', 0))}), dense retrieval")
        for col in ("metric", "before", "after", "change"):
            table.add_column(col)
        for key, before in result.before.items():
            if key in ("n", "seconds"):
                continue
            after = result.after.get(key, 0.0)
            change = f"{(after - before) / before:+.1%}" if before else "n/a"
            table.add_row(key, f"{before:.3f}", f"{after:.3f}", change)
        out_console.print(table)
    elif not result.extra.get("eval_questions"):
        console.print("[dim]no held-out (eval-split) questions given: pass --eval-data to see before / after[/]")


def retriever_cmd(
    workspace: Path = workspace_option(..., help="Workspace whose index the retriever serves.", envvar=None),
    method: str = typer.Option("lsr", "--method", "-m", help="lsr: RA-DIT LM-supervised retrieval, trains a query "
                               "tower, index untouched | contrastive: in-batch (+ mined hard) negatives; see --tower "
                               "| unsupervised: pairs from the corpus alone (see --pairs), no --data needed | gpl: "
                               "MarginMSE on a cross-encoder's margins (--cross-encoder), index re-embedded."),
    data: Path = typer.Option(None, "--data", help="RAFT file (synth/raft.jsonl: questions with answers) or pairs "
                              "file (synth/pairs.jsonl). Only its train-split questions are used (unsupervised: "
                              "only its eval-split questions, to score before / after)."),
    lm: str = typer.Option(None, "--lm", help="LSR: the LM that scores chunks (default: bundled SmolLM2)."),
    lm_adapter: str = typer.Option(None, "--lm-adapter", help="LSR: a LoRA adapter on --lm (ws/train/NAME/adapter "
                                   "from `train generator`): the tuned generator teaches the retriever (RA-DIT's "
                                   "dual loop)."),
    gold_weight: float = typer.Option(None, "--gold-weight", help="LSR: loss = (1 - W) KL + W gold-label InfoNCE "
                                      "over the whole index (default 0: LSR alone)."),
    cross_encoder: str = typer.Option(None, "--cross-encoder", help="gpl (required): the teacher, a folder from "
                                      "`ragtune train reranker` or a hub id any CrossEncoder loads."),
    pairs: str = typer.Option(None, "--pairs", help="unsupervised: ict (a sentence vs the rest of its chunk), crop "
                              "(two random spans of a chunk) or both, comma-separated (default ict,crop)."),
    max_pairs: int = typer.Option(None, "--max-pairs", help="unsupervised: at most this many pairs (default 2000)."),
    target: str = typer.Option(None, "--target", help="unsupervised: pair (each pseudo-query's own passage, InfoNCE; "
                               "the default) | hybrid (the hybrid first stage's ranking of it, KL; query tower only)."),
    top_k: int = typer.Option(10, "--top-k", help="LSR: retrieved chunks per question that the LM scores."),
    tau: float = typer.Option(0.01, "--tau", help="LSR: temperature of p_LSR (RA-DIT: 0.01)."),
    temperature: float = typer.Option(0.05, "--temperature", help="LSR: temperature of the retriever's p_R."),
    tower: str = typer.Option(None, "--tower", help="contrastive / unsupervised: query (query encoder only, every "
                              "indexed chunk a negative, index untouched; the default) | both "
                              "(MultipleNegativesRankingLoss, both towers, index re-embedded)."),
    negatives: int = typer.Option(None, "--negatives", help="both towers: mined hard negatives per row (default: "
                                  "0 contrastive, 3 unsupervised, 3 gpl)."),
    max_seq_length: int = typer.Option(None, "--max-seq-length", help="contrastive, both towers: truncate training "
                                       "texts to this many tokens (default 128; the index still embeds whole chunks)."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the data (default 1)."),
    steps: int = typer.Option(None, "--steps", help="Train exactly this many optimiser steps (overrides --epochs)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default: the method's, see the README)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Default: the method's (16 for lsr, 32 contrastive)."),
    limit: int = typer.Option(None, "--limit", help="Train on the first N questions only."),
    reembed: bool = typer.Option(True, "--reembed/--no-reembed", help="contrastive, gpl: re-embed the index after."),
    eval_data: Path = typer.Option(None, "--eval-data", help="RAFT or pairs file whose eval-split questions score "
                                   "the retriever before and after (default: those of --data, if any)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default WORKSPACE/train/retriever-METHOD)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the retriever on workspace questions; `ragtune search --retriever OUT` then uses it.

    lsr (RA-DIT R-ft): each question's top-k chunks are scored by the LM's log-likelihood of the answer given the
    chunk (cached on disk under WORKSPACE/train/lsr-cache); the query encoder learns KL(p_R || p_LSR). The
    document vectors stay as indexed. contrastive: MultipleNegativesRankingLoss over (question, gold chunk, mined
    hard negatives), batches without duplicate chunks; the index is re-embedded with the new model (--tower query:
    the query encoder alone against the frozen index, no re-embedding). unsupervised: inverse-cloze and cropped
    pairs from the indexed chunks, hard negatives mined with the base retriever (same-document and
    too-close-to-the-positive hits filtered), then contrastive training as for --tower. gpl (GPL): negatives mined
    with the base retriever, (question, chunk) pairs scored by --cross-encoder, both towers trained with MarginMSE
    on its margins CE(q, pos) - CE(q, neg) (soft labels tolerate false negatives); the index is re-embedded.
    """
    if method not in METHODS:
        _fail(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    if data is None and method != "unsupervised":
        _fail(f"--method {method} needs --data (a RAFT or pairs file)")
    if method == "gpl" and not cross_encoder:
        _fail("--method gpl needs --cross-encoder (a folder from `ragtune train reranker`, or a hub id)")
    if data is not None and not data.is_file():
        _fail(f"--data {data} does not exist")
    if eval_data is not None and not eval_data.is_file():
        _fail(f"--eval-data {eval_data} does not exist")
    try:
        if method == "lsr":
            from ragtune.train.retriever.lsr import LSRConfig, train_lsr

            config = LSRConfig(top_k=top_k, tau=tau, temperature=temperature, lm=lm, lm_adapter=lm_adapter,
                               limit=limit, seed=seed, max_steps=steps,
                               **_given(epochs=epochs, lr=lr, batch_size=batch_size, gold_weight=gold_weight))
            result = train_lsr(workspace, data, config, out=out, eval_data=eval_data, progress=True)
        elif method == "unsupervised":
            from ragtune.train.retriever.unsupervised import UnsupervisedConfig, train_unsupervised

            kinds = [k.strip() for k in pairs.split(",") if k.strip()] if pairs else None
            uconfig = UnsupervisedConfig(seed=seed, reembed=reembed, max_steps=steps, **_given(
                pairs=kinds, max_pairs=max_pairs, tower=tower, negatives=negatives, max_seq_length=max_seq_length,
                epochs=epochs, lr=lr, batch_size=batch_size, target=target))
            result = train_unsupervised(workspace, uconfig, out=out, eval_data=eval_data or data, progress=True)
        elif method == "gpl":
            from ragtune.train.retriever.gpl import CrossEncoderLoadError, GPLConfig, train_gpl

            gconfig = GPLConfig(cross_encoder=cross_encoder, limit=limit, reembed=reembed, seed=seed, max_steps=steps,
                                **_given(negatives=negatives, max_seq_length=max_seq_length, epochs=epochs, lr=lr,
                                         batch_size=batch_size))
            try:
                result = train_gpl(workspace, data, gconfig, out=out, eval_data=eval_data, progress=True)
            except CrossEncoderLoadError as exc:
                _fail(f"--cross-encoder {shown(str(exc))}")
        else:
            from ragtune.train.retriever.contrastive import ContrastiveConfig, train_contrastive

            cconfig = ContrastiveConfig(limit=limit, reembed=reembed, seed=seed, max_steps=steps, **_given(
                tower=tower, negatives=negatives, max_seq_length=max_seq_length, epochs=epochs, lr=lr,
                batch_size=batch_size))
            result = train_contrastive(workspace, data, cconfig, out=out, eval_data=eval_data, progress=True)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: LM scores computed so far are cached; run the same command to go on.")
        raise typer.Exit(130) from None
    except _errors() as exc:
        _fail(_message(exc))
    _report(result, f"trained retriever ({method})")
    console.print(f"use it: ragtune search QUERY --workspace {workspace} --retriever {result.out}")


def reranker_cmd(
    workspace: Path = workspace_option(..., help="Workspace whose index mines the negatives.", envvar=None),
    data: Path = typer.Option(..., "--data", help="Pairs file (synth/pairs.jsonl) or RAFT file; train split used."),
    base: str = typer.Option(None, "--base", help="Initial weights: folder or hub id (default: bundled MiniLM, "
                             "with a fresh scoring head)."),
    loss: str = typer.Option(None, "--loss", help="listwise (default): softmax over (gold chunk, first-stage hard "
                             "negatives, one in-batch negative) | bce: pointwise binary cross-entropy | distill: "
                             "ListNet towards gold labels mixed with an LM's p_LSR (--lsr-weight)."),
    first_stage: str = typer.Option(None, "--first-stage", help="Mine negatives from this first stage: hybrid "
                                    "(default, what search reranks) | dense."),
    lsr_lm: str = typer.Option(None, "--lsr-lm", help="distill: the LM whose chunk scores join the target."),
    lsr_adapter: str = typer.Option(None, "--lsr-adapter", help="distill: a LoRA adapter on --lsr-lm (the tuned "
                                    "generator)."),
    lsr_weight: float = typer.Option(None, "--lsr-weight", help="distill: target = (1 - W) gold + W p_LSR "
                                     "(default 0: gold labels only)."),
    gate: bool = typer.Option(False, "--gate/--no-gate", help="After training, calibrate 'rerank only when the "
                              "first stage is uncertain' (top-1 / top-2 margin) on the train questions, measure it "
                              "on the eval-split ones, and record it in OUT/reranker.json."),
    negatives: int = typer.Option(None, "--negatives", help="Hard negatives per question from the first stage's top "
                                  "--depth (default 3)."),
    depth: int = typer.Option(None, "--depth", help="Mine negatives in the first stage's top N (default 20)."),
    random_negatives: int = typer.Option(None, "--random-negatives", help="bce: random chunks per question (3)."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the data (default 1)."),
    steps: int = typer.Option(None, "--steps", help="Train exactly this many optimiser steps (overrides --epochs)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 5e-5)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Default 16."),
    limit: int = typer.Option(None, "--limit", help="Train on the first N questions only."),
    out: Path = typer.Option(None, "--out", help="Output folder (default WORKSPACE/train/reranker)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a cross-encoder reranker; `ragtune search --rerank OUT` re-scores the top candidates with it."""
    if not data.is_file():
        _fail(f"--data {data} does not exist")
    try:
        from ragtune.train.retriever.reranker import RerankerConfig, train_reranker

        config = RerankerConfig(base=base, limit=limit, seed=seed, max_steps=steps, lsr_lm=lsr_lm,
                                lsr_adapter=lsr_adapter, **_given(
            loss=loss, first_stage=first_stage, negatives=negatives, depth=depth, random_negatives=random_negatives,
            epochs=epochs, lr=lr, batch_size=batch_size, lsr_weight=lsr_weight))
        result = train_reranker(workspace, data, config, out=out, progress=True)
        report = None
        if gate:
            from ragtune.train.retriever.rerank_gate import calibrate_gate

            report = calibrate_gate(workspace, result.out, data, mode=config.first_stage, limit=limit)
    except _errors() as exc:
        _fail(_message(exc))
    _report(result, "trained reranker")
    if report is not None:
        table = Table(title=f"rerank gate ({report.mode}: rerank when top-1 - top-2 < {report.threshold:.4g}), "
                            f"nDCG@{report.k}")
        for col in ("questions", "n", "first stage", "always rerank", "gated", "reranked share"):
            table.add_column(col)
        for name, row in (("train", report.train), ("held-out", report.held_out)):
            if row.get("n"):
                table.add_row(name, f"{row['n']:.0f}", f"{row['first_stage']:.3f}", f"{row['always']:.3f}",
                              f"{row['gated']:.3f}", f"{row['rerank_share']:.0%}")
        out_console.print(table)
    console.print(f"use it: ragtune search QUERY --workspace {workspace} --rerank {result.out}")


def register(train_app: typer.Typer) -> None:
    train_app.command("retriever")(retriever_cmd)
    train_app.command("reranker")(reranker_cmd)
