"""`ragtune synth ...` and `ragtune export`: thin typer commands over the builders in this package.

`register(app)` adds them to the main app (`ragtune.cli`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ragtune.cli.common import console, settings_from_options
from ragtune.cli.common import out as out_console
from ragtune.cli.options import workspace_option
from ragtune.synth.raft import SynthSummary

synth_app = typer.Typer(
    help="Build training data: RAFT examples, retriever pairs, DPO preferences.",
    no_args_is_help=True,
    add_completion=False,
)

# required here, and not read from $RAGTUNE_WORKSPACE: synthesis writes into the workspace of an existing index
SynthWorkspaceOption = workspace_option(..., help="workspace folder (holds the index and synth/ outputs)", envvar=None)


def _teacher(
    ref: str | None,
    adapter: str | None,
    base_url: str | None,
    api_key: str | None,
    concurrency: int,
    timeout: float,
    what: str = "--teacher",
):
    from ragtune.llm import load_llm
    from ragtune.models import ModelNotFoundError

    try:
        return load_llm(
            ref, adapter=adapter, base_url=base_url, api_key=api_key, concurrency=concurrency, timeout=timeout
        )
    except ModelNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint=what) from exc
    except Exception as exc:
        from ragtune.llm.openai_backend import AuthenticationError

        if isinstance(exc, (AuthenticationError, OSError, ValueError)):
            raise typer.BadParameter(str(exc), param_hint=what) from exc
        raise


def _run(fn, *args, **kwargs):
    """Run a builder; turn the errors a user can fix into one line and exit code 2, not a traceback."""
    from ragtune.llm.openai_backend import AuthenticationError
    from ragtune.synth.export import ExportError
    from ragtune.synth.raft import SynthConfigError

    try:
        return fn(*args, **kwargs)
    except (SynthConfigError, ExportError, AuthenticationError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _print_summary(title: str, s: SynthSummary) -> None:
    dropped = {k.split(": ", 1)[1]: v for k, v in s.counts.items() if k.startswith("dropped")}
    out_console.print(
        f"[bold]{title}[/bold]: {s.examples_written} new examples from {s.groups_written} groups "
        f"({s.groups_done_before} done before, {s.groups_failed} failed); "
        f"{s.examples_total} examples in [cyan]{s.out}[/cyan] ({s.seconds:.1f}s)"
    )
    checked = s.counts.get("answers_checked", 0)
    if checked:
        out_console.print(
            f"  answers valid: {s.counts.get('answers_valid', 0)}/{s.counts.get('questions', checked)}"
            f" questions, {s.counts.get('answer_retries', 0)} retries, quote validity "
            f"{s.counts.get('answers_valid', 0) / checked:.1%} of {checked} teacher answers"
        )
    if dropped:
        out_console.print("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    if s.usage and s.usage.get("requests"):
        u = s.usage
        out_console.print(
            f"  teacher: {u['requests']} calls, {u['prompt_tokens']}+{u['completion_tokens']} tokens, "
            f"{u['retries']} HTTP retries, ${u['cost_usd']:.4f}"
        )
    for error in s.errors[:3]:
        out_console.print(f"  [yellow]failed wave[/yellow] (run again to resume): {error}")


@synth_app.command("raft")
def raft_cmd(
    workspace: Path = SynthWorkspaceOption,
    teacher: str = typer.Option(
        None, "--teacher", "-t", help="teacher model: bundled name, folder, .gguf, hub id, or openai:MODEL"
    ),
    questions_per_chunk: int = typer.Option(3, "--questions-per-chunk", "-n", min=1),
    distractors: int = typer.Option(3, "--distractors", "-k", min=0, help="k distractor documents per example"),
    p_oracle: float = typer.Option(
        0.8, "--p-oracle", "-p", min=0.0, max=1.0, help="probability of KEEPING the oracle (paper semantics)"
    ),
    hard_negatives: bool = typer.Option(False, "--hard-negatives", help="mine distractors from the index"),
    limit: int = typer.Option(None, "--limit", min=1, help="at most N chunks (a seed-chosen spread)"),
    seed: int = typer.Option(0, "--seed"),
    concurrency: int = typer.Option(
        8, "--concurrency", "-c", min=1, help="chunks per wave: batch size (local) or requests in flight (server)"
    ),
    retries: int = typer.Option(1, "--retries", min=0, help="re-asks of the teacher for an invalid answer"),
    teacher_context: str = typer.Option(
        "all", "--teacher-context", help="'all': teacher sees oracle + distractors; 'oracle': oracle only"
    ),
    answer_tokens: int = typer.Option(384, "--answer-tokens", min=8),
    question_tokens: int = typer.Option(160, "--question-tokens", min=8),
    prompt_style: str = typer.Option(
        "auto", "--prompt-style", help="fewshot (one question + short answer per sentence, for small local "
        "teachers) | instruct (questions, then quoted CoT answers) | auto: fewshot for local, instruct for openai:"
    ),
    ground: bool = typer.Option(
        True, "--ground/--no-ground", help="locate the evidence in the chunk when the teacher's quotes are not verbatim"
    ),
    cot_style: str = typer.Option("full", "--cot-style", help="grounded chain of thought: full | short"),
    fuzzy_threshold: float = typer.Option(85.0, "--fuzzy-threshold", min=0.0, max=100.0,
                                          help="0-100 partial ratio for fuzzy answer alignment"),
    round_trip_k: int = typer.Option(5, "--round-trip-k", min=0, help="keep a question only when the retriever "
                                     "finds its chunk in the top k (0: off)"),
    round_trip: str = typer.Option("retriever", "--round-trip", help="retriever (top k) | student (shown only "
                                   "the chunk, it gives the teacher's answer) | either | both"),
    student: str = typer.Option(None, "--student", help="model answering in the student round trip (default: a "
                                "local teacher itself, else the bundled model)"),
    student_match: float = typer.Option(0.5, "--student-match", min=0.0, max=1.0, help="0-1 agreement (F1 or "
                                        "answer recall) the student's answer needs with the teacher's"),
    resample: int = typer.Option(0, "--resample", min=0, help="few-shot: ask a rejected slot again up to N times, "
                                 "sampling"),
    dedup_threshold: float = typer.Option(0.9, "--dedup-threshold", min=0.0, help="MiniLM cosine at which a question "
                                          "duplicates an earlier one (1 or more: off)"),
    max_answer_words: int = typer.Option(12, "--max-answer-words", min=1, help="length budget of an answer"),
    adapter: str = typer.Option(None, "--adapter", help="LoRA adapter for a local teacher"),
    base_url: str = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible server URL"),
    api_key: str = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", show_default=False),
    timeout: float = typer.Option(120.0, "--timeout", help="seconds per request (servers)"),
    out: Path = typer.Option(None, "--out", help="output file (default WORKSPACE/synth/raft.jsonl)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start again instead of resuming"),
) -> None:
    """Teacher writes questions per chunk and quoted chain-of-thought answers; examples get oracle + k distractors.

    Interrupt it at any time: the same command resumes, giving exactly the examples of an uninterrupted run.
    """
    from ragtune.synth.raft import RaftConfig, synthesize_raft

    config = settings_from_options(
        RaftConfig,
        questions_per_chunk=questions_per_chunk,
        distractors=distractors,
        p_oracle=p_oracle,
        hard_negatives=hard_negatives,
        limit=limit,
        seed=seed,
        concurrency=concurrency,
        retries=retries,
        teacher_context=teacher_context,
        answer_tokens=answer_tokens,
        question_tokens=question_tokens,
        prompt_style=prompt_style,
        ground=ground,
        cot_style=cot_style,
        fuzzy_threshold=fuzzy_threshold,
        round_trip_k=round_trip_k,
        round_trip=round_trip,
        student_match=student_match,
        resample=resample,
        dedup_threshold=dedup_threshold,
        max_answer_words=max_answer_words,
    )
    from ragtune.workspace import Workspace

    if out is None and not Workspace(workspace).index_settings_path.exists():
        raise typer.BadParameter(
            f"no index in {workspace}; run `ragtune ingest PATH --workspace {workspace}` first",
            param_hint="--workspace",
        )
    llm = _teacher(teacher, adapter, base_url, api_key, concurrency, timeout)
    student_llm = _teacher(student, None, None, None, concurrency, timeout, "--student") if student else None
    summary = _run(synthesize_raft, workspace, llm, config, out=out, overwrite=overwrite, progress=True,
                   student=student_llm)
    _print_summary("synth raft", summary)
    _print_quality(summary.out)


def _print_quality(out: Path) -> None:
    """The quality report's compact table: kept / rejected per filter, yield, teacher time and tokens."""
    import json

    from rich.table import Table

    from ragtune.synth.raft import report_paths

    json_path, md_path = report_paths(out)
    if not json_path.exists():
        return
    report = json.loads(json_path.read_text(encoding="utf-8"))
    table = Table(title=f"quality: {report['kept']} kept of {report['candidates']} candidates from "
                  f"{report['chunks']} chunks ({report['yield_per_chunk']} per chunk)")
    table.add_column("filter")
    table.add_column("rejected", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("top reason")
    for name, f in report["filters"].items():
        top = next(iter(f["reasons"]), "")
        table.add_row(name, str(f["rejected"]), f"{100 * f['rate']:.0f}%", top)
    out_console.print(table)
    out_console.print(
        f"  teacher {report['teacher_seconds']:.0f}s, {report['teacher_completion_tokens']} completion tokens "
        f"({report['prompt_style']} prompts); grounding {report['grounding']}; report [cyan]{md_path}[/cyan], "
        f"rejected [cyan]{report['rejected_file']}[/cyan]"
    )


@synth_app.command("from-qa")
def from_qa_cmd(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="hotpotqa | squad | nq | jsonl"),
    path: Path = typer.Argument(..., help="the labelled data set file"),
    workspace: Path = SynthWorkspaceOption,
    cot: str = typer.Option("evidence", "--cot", help="'evidence': quote gold evidence "
                             "(no teacher); 'evidence-short': the quotes and the answer only; 'teacher'"),
    teacher: str = typer.Option(None, "--teacher", "-t", help="teacher model for --cot teacher"),
    distractors: int = typer.Option(3, "--distractors", "-k", min=0, help="k distractor documents per example"),
    distractors_max: int = typer.Option(
        None, "--distractors-max", min=0, help="draw each example's k uniformly from --distractors to this, so the "
        "student learns to answer from as many documents as it will be shown"
    ),
    p_oracle: float = typer.Option(0.8, "--p-oracle", "-p", min=0.0, max=1.0),
    distractor_source: str = typer.Option(
        "auto", "--distractor-source", help="auto | own (the example's context) | index | pool (data set)"
    ),
    split: str = typer.Option("train", "--split", help="train | eval | all (split_of(id): 1 in 5 is eval)"),
    limit: int = typer.Option(None, "--limit", min=1),
    seed: int = typer.Option(0, "--seed"),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1),
    retries: int = typer.Option(1, "--retries", min=0),
    include_unanswerable: bool = typer.Option(False, "--include-unanswerable", help="SQuAD 2.0 impossible questions"),
    base_url: str = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL"),
    api_key: str = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", show_default=False),
    out: Path = typer.Option(None, "--out", help="output file (default WORKSPACE/synth/raft.jsonl)"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """RAFT examples from a labelled QA set: gold documents are the oracle; no teacher needed with --cot evidence."""
    from ragtune.synth.from_qa import FORMATS, FromQAConfig, synthesize_from_qa

    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="FORMAT")
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint="PATH")
    config = settings_from_options(  # checked before a teacher loads
        FromQAConfig,
        cot=cot,
        distractors=distractors,
        distractors_max=distractors_max,
        p_oracle=p_oracle,
        distractor_source=distractor_source,
        split=split,
        limit=limit,
        seed=seed,
        concurrency=concurrency,
        retries=retries,
        include_unanswerable=include_unanswerable,
    )
    llm = None
    if cot == "teacher":
        llm = _teacher(teacher, None, base_url, api_key, concurrency, 120.0)
    summary = _run(
        synthesize_from_qa, fmt, path, workspace, config, teacher=llm, out=out, overwrite=overwrite, progress=True
    )
    _print_summary(f"synth from-qa {fmt}", summary)


@synth_app.command("pairs")
def pairs_cmd(
    workspace: Path = SynthWorkspaceOption,
    negatives: int = typer.Option(3, "--negatives", min=0, help="hard negatives per question"),
    mode: str = typer.Option("hybrid", "--mode", help="search mode that mines negatives: hybrid | dense | bm25"),
    split: str = typer.Option("train", "--split"),
    mine: bool = typer.Option(None, "--mine/--no-mine", help="mine from the index (default: when one exists)"),
    source: Path = typer.Option(None, "--input", help="RAFT file (default WORKSPACE/synth/raft.jsonl)"),
    out: Path = typer.Option(None, "--out", help="default WORKSPACE/synth/pairs.jsonl"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """(question, positive chunk, mined hard negatives) for retriever training."""
    from ragtune.synth.pairs import PairsConfig, build_pairs

    config = settings_from_options(PairsConfig, negatives=negatives, mode=mode, split=split, mine=mine)
    summary = _run(build_pairs, workspace, config, source=source, out=out, overwrite=overwrite, progress=True)
    _print_summary("synth pairs", summary)


@synth_app.command("preferences")
def preferences_cmd(
    workspace: Path = SynthWorkspaceOption,
    student: str = typer.Option(None, "--student", "-s", help="the model whose mistakes become 'rejected'"),
    adapter: str = typer.Option(None, "--adapter", help="LoRA adapter for a local student"),
    limit: int = typer.Option(None, "--limit", min=1),
    split: str = typer.Option("train", "--split"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=8),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1),
    synthetic: bool = typer.Option(
        True, "--synthetic/--no-synthetic", help="when the student is right, reject an answer that cites a distractor"
    ),
    seed: int = typer.Option(0, "--seed"),
    base_url: str = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL"),
    api_key: str = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", show_default=False),
    source: Path = typer.Option(None, "--input", help="RAFT file (default WORKSPACE/synth/raft.jsonl)"),
    out: Path = typer.Option(None, "--out", help="default WORKSPACE/synth/preferences.jsonl"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """DPO pairs: chosen = the validated answer; rejected = the student's wrong (or distractor-citing) answer."""
    from ragtune.synth.preferences import PreferencesConfig, build_preferences

    config = settings_from_options(  # checked before the student loads
        PreferencesConfig, limit=limit, split=split, max_new_tokens=max_tokens, concurrency=concurrency,
        synthetic=synthetic, seed=seed,
    )
    llm = _teacher(student, adapter, base_url, api_key, concurrency, 120.0, what="--student")
    summary = _run(
        build_preferences, workspace, llm, config, source=source, out=out, overwrite=overwrite, progress=True
    )
    _print_summary("synth preferences", summary)


@synth_app.command("from-feedback")
def from_feedback_cmd(
    workspace: Path = SynthWorkspaceOption,
    tenant: str = typer.Option(None, "--tenant", help="only this tenant's feedback (default: every tenant's)"),
    reviewed_only: bool = typer.Option(
        False, "--reviewed-only",
        help="only feedback accepted or edited on the curation page (default: all but rejected)",
    ),
    out: Path = typer.Option(None, "--out", help="output folder (default WORKSPACE/synth/feedback)"),
) -> None:
    """Served answers' feedback -> SFT examples, DPO pairs and retriever pairs (plus curated RAFT examples)."""
    from ragtune.synth.from_feedback import FromFeedbackConfig, build_from_feedback

    config = settings_from_options(FromFeedbackConfig, tenant=tenant, reviewed_only=reviewed_only)
    s = _run(build_from_feedback, workspace, config, out)
    out_console.print(
        f"[bold]synth from-feedback[/bold]: {s.feedback_rows} feedback rows ({s.skipped_rejected} rejected, "
        f"{s.skipped_unreviewed} unreviewed skipped) -> {s.sft} SFT examples, {s.preferences} DPO pairs, {s.pairs} "
        f"retriever pairs" + (f", {s.raft_curated} curated RAFT examples ({s.raft_rejected} rejected)"
                              if s.raft_curated is not None else "") + f" in [cyan]{s.out_dir}[/cyan]"
    )
    out_console.print(
        f"  train with: ragtune train sft --workspace {workspace} --data {s.files['sft']} · ragtune train dpo "
        f"--data {s.files['preferences']} · ragtune train retriever --method contrastive --data {s.files['pairs']}"
    )


def export_cmd(
    workspace: Path = SynthWorkspaceOption,
    fmt: str = typer.Option(..., "--format", "-f", help="openai-chat | openai-dpo | hf | completion | sharegpt"),
    out: Path = typer.Option(..., "--out", "-o", help="output file (a folder for hf)"),
    system_prompt: str = typer.Option(
        None, "--system-prompt", help="system message (default: ragtune's RAFT one; '' for none)"
    ),
    split: str = typer.Option("train", "--split", help="train | eval | all"),
    source: Path = typer.Option(None, "--input", help="default WORKSPACE/synth/raft.jsonl (preferences for dpo)"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="tokenizer for the card's lengths ('words' for none)"),
    min_examples: int = typer.Option(10, "--min-examples", min=1),
) -> None:
    """Export synthesized data (validated) for fine-tuning, with a dataset card beside it."""
    from ragtune.synth import prompts
    from ragtune.synth.export import FORMATS, export

    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    if split not in ("train", "eval", "all"):
        raise typer.BadParameter("must be train, eval or all", param_hint="--split")
    if system_prompt is None:
        system_prompt = prompts.STUDENT_SYSTEM
    card = _run(
        export,
        workspace,
        fmt,
        out,
        system_prompt=system_prompt or None,
        split=split,
        source=source,
        tokenizer=tokenizer,
        min_examples=min_examples,
    )
    extra = ""
    if "p_oracle_observed" in card:
        extra = f", P observed {card['p_oracle_observed']}, k={card['k']}"
    if "quote_validity_rate" in card:
        extra += f", quote validity {card['quote_validity_rate']:.1%}"
    out_console.print(
        f"[bold]export[/bold] {fmt}: {card['examples']} examples{extra} -> [cyan]{out}[/cyan] (card beside it)"
    )


def register(app: typer.Typer) -> None:
    """Add `synth` (raft, from-qa, pairs, preferences, from-feedback) and `export` to the main ragtune app."""
    app.add_typer(synth_app, name="synth")
    app.command("export")(export_cmd)

