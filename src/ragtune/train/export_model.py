"""A tuned generator out of ragtune, in the formats deployments load: a merged HF folder, a GGUF file, an Ollama model.

- `merged`: the LoRA folded into the base weights (`merge_and_unload`, in fp32) and saved as a plain Hugging Face
  folder: safetensors, tokenizer, chat template, generation config, and a model card (README.md) that says what it was
  trained on (the run's data files with their hashes, examples, steps, LoRA settings) and, when the workspace holds an
  evaluation report, the before / after table. vLLM, TGI, transformers and llama.cpp's converter all load it.
- `gguf`: the merged folder through llama.cpp's own `convert_hf_to_gguf.py` at f16 / q8_0 (its `--outtype`), or
  q4_k_m through llama.cpp's quantiser (see `ragtune.llm.gguf`). llama.cpp, LM Studio and Ollama load it.
- `ollama`: the GGUF plus a `Modelfile`: FROM the GGUF, the chat template as a Go TEMPLATE, the RAFT system prompt the
  model was trained with as SYSTEM (so `ollama run` answers in the quoted-evidence + `<ANSWER>:` format it learned),
  the chat turn's end token as a stop parameter and greedy decoding. `ollama create NAME -f DIR/Modelfile`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("merged", "gguf", "ollama")


class ExportError(ValueError):
    """An export that cannot run as asked; the message says why and what to change."""


@dataclass
class ExportResult:
    """What an export wrote, how big it is and how long it took (the export benchmark reads these)."""

    format: str
    out: str
    files: list[str] = field(default_factory=list)
    gguf: str | None = None
    quant: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    base_model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunInfo:
    """What the training run recorded next to its adapter: base model, data files, counts, settings."""

    name: str
    base_model: str | None
    inputs: dict[str, str]
    counts: dict[str, Any]
    config: dict[str, Any]
    system_prompt: str | None


def read_run(adapter: Path) -> RunInfo:
    """The run folder's manifest / summary (`ws/train/NAME/adapter` -> `ws/train/NAME/manifest.json`)."""
    run = adapter.parent
    manifest = _json(run / "manifest.json")
    summary = _json(run / "train_summary.json")
    adapter_config = _json(adapter / "adapter_config.json")
    config = manifest.get("config") or summary.get("config") or {}
    base = (adapter_config.get("base_model_name_or_path") or (manifest.get("extra") or {}).get("base_model")
            or summary.get("base_model"))
    counts = manifest.get("counts") or {k: summary[k] for k in ("examples", "steps", "tokens") if k in summary}
    return RunInfo(run.name if adapter.name == "adapter" else adapter.name, base, manifest.get("inputs") or {},
                   counts, config, config.get("system_prompt"))


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_base(info: RunInfo, base: str | None) -> str:
    """The base model's folder: `--base` when given, else the adapter's own record of it (when that path exists on
    this machine), else the bundled default the trainers use."""
    from ragtune.models import resolve_generator

    if base:
        return resolve_generator(base).path
    recorded = info.base_model
    if recorded and (Path(recorded).is_dir() or (recorded.count("/") == 1 and not recorded.startswith("/"))):
        return resolve_generator(recorded).path
    return resolve_generator(None).path  # recorded on another machine (a cache path): the same bundled model here


def merge(adapter: Path, out: Path, base_path: str) -> list[str]:
    """base + LoRA merged in fp32 and saved as a Hugging Face folder with tokenizer, chat template and generation
    config. Returns the files written."""
    from ragtune.llm.transformers_backend import load_model

    model, tokenizer = load_model(base_path, str(adapter), "cpu", "float32", merge_adapter=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not (out / "generation_config.json").exists() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    return sorted(p.name for p in out.iterdir())


def find_report(workspace: Path | None, report: Path | None = None) -> Path | None:
    """The evaluation report to quote in the model card: `report` when given, else the newest report.json under the
    workspace (what `ragtune compare` writes)."""
    if report is not None:
        return report if report.is_file() else None
    if workspace is None or not workspace.is_dir():
        return None
    found = [p for p in workspace.rglob("report.json") if "predictions" not in p.parts]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def report_table(report: Path) -> list[str]:
    """The before / after table of a `ragtune compare` report as markdown lines (system, adapter, EM, F1, n)."""
    data = _json(report)
    rows = ["| system | adapter | EM | F1 | F1 95% CI | n |", "|---|---|---:|---:|---|---:|"]
    for s in data.get("systems") or []:
        scores, system = s.get("scores") or {}, s.get("system") or {}
        ci = (f"[{_pct(scores.get('f1_ci_low'))}, {_pct(scores.get('f1_ci_high'))}]"
              if scores.get("f1_ci_low") is not None else "")
        rows.append(f"| {s.get('name', '')} | {system.get('adapter') or '–'} | {_pct(scores.get('em'))} | "
                    f"{_pct(scores.get('f1'))} | {ci} | {scores.get('n', '')} |")
    return rows if len(rows) > 2 else []


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f}" if isinstance(value, (int, float)) else ""


def model_card(info: RunInfo, base_path: str, report: Path | None, fmt: str, gguf: str | None = None) -> str:
    """README.md for the exported model: what it is, what it was trained on, how it scored, how to run it."""
    from ragtune.prompts import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE

    base_name = info.base_model or base_path
    lines = [
        "---", "library_name: transformers", f"base_model: {base_name}", "tags: [ragtune, raft, lora, rag]", "---", "",
        f"# {info.name} (exported by ragtune)", "",
        f"A LoRA fine-tune of `{base_name}` by ragtune, merged into the base weights"
        + (f" and converted to GGUF (`{gguf}`)" if gguf else "") + ".", "",
        "It was trained on RAFT data: each question comes with retrieved documents (the right one and distractors, "
        "sometimes only distractors); the answer reasons step by step, quotes its evidence between "
        f"`{BEGIN_QUOTE}` and `{END_QUOTE}` and ends with `{ANSWER_TAG} <answer>`.", "",
        "## Training data", "",
    ]
    if info.inputs:
        lines += [f"- `{path}` (sha256 `{digest}`)" for path, digest in sorted(info.inputs.items())]
    else:
        lines.append("- not recorded (no manifest.json next to the adapter)")
    if info.counts:
        lines += ["", "Counts: " + ", ".join(f"{k} {v}" for k, v in info.counts.items()) + "."]
    lora = info.config.get("lora") or {}
    if info.config:
        settings = {k: info.config.get(k) for k in ("method", "data_mode", "epochs", "max_steps", "lr", "max_length",
                                                    "seed") if info.config.get(k) is not None}
        lines += ["", "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items())
                  + (f"; LoRA r {lora.get('r')}, targets {lora.get('target_modules')}" if lora else "") + "."]
    lines += ["", "## Evaluation", ""]
    table = report_table(report) if report else []
    if table:
        lines += [f"From `{report}` (EM and F1 in points):", "", *table]
    else:
        lines.append("No evaluation report was found in the workspace; run `ragtune compare` to make one.")
    lines += ["", "## Use", ""]
    if fmt == "merged":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(PATH)",
                  "tokenizer = AutoTokenizer.from_pretrained(PATH)",
                  "```", "", "or `vllm serve PATH`."]
    else:
        lines += [f"`llama-server -m {gguf}`, or with Ollama: `ollama create {info.name} -f Modelfile`."]
    return "\n".join(lines) + "\n"


# Ollama templates are Go templates, not Jinja: the chat-template families ragtune's defaults use, written once.
_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""
_TEMPLATES = {"<|im_start|>": (_CHATML, ["<|im_end|>", "<|im_start|>"]),
              "<|start_header_id|>": (_LLAMA3, ["<|eot_id|>", "<|start_header_id|>"])}


def ollama_template(chat_template: str) -> tuple[str, list[str]]:
    """(Go TEMPLATE, stop strings) for a Jinja chat template of a known family (ChatML, Llama 3)."""
    for marker, (template, stops) in _TEMPLATES.items():
        if marker in chat_template:
            return template, stops
    raise ExportError("the model's chat template is neither ChatML (<|im_start|>) nor Llama 3 (<|start_header_id|>): "
                      "write the Modelfile's TEMPLATE by hand (https://github.com/ollama/ollama/blob/main/docs/"
                      "modelfile.md) or export --format gguf")


def modelfile(gguf_name: str, chat_template: str, system_prompt: str, num_ctx: int = 4096) -> str:
    """An Ollama Modelfile: FROM the GGUF next to it, the chat template, the RAFT system prompt, stops, greedy."""
    template, stops = ollama_template(chat_template)
    system = system_prompt.replace('"""', '\\"\\"\\"')
    lines = [
        "# Made by `ragtune export-model --format ollama`. Create the model: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        f'SYSTEM """{system}"""',
        *[f'PARAMETER stop "{s}"' for s in stops],
        "PARAMETER temperature 0",
        f"PARAMETER num_ctx {num_ctx}",
    ]
    return "\n".join(lines) + "\n"


def _chat_template(folder: Path) -> str:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return str(_json(folder / "tokenizer_config.json").get("chat_template") or "")


def export_model(
    adapter: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    quant: str = "f16",
    base: str | None = None,
    llama_cpp_dir: str | os.PathLike[str] | None = None,
    workspace: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export `adapter` (a PEFT LoRA folder from `ragtune train sft`) as `fmt` into the folder `out`.

    `workspace` (default: the folder above `train/` holding the run) is searched for a report.json to quote;
    `quant` applies to gguf / ollama. The output folder is written whole or not at all (a temporary sibling renamed).
    """
    from ragtune.llm import gguf as gguf_tools

    started = time.perf_counter()
    adapter_path = Path(adapter).expanduser()
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if not (adapter_path / "adapter_config.json").is_file():
        raise ExportError(f"{adapter_path}: not a LoRA adapter folder (no adapter_config.json); pass "
                          "ws/train/NAME/adapter")
    if fmt != "merged" and quant not in gguf_tools.QUANTS:
        raise ExportError(f"unknown --quant {quant!r}; expected one of: {', '.join(gguf_tools.QUANTS)}")
    target = Path(out).expanduser()
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"{target} exists and is not empty; pass --overwrite or another --out")
    tools = gguf_tools.find_tools(llama_cpp_dir) if fmt != "merged" else None  # fail before minutes of merging
    if fmt != "merged" and quant in gguf_tools.QUANTIZE_TYPES and tools is not None and tools.quantize_bin is None:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise ExportError(f"--quant {quant} needs llama.cpp's quantiser (llama-quantize, or `pip install "
                              "llama-cpp-python`); f16 and q8_0 need only the converter")
    info = read_run(adapter_path)
    base_path = resolve_base(info, base)
    ws = Path(workspace) if workspace else _workspace_of(adapter_path)
    found_report = find_report(ws, Path(report) if report else None)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        merged = staging if fmt == "merged" else staging / ".merged"
        merge(adapter_path, merged, base_path)
        chat_template = _chat_template(merged)
        gguf_name = None
        if fmt != "merged":
            gguf_name = f"{info.name}-{quant}.gguf"
            gguf_tools.convert_hf(merged, staging / gguf_name, quant, llama_cpp_dir)
            for extra in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
                if (merged / extra).exists():  # next to the GGUF: the tokenizer ragtune's llamacpp engine reads
                    shutil.copy2(merged / extra, staging / extra)
            shutil.rmtree(merged)
        if fmt == "ollama":
            from ragtune.prompts import STUDENT_SYSTEM

            assert gguf_name is not None
            (staging / "Modelfile").write_text(
                modelfile(gguf_name, chat_template, info.system_prompt or STUDENT_SYSTEM), encoding="utf-8")
        (staging / "README.md").write_text(model_card(info, base_path, found_report, fmt, gguf_name),
                                           encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    files = sorted(p.name for p in target.iterdir())
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return ExportResult(fmt, str(target), files, str(target / gguf_name) if gguf_name else None,
                        quant if fmt != "merged" else None, size, round(time.perf_counter() - started, 2),
                        info.base_model or base_path)


def _workspace_of(adapter: Path) -> Path | None:
    """`ws/train/NAME/adapter` -> `ws`."""
    run = adapter.resolve().parent
    return run.parent.parent if run.parent.name == "train" else None
