"""`ragtune export-model`: a tuned adapter as a merged HF folder, a GGUF file or an Ollama model (see export_model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ragtune.cli.common import console
from ragtune.cli.options import json_option, workspace_option


def export_model_command(
    adapter: Path = typer.Option(..., "--adapter", help="The LoRA adapter folder: ws/train/NAME/adapter."),
    format: str = typer.Option("merged", "--format", help="merged (HF folder) | gguf | ollama (GGUF + Modelfile)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (written whole or not at all)."),
    quant: str = typer.Option("f16", "--quant", help="gguf / ollama: f16 | q8_0 (the converter) | q4_k_m "
                              "(llama.cpp's quantiser: llama-quantize or llama-cpp-python) | bf16 | f32."),
    base: str = typer.Option(None, "--base", help="Base model (default: the one the adapter records, else the "
                             "bundled SmolLM2)."),
    llama_cpp: Path = typer.Option(None, "--llama-cpp", help="A llama.cpp checkout holding convert_hf_to_gguf.py "
                                   "(default: $LLAMA_CPP_DIR, else an installed llama-cpp-python's sources).",
                                   envvar="LLAMA_CPP_DIR"),
    workspace: Path = workspace_option(None, help="Workspace searched for a report.json for the model card "
                                       "(default: the one holding the adapter).", envvar=None),
    report: Path = typer.Option(None, "--report", help="A `ragtune compare` report.json to quote in the model card."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
    as_json: bool = json_option("Print what was written as JSON on stdout."),
) -> None:
    """Export a tuned generator: merged safetensors folder with a model card, GGUF (llama.cpp), or an Ollama model."""
    from ragtune.llm.gguf import ConverterNotFoundError
    from ragtune.models import ModelNotFoundError
    from ragtune.train.export_model import ExportError, export_model

    try:
        result = export_model(adapter, format, out, quant=quant, base=base, llama_cpp_dir=llama_cpp,
                              workspace=workspace, report=report, overwrite=overwrite)
    except (ExportError, ConverterNotFoundError, ModelNotFoundError, FileNotFoundError, RuntimeError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    console.print(f"[green]exported[/] {result.format} to {result.out} ({result.bytes / 1e6:.1f} MB, "
                  f"{result.seconds:.1f}s): {', '.join(result.files)}")
    if result.format == "ollama":
        console.print(f"run it: ollama create {Path(result.out).name} -f {result.out}/Modelfile")


def register(app: typer.Typer) -> None:
    """Add `export-model` to the main app."""
    app.command("export-model")(export_model_command)
