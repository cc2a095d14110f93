"""One config style for every stage: pydantic models with a description on every field, unknown keys refused, a bad
value refused when the model is built (so a bad value in a `ragtune.yaml` fails when the file is read, naming the
key and the command-line option), and the same fields, defaults and dumps as the dataclasses they replaced, so the
demo's stage keys (which decide whether `ragtune run` skips a stage) and eval's answer signatures do not move."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from ragtune.eval.settings import EvalSettings, SystemSpec
from ragtune.run import stages
from ragtune.run.config import ConfigError, load_config
from ragtune.run.state import settings_hash
from ragtune.synth.config import FromFeedbackConfig, FromQAConfig, PairsConfig, PreferencesConfig, RaftConfig
from ragtune.train.config import DAPRunConfig, DPORunConfig, LoraSettings, SFTRunConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = [RaftConfig, FromQAConfig, PairsConfig, PreferencesConfig, FromFeedbackConfig, EvalSettings, SystemSpec,
          LoraSettings, SFTRunConfig, DPORunConfig, DAPRunConfig]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_stage_model_describes_its_fields_and_refuses_unknown_keys(model: type[BaseModel]):
    undescribed = [name for name, f in model.model_fields.items() if not (f.description or "").strip()]
    assert not undescribed, f"{model.__name__}: fields without a description: {undescribed}"
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({"no_such_setting": 1})
    model()  # the defaults are valid


@pytest.mark.parametrize("model, values, message", [
    (RaftConfig, {"p_oracle": 1.5}, "--p-oracle must be between 0 and 1, got 1.5"),
    (RaftConfig, {"limit": 0}, "--limit must be >= 1, got 0"),
    (RaftConfig, {"prompt_style": "chatty"}, "--prompt-style must be one of fewshot, instruct, auto, got 'chatty'"),
    (RaftConfig, {"question_tokens": 4}, "--question-tokens must be >= 8, got 4"),
    (FromQAConfig, {"distractor_source": "web"}, "--distractor-source must be one of auto, own, index, pool"),
    (FromQAConfig, {"concurrency": 0}, "--concurrency must be >= 1, got 0"),
    (PairsConfig, {"mode": "fuzzy"}, "--mode must be one of hybrid, dense, bm25, got 'fuzzy'"),
    (PreferencesConfig, {"split": "test"}, "--split must be one of train, eval, all, got 'test'"),
    (EvalSettings, {"setting": "open-book"}, "unknown setting 'open-book' (--setting)"),
    (EvalSettings, {"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    (SystemSpec, {"k": 0}, "--top-k must be >= 1, got 0"),
    (SystemSpec, {"distractors": "many"}, "--distractors 'many': expected K, A..B"),
])
def test_a_bad_value_names_its_option(model: type[BaseModel], values: dict, message: str):
    with pytest.raises(ValidationError) as info:
        model.model_validate(values)
    assert message in str(info.value)


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "ragtune.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_a_bad_synth_value_in_a_yaml_fails_on_load_naming_the_key(tmp_path):
    """Before, synth's sections were copies of its dataclasses' fields without their checks: p_oracle 1.5 loaded,
    and failed only when the synth stage ran (after ingest)."""
    base = {"ingest": {"paths": ["docs"]}}
    raft = _write(tmp_path, {**base, "synth": {"method": "raft", "raft": {"p_oracle": 1.5}}})
    assert f"{raft}: synth.raft.p_oracle: --p-oracle must be between 0 and 1, got 1.5" in _load_error(raft)

    from_qa = _write(tmp_path, {**base, "synth": {"method": "from-qa", "data": {"format": "hotpotqa", "path": "q.json"},
                                                  "from_qa": {"cot": "none", "p_oracle": 2.5}}})
    message = _load_error(from_qa)
    assert "synth.from_qa.cot: --cot must be one of evidence, evidence-short, teacher, got 'none'" in message
    assert "synth.from_qa.p_oracle: --p-oracle must be between 0 and 1, got 2.5" in message  # every problem is listed
    ranged = _write(tmp_path, {**base, "synth": {"method": "raft",
                                                 "from_qa": {"distractors": 3, "distractors_max": 1}}})
    assert "synth.from_qa: --distractors-max (1) must be >= --distractors (3)" in _load_error(ranged)

    typo = _write(tmp_path, {**base, "synth": {"method": "raft", "raft": {"p_orcale": 0.5}}})
    message = _load_error(typo)
    assert "unknown key 'synth.raft.p_orcale'" in message and "p_oracle" in message  # the allowed keys are listed

    system = _write(tmp_path, {**base, "compare": {"data": {"format": "hotpotqa", "path": "q.json"},
                                                   "systems": [{"name": "base", "k": 0}]}})
    assert "system 'base': k: --top-k must be >= 1, got 0" in _load_error(system)


# settings_hash of the demo's (and the second example's) stage settings before synth's and eval's settings were
# pydantic models: a run of an unchanged config must still skip these stages (`ragtune run`'s stage keys).
PINNED = {
    ("demo", "synth"): "7826404fe5877b95ae3279bfeef8c7d017066b4d025ba9b87d1d6e96c099fcfd",
    ("demo", "train"): "65f9ed2504a7440ad29698e44bf14a5a03be456cda4c815bbbc00184c55af585",
    ("own_docs", "synth"): "0c559ca3c2e6eda78c6282ff76b68f7f72426b21926e0cc5be8c17dac1b43390",
}


@pytest.mark.parametrize("example, stage", sorted(PINNED))
def test_the_example_configs_keep_their_stage_keys(example: str, stage: str):
    cfg = load_config(EXAMPLES / example / "ragtune.yaml")
    plan = getattr(stages, f"plan_{stage}")(cfg)
    assert settings_hash(plan.settings) == PINNED[(example, stage)]


def test_eval_signatures_keep_their_fields():
    """`identity()` is part of every eval run's resume signature: answers kept by earlier runs must be reused."""
    assert EvalSettings().identity() == {"setting": "oracle", "distractors": 0, "k": 5, "retrieval_mode": "hybrid",
                                         "prompt": "short", "max_new_tokens": 32, "seed": 0,
                                         "allow_unanswerable": None}
    spec = SystemSpec.from_dict({"name": "s", "setting": "retrieved", "mode": "dense", "top_k": 3,
                                 "search": {"transform": "hyde"}, "prompt": "cot"})
    assert spec.settings(4).identity() == {"setting": "retrieved", "distractors": 0, "k": 3, "retrieval_mode": "dense",
                                           "prompt": "cot", "max_new_tokens": 256, "seed": 0,
                                           "allow_unanswerable": None, "search": {"transform": "hyde"}}
    assert SystemSpec(distractors="0..2").ks() == [0, 1, 2]


@pytest.mark.parametrize("args, message", [
    (["synth", "pairs", "--mode", "fuzzy"], "--mode must be one of hybrid, dense, bm25, got 'fuzzy'"),
    (["synth", "from-qa", "hotpotqa", "{data}", "--cot", "none"], "--cot must be one of evidence"),
])
def test_a_bad_synth_option_is_one_line_and_exit_code_2(tmp_path, args, message):
    """Checked by the model before any teacher, student or index loads: one line, no traceback."""
    from ragtune.cli import app

    data = tmp_path / "q.json"
    data.write_text("[]", encoding="utf-8")
    argv = [a.replace("{data}", str(data)) for a in args] + ["--workspace", str(tmp_path / "ws")]
    result = CliRunner().invoke(app, argv, prog_name="ragtune")
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, result.output
    assert message in said and "Traceback" not in said
