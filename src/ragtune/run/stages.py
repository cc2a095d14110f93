"""The stages of `ragtune run`, one function each, calling the stage's own library functions.

Every stage has two halves: `plan_STAGE(cfg)` says what its key is made of (its settings, its input files, and the
earlier stages whose outputs it reads), and `run_STAGE(cfg, ctx)` does the work and returns what it wrote. A stage
never re-implements its library: ingest calls `ragtune.index.ingest.ingest`, synth `synthesize_from_qa` /
`synthesize_raft` and `export`, train `train_sft`, retriever `train_lsr` / `train_contrastive`, and compare
`ragtune.eval.compare.compare_systems` (the function `ragtune compare` calls too, report writing included).

`ctx.resume` is true when the stage started under the same key and did not finish: the stage then continues its own
progress (synth appends, train resumes from its last checkpoint, eval keeps finished batches) instead of starting
again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.run.config import TRAINED, RunConfig
from ragtune.workspace import Workspace


class StageError(RuntimeError):
    """A stage that cannot run or failed; the message says why (the earlier stages' outputs are kept)."""


@dataclass
class Plan:
    """What a stage's key is made of."""

    settings: dict[str, Any]
    inputs: list[Path] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)


@dataclass
class Context:
    workspace: Path
    resume: bool
    say: Callable[[str], None]


@dataclass
class Outcome:
    """What a stage wrote: `outputs` keep their digest for a later skip; `present` need only exist."""

    outputs: list[Path] = field(default_factory=list)
    present: list[Path] = field(default_factory=list)
    summary: str = ""


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _data_path(cfg: RunConfig, data: Any) -> Path:
    if data.path is None:  # format raft: this run's own synthesized data
        from ragtune.train.sft import default_data_path

        return default_data_path(cfg.workspace_dir)
    path = cfg.resolve(data.path)
    if not path.exists():
        raise StageError(f"data file not found: {path}")
    return path


# ---- ingest ----------------------------------------------------------------------------------------------------------


def plan_ingest(cfg: RunConfig) -> Plan:
    paths = [cfg.resolve(p) for p in cfg.ingest.paths]
    return Plan({**_dump(cfg.ingest), "paths": [str(p) for p in paths]}, inputs=paths)


def run_ingest(cfg: RunConfig, ctx: Context) -> Outcome:
    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest
    from ragtune.index.settings import IndexMismatchError
    from ragtune.progress import Reporter

    paths = [cfg.resolve(p) for p in cfg.ingest.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise StageError(f"no such file or folder: {', '.join(missing)}")
    config = IngestConfig.model_validate(cfg.ingest.model_dump(exclude={"paths"}))
    with Reporter("embedding", unit="chunks", log_file=ctx.workspace / "ingest.log") as bar:
        try:
            s = ingest(paths, ctx.workspace, config, progress=lambda done, total: bar.update(done, total=total))
        except IndexMismatchError as exc:
            raise StageError(str(exc)) from None
    for warning in s.warnings[:5]:
        ctx.say(f"ingest: warning: {warning}")
    summary = (f"{s.files_loaded} files ({s.documents} documents): {s.new} new, {s.updated} updated, {s.unchanged} "
               f"unchanged, {s.removed} removed; {s.chunks_added} chunks added, {s.chunks_total} in the index")
    ws = Workspace(ctx.workspace)
    return Outcome(present=[ws.lancedb_dir, ws.index_settings_path], summary=summary)


# ---- search: a look at retrieval -------------------------------------------------------------------------------------


def plan_search(cfg: RunConfig) -> Plan:
    assert cfg.search is not None
    inputs = [_data_path(cfg, cfg.search.data)] if cfg.search.data else []
    return Plan(_dump(cfg.search), inputs=inputs, upstream=["ingest"])


def run_search(cfg: RunConfig, ctx: Context) -> Outcome:
    from ragtune.retrieve.search import Searcher

    section = cfg.search
    assert section is not None
    searcher = Searcher(ctx.workspace)
    for query in section.queries:
        ctx.say(f"search: {query!r}")
        for hit in searcher.search(query, k=section.k):
            text = " ".join(hit.text.split())
            ctx.say(f"  {hit.rank}. {hit.score:.4f} {hit.title}: {text[:160]}{' ...' if len(text) > 160 else ''}")
    if section.data is None:
        return Outcome(summary=f"{len(section.queries)} queries")
    from ragtune.datasets import load_dataset
    from ragtune.metrics import mrr, recall_at_k

    items = [it for it in load_dataset(section.data.format, _data_path(cfg, section.data), split="all")
             if it.gold_docs]
    if not items:
        raise StageError(f"search: no question with gold documents in {_data_path(cfg, section.data)}")
    ctx.say(f"search: gold-document retrieval on {len(items)} questions (titles of the top hits)")
    ctx.say(f"  {'mode':8} {'recall@2':>9} {'recall@5':>9} {'all-gold@10':>12} {'MRR':>7}")
    for mode in section.modes:
        r2 = r5 = all_gold = rr = 0.0
        for it in items:
            gold = {d.title for d in it.gold_docs}
            titles = [h.title for h in searcher.search(it.question, k=10, mode=mode)]
            r2 += recall_at_k(titles, gold, 2)
            r5 += recall_at_k(titles, gold, 5)
            all_gold += recall_at_k(titles, gold, 10) == 1.0
            rr += mrr(titles, gold)
        n = len(items)
        ctx.say(f"  {mode:8} {r2 / n:9.3f} {r5 / n:9.3f} {all_gold / n:12.3f} {rr / n:7.3f}")
    return Outcome(summary=f"{len(section.queries)} queries, {len(items)} questions scored")


# ---- synth -----------------------------------------------------------------------------------------------------------


def _synth_reads_index(cfg: RunConfig) -> bool:
    s = cfg.synth
    assert s is not None
    return s.method == "raft" or s.from_qa.distractor_source in ("auto", "index")


def plan_synth(cfg: RunConfig) -> Plan:
    s = cfg.synth
    assert s is not None
    inputs = [_data_path(cfg, s.data)] if s.method == "from-qa" and s.data else []
    return Plan(_dump(s), inputs=inputs, upstream=["ingest"] if _synth_reads_index(cfg) else [])


def _teacher(cfg: RunConfig) -> Any:
    from ragtune.llm import load_llm

    s = cfg.synth
    assert s is not None
    concurrency = s.raft.concurrency if s.method == "raft" else s.from_qa.concurrency
    try:
        return load_llm(s.teacher, base_url=s.base_url or os.environ.get("OPENAI_BASE_URL"),
                        api_key=os.environ.get(s.api_key_env), concurrency=concurrency, timeout=s.timeout)
    except (OSError, ValueError) as exc:
        raise StageError(f"synth: cannot load the teacher {s.teacher or '(bundled)'}: {exc}") from None


def run_synth(cfg: RunConfig, ctx: Context) -> Outcome:
    from ragtune.synth.export import ExportError, export
    from ragtune.synth.from_qa import synthesize_from_qa
    from ragtune.synth.raft import SynthConfigError, synthesize_raft

    s = cfg.synth
    assert s is not None
    overwrite = not ctx.resume
    try:
        if s.method == "from-qa":
            assert s.data is not None
            teacher = _teacher(cfg) if s.from_qa.cot == "teacher" else None
            summary = synthesize_from_qa(s.data.format, _data_path(cfg, s.data), ctx.workspace, s.from_qa,
                                         teacher=teacher, overwrite=overwrite, progress=True)
        else:
            summary = synthesize_raft(ctx.workspace, _teacher(cfg), s.raft,
                                      overwrite=overwrite, progress=True)
        if summary.errors:
            raise StageError(f"synth: {len(summary.errors)} failed waves (run again to resume): {summary.errors[0]}")
        outputs = [Path(summary.out)]
        exported = []
        for item in s.export:
            out = cfg.in_workspace(item.out)
            card = export(ctx.workspace, item.format, out, split=item.split, min_examples=item.min_examples)
            exported.append(f"{item.format} ({card['examples']} examples) -> {out}")
            outputs.append(out)
    except (SynthConfigError, ExportError, FileNotFoundError) as exc:
        raise StageError(f"synth: {exc}") from None
    text = (f"{summary.examples_written} new examples from {summary.groups_written} groups "
            f"({summary.groups_done_before} done before); {summary.examples_total} in {summary.out}")
    return Outcome(outputs=outputs, summary="; ".join([text, *exported]))


# ---- train: the generator --------------------------------------------------------------------------------------------


def adapter_dir(cfg: RunConfig) -> Path:
    assert cfg.train is not None
    return Workspace(cfg.workspace_dir).train_dir(cfg.train.name) / "adapter"


def plan_train(cfg: RunConfig) -> Plan:
    assert cfg.train is not None
    settings = _dump(cfg.train)
    if settings["device"] is None:  # a key from before `device` was a key of the section: those runs still skip
        del settings["device"]
    return Plan(settings, upstream=["synth"])


def run_train(cfg: RunConfig, ctx: Context) -> Outcome:
    from ragtune.models import ModelNotFoundError
    from ragtune.train.config import SFTRunConfig, TrainConfigError
    from ragtune.train.sft import train_sft

    t = cfg.train
    assert t is not None
    config = SFTRunConfig.model_validate(t.model_dump(include=set(SFTRunConfig.model_fields)))
    try:
        result = train_sft(ctx.workspace, t.model, None, config, name=t.name, resume=ctx.resume,
                           overwrite=not ctx.resume, log=ctx.say)
    except (TrainConfigError, ModelNotFoundError, FileNotFoundError) as exc:
        raise StageError(f"train: {exc}") from None
    output = Path(result.output)
    weights = output / "adapter_model.safetensors"
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "-"
    return Outcome(
        outputs=[weights if weights.exists() else output],
        summary=f"{result.examples} examples, {result.steps} steps, loss {loss}, {result.seconds:.0f}s -> {output}",
    )


# ---- retriever -------------------------------------------------------------------------------------------------------


def retriever_dir(cfg: RunConfig) -> Path:
    r = cfg.retriever
    assert r is not None
    return cfg.in_workspace(r.out) if r.out else Workspace(cfg.workspace_dir).train_dir(f"retriever-{r.method}")


def plan_retriever(cfg: RunConfig) -> Plan:
    assert cfg.retriever is not None
    # lm: trained (the dual loop) reads the train stage's adapter: a retrained generator retrains the retriever
    upstream = ["ingest", "synth"] + (["train"] if cfg.retriever.lm == "trained" else [])
    return Plan(_dump(cfg.retriever), upstream=upstream)


def run_retriever(cfg: RunConfig, ctx: Context) -> Outcome:
    from pydantic import ValidationError

    from ragtune.models import ModelNotFoundError
    from ragtune.train.sft import default_data_path

    r = cfg.retriever
    assert r is not None
    data = default_data_path(ctx.workspace)
    out = retriever_dir(cfg)
    try:
        if r.method == "lsr":
            from ragtune.train.retriever.lsr import train_lsr

            config = r.trainer_config()
            if r.lm == "trained":
                assert cfg.train is not None
                config = config.model_copy(update={"lm": cfg.train.model, "lm_adapter": str(adapter_dir(cfg))})
            result = train_lsr(ctx.workspace, data, config, out=out, progress=True)
        else:
            from ragtune.train.retriever.contrastive import train_contrastive

            result = train_contrastive(ctx.workspace, data, r.trainer_config(), out=out, progress=True)
    except (FileNotFoundError, ValueError, ValidationError, ModelNotFoundError) as exc:
        raise StageError(f"retriever: {exc}") from None
    before, after = result.before or {}, result.after or {}
    change = ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before if k not in ("n", "seconds")
                       and k in after)
    return Outcome(outputs=[Path(result.out)],
                   summary=f"{result.examples} rows, {result.steps} steps -> {result.out}" + (f"; {change}"
                                                                                                 if change else ""))


# ---- compare and report ----------------------------------------------------------------------------------------------


def _systems(cfg: RunConfig) -> list[dict[str, Any]]:
    """The systems with `trained` replaced by this run's adapter and retriever folders."""
    c = cfg.compare
    assert c is not None
    systems = []
    for i, entry in enumerate(c.systems, start=1):
        system = {**c.defaults, **entry}
        system.setdefault("name", f"system{i}")
        if system.get("adapter") == TRAINED:
            system["adapter"] = str(adapter_dir(cfg))
        elif system.get("adapter"):
            system["adapter"] = str(cfg.resolve(system["adapter"]))
        search = dict(system.get("search") or {})
        if search.get("retriever") == TRAINED:
            search["retriever"] = str(retriever_dir(cfg))
            system["search"] = search
        systems.append(system)
    return systems


def plan_compare(cfg: RunConfig) -> Plan:
    c = cfg.compare
    assert c is not None
    systems = _systems(cfg)
    upstream = []
    if any(s.get("setting") == "retrieved" for s in systems):
        upstream.append("ingest")
    if cfg.train is not None and any(s.get("adapter") == str(adapter_dir(cfg)) for s in systems):
        upstream.append("train")
    if cfg.retriever is not None and any((s.get("search") or {}).get("retriever") == str(retriever_dir(cfg))
                                         for s in systems):
        upstream.append("retriever")
    return Plan({**_dump(c), "systems": systems}, inputs=[_data_path(cfg, c.data)], upstream=upstream)


def run_compare(cfg: RunConfig, ctx: Context) -> Outcome:
    import shutil

    from ragtune.eval.compare import compare_run_dir, compare_systems, errors
    from ragtune.eval.runner import system_specs

    c = cfg.compare
    assert c is not None
    systems = _systems(cfg)
    data = _data_path(cfg, c.data)
    if not ctx.resume:
        # eval keeps answers per (model, adapter weights, data, settings); answers from retrieved chunks also
        # depend on the index, which that signature does not hold: start those systems again
        for s in systems:
            if s.get("setting") == "retrieved":
                stale = compare_run_dir(Workspace(ctx.workspace), s["name"], c.data.format, c.split, c.limit)
                shutil.rmtree(stale, ignore_errors=True)
    out_dir = cfg.in_workspace(c.out)
    try:
        result = compare_systems(system_specs(systems), c.data.format, data, ctx.workspace, out_dir, split=c.split,
                                 limit=c.limit, batch_size=c.batch_size, title=c.title,
                                 warn=lambda m: ctx.say(f"compare: warning: {m}"))
    except errors() as exc:
        raise StageError(f"compare: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for line in [c.title, *result.table_lines()]:
        ctx.say(line)
    return Outcome(outputs=[result.paths["json"]], summary=f"{len(systems)} systems -> {result.paths['html']}, "
                                                           f"{result.paths['markdown']}")


PLANS: dict[str, Callable[[RunConfig], Plan]] = {
    "ingest": plan_ingest, "search": plan_search, "synth": plan_synth, "train": plan_train,
    "retriever": plan_retriever, "compare": plan_compare,
}
RUNNERS: dict[str, Callable[[RunConfig, Context], Outcome]] = {
    "ingest": run_ingest, "search": run_search, "synth": run_synth, "train": run_train,
    "retriever": run_retriever, "compare": run_compare,
}
