"""The `ragtune.yaml` of `ragtune run`: every stage's own settings, nested by stage, validated on load.

Each section is the stage's own config model (`IngestConfig`, `FromQAConfig`, `RaftConfig`, `SFTRunConfig`,
`LSRConfig`, `ContrastiveConfig`, the `SystemSpec`s of `ragtune compare`) plus the few keys the command line would
have given (paths, data, names): `train` is an `SFTRunConfig`, `synth.from_qa` a `FromQAConfig`, `synth.raft` a
`RaftConfig`, checks included. So a field added to a stage appears here with the stage's default and never drifts,
and a bad value fails when the file is read, with the command's own message (`synth.raft.p_oracle: --p-oracle must
be between 0 and 1, got 1.5`), not when the stage runs. Unknown keys are errors that name the key and the allowed
ones (`extra="forbid"`): a typo must not silently run the default.

Relative paths in the file are relative to the file's own folder, so a config works from any working directory.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ragtune.config import IngestConfig
from ragtune.synth.config import FromQAConfig, RaftConfig
from ragtune.train.config import SFTRunConfig

STAGES = ("ingest", "search", "synth", "train", "retriever", "compare")
TRAINED = "trained"  # `adapter: trained` / `retriever: trained` in a system: what this run trained
QA_FORMATS = ("hotpotqa", "squad", "nq", "jsonl")


class ConfigError(ValueError):
    """A `ragtune.yaml` that cannot run; the message names the file, the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkspaceSection(_Strict):
    """Where every artifact of the run goes."""

    path: Path = Field(default=Path("ragtune-workspace"), description="The workspace folder (relative: to this file's "
                       "folder). The run's state (`run_state.json`) and log (`run.log`) live in it.")


class IngestSection(IngestConfig):
    """`ragtune ingest`: the documents to index, and how."""

    model_config = ConfigDict(extra="forbid")

    paths: list[Path] = Field(..., min_length=1, description="Files or folders (searched recursively) to index.")


class QAData(_Strict):
    """A labelled question-answer file."""

    format: Literal["hotpotqa", "squad", "nq", "jsonl", "raft"] = Field(
        ..., description="hotpotqa | squad | nq | jsonl | raft (compare only: a `ragtune synth` RAFT file, its "
        "held-out split: questions about your own documents)")
    path: Path | None = Field(None, description="The file (relative: to this file's folder). Required except for "
                              "raft, whose default is the run's own WORKSPACE/synth/raft.jsonl.")

    @model_validator(mode="after")
    def _path_given(self) -> QAData:
        if self.path is None and self.format != "raft":
            raise ValueError(f"format {self.format} needs a path")
        return self


class SearchSection(_Strict):
    """A look at retrieval right after ingest: the top hits of a few queries, and recall against a labelled set."""

    queries: list[str] = Field(default_factory=list, description="Queries whose top hits are printed.")
    k: int = Field(3, ge=1, description="Hits printed per query.")
    data: QAData | None = Field(None, description="Questions whose gold documents' titles score recall@2, "
                                "recall@5, all-gold@10 and MRR of each search mode.")
    modes: list[Literal["bm25", "dense", "hybrid"]] = Field(["bm25", "dense", "hybrid"],
                                                            description="Search modes scored on `data`.")


class ExportItem(_Strict):
    """One export of the synthesized data (`ragtune export`)."""

    format: Literal["openai-chat", "openai-dpo", "hf", "completion", "sharegpt"] = Field(..., description="The "
                                                                                          "format.")
    out: Path = Field(..., description="Output file (relative: to the workspace).")
    split: Literal["train", "eval", "all"] = Field("train", description="Which hash split is exported.")
    min_examples: int = Field(10, ge=1, description="Refuse to export fewer examples (OpenAI rejects files under 10).")


class SynthSection(_Strict):
    """Training data: from a labelled QA set (no teacher needed) or written by a teacher from your documents."""

    method: Literal["from-qa", "raft"] = Field(..., description="from-qa: `ragtune synth from-qa`; raft: "
                                               "`ragtune synth raft` over the indexed chunks.")
    data: QAData | None = Field(None, description="from-qa: the labelled file.")
    teacher: str | None = Field(None, description="Teacher model: bundled name, folder, .gguf, hub id or "
                                "openai:MODEL (raft, or from-qa with cot: teacher). Default: the bundled SmolLM2.")
    base_url: str | None = Field(None, description="OpenAI-compatible server URL for an openai: teacher; default "
                                 "$OPENAI_BASE_URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the server's API key "
                             "(keys never go into this file).")
    timeout: float = Field(120.0, gt=0, description="Seconds per request to a teacher server.")
    from_qa: FromQAConfig = Field(default_factory=FromQAConfig, description="Settings of from-qa: the fields of "
                                  "FromQAConfig, as the options of `ragtune synth from-qa`.")
    raft: RaftConfig = Field(default_factory=RaftConfig, description="Settings of raft: the fields of RaftConfig, as "
                             "the options of `ragtune synth raft`.")
    export: list[ExportItem] = Field(default_factory=list, description="Exports written after synthesis.")

    @model_validator(mode="after")
    def _needs_data(self) -> SynthSection:
        if self.method == "from-qa" and self.data is None:
            raise ValueError("method from-qa needs data: {format: ..., path: ...}")
        if self.data is not None and self.data.format == "raft":
            raise ValueError(f"synth data must be one of {', '.join(QA_FORMATS)}, not raft")
        return self


class TrainSection(SFTRunConfig):
    """`ragtune train sft`: fine-tune the generator on the synthesized RAFT data. Every `SFTRunConfig` field, checked
    as the command checks it, plus where the run goes and which model it starts from."""

    name: str = Field("run-sft", description="Run folder under WORKSPACE/train/; the adapter lands in "
                      "WORKSPACE/train/NAME/adapter.")
    model: str | None = Field(None, description="Base generator (default: the bundled SmolLM2-135M-Instruct).")


class RetrieverSection(_Strict):
    """`ragtune train retriever`: optional; train the retriever on the synthesized questions."""

    method: Literal["lsr", "contrastive"] = Field("lsr", description="lsr: RA-DIT LM-supervised retrieval (query "
                                                  "tower; index untouched) | contrastive.")
    # The trainers' own models (LSRConfig, ContrastiveConfig) live beside torch; they are checked when this section
    # is present, so a config without a retriever never pays torch's import (seconds) just to be read.
    lsr: dict[str, Any] = Field(default_factory=dict, description="Settings of lsr: the fields of LSRConfig "
                                "(top_k, tau, temperature, epochs, lr, batch_size, lm, lm_batch_size, limit, seed).")
    contrastive: dict[str, Any] = Field(default_factory=dict, description="Settings of contrastive: the fields of "
                                        "ContrastiveConfig (tower, negatives, depth, epochs, lr, batch_size, ...).")
    lm: Literal["base", "trained"] = Field("base", description="lsr: which LM scores the chunks: base (lsr.lm, "
                                           "default the bundled SmolLM2) | trained (this run's train adapter on "
                                           "train.model: RA-DIT's dual loop, LM-ft then R-ft with the tuned LM).")
    out: Path | None = Field(None, description="Output folder (default WORKSPACE/train/retriever-METHOD).")

    @model_validator(mode="after")
    def _trainer_settings(self) -> RetrieverSection:
        if self.lm == "trained" and self.method != "lsr":
            raise ValueError("retriever.lm: trained needs method: lsr (only LSR is taught by an LM)")
        if self.lm == "trained" and ({"lm", "lm_adapter"} & set(self.lsr)):
            raise ValueError("retriever.lm: trained takes the LM from the train section: drop lsr.lm / lsr.lm_adapter")
        self.trainer_config()
        return self

    def trainer_config(self) -> Any:
        """The chosen method's LSRConfig / ContrastiveConfig (unknown keys are errors here too)."""
        if self.method == "lsr":
            from ragtune.train.retriever.lsr import LSRConfig as model
        else:
            from ragtune.train.retriever.contrastive import ContrastiveConfig as model  # type: ignore[assignment]
        values = self.lsr if self.method == "lsr" else self.contrastive
        unknown = sorted(set(values) - set(model.model_fields))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} in retriever.{self.method}; allowed: "
                             f"{', '.join(model.model_fields)}")
        return model.model_validate(values)


class CompareSection(_Strict):
    """`ragtune compare`: every system on the same held-out questions, and one report (md, html, json, plots)."""

    data: QAData = Field(..., description="The questions.")
    split: Literal["eval", "train", "all"] = Field("eval", description="Hash split shared with synthesis.")
    limit: int | None = Field(None, ge=1, description="The first N questions (sorted by id).")
    batch_size: int = Field(8, ge=1, description="Questions per generation batch.")
    title: str = Field("ragtune comparison", description="Report title.")
    out: Path = Field(Path("report"), description="Report folder (relative: to the workspace).")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Fields shared by every system.")
    systems: list[dict[str, Any]] = Field(..., min_length=1, description="Systems: name, model, adapter ('trained': "
                                          "this run's adapter), setting, distractors, k, mode, prompt, "
                                          "max_new_tokens, dtype, search (e.g. {retriever: trained}).")

    @model_validator(mode="after")
    def _systems_valid(self) -> CompareSection:
        from ragtune.eval.runner import system_specs

        system_specs(self.systems, self.defaults)  # raises ValueError naming the system at fault
        return self


class RunConfig(_Strict):
    """One `ragtune.yaml`: the whole chain, ingest -> search -> synth -> train -> retriever -> compare."""

    workspace: WorkspaceSection = Field(WorkspaceSection(), description="Where artifacts go.")
    ingest: IngestSection = Field(..., description="Documents to index.")
    search: SearchSection | None = Field(None, description="Optional look at retrieval after ingest.")
    synth: SynthSection | None = Field(None, description="Training data.")
    train: TrainSection | None = Field(None, description="Generator fine-tuning.")
    retriever: RetrieverSection | None = Field(None, description="Optional retriever training.")
    compare: CompareSection | None = Field(None, description="Before / after comparison and report.")

    # where the file was: relative paths are resolved against it
    base_dir: Path = Field(Path("."), exclude=True, description="Folder relative paths are resolved against.")

    @field_validator("base_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @model_validator(mode="after")
    def _chain(self) -> RunConfig:
        if self.train is not None and self.synth is None:
            raise ValueError("train needs a synth section (the data it trains on)")
        if self.retriever is not None and self.synth is None:
            raise ValueError("retriever needs a synth section (the questions it trains on)")
        if self.retriever is not None and self.retriever.lm == "trained" and self.train is None:
            raise ValueError("retriever.lm: trained needs a train section (the tuned LM that scores the chunks)")
        if self.compare is not None:
            for entry in self.compare.systems:
                merged = {**self.compare.defaults, **entry}
                if merged.get("adapter") == TRAINED and self.train is None:
                    raise ValueError("a system uses `adapter: trained` but there is no train section")
                if (merged.get("search") or {}).get("retriever") == TRAINED and self.retriever is None:
                    raise ValueError("a system uses `search: {retriever: trained}` but there is no retriever section")
        return self

    def resolve(self, path: Path | str) -> Path:
        """A path from the file, made absolute against the file's folder."""
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() else self.base_dir / p

    @property
    def workspace_dir(self) -> Path:
        return self.resolve(self.workspace.path).resolve()

    def in_workspace(self, path: Path | str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.workspace_dir / p

    def enabled(self) -> list[str]:
        """The stages this file configures, in run order."""
        return [s for s in STAGES if s == "ingest" or getattr(self, s) is not None]


def _message(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(x) for x in error.get("loc", ()))
        if error.get("type") == "extra_forbidden":
            parent = _model_at(RunConfig, error["loc"][:-1])
            allowed = ", ".join(k for k, f in parent.model_fields.items() if not f.exclude) if parent else "?"
            lines.append(f"{source}: unknown key {loc!r}; allowed here: {allowed}")
        else:
            lines.append(f"{source}: {loc or '(top level)'}: {error.get('msg')}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that sits at `loc` inside `model` (for the list of allowed keys)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = _model_type(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def parse_config(data: Any, base_dir: Path | str = ".", source: str = "config") -> RunConfig:
    """Validate a mapping (a parsed `ragtune.yaml`); ConfigError says which key is wrong and what is allowed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(RunConfig.model_fields)})")
    if "base_dir" in data:
        raise ConfigError(f"{source}: unknown key 'base_dir'")
    try:
        return RunConfig.model_validate({**data, "base_dir": Path(base_dir)})
    except ValidationError as exc:
        raise ConfigError(_message(exc, source)) from None


def load_config(path: Path | str) -> RunConfig:
    """Read and validate a `ragtune.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_config(data, path.resolve().parent, str(path))
