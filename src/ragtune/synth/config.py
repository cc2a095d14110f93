"""Settings of the synthesis builders, one pydantic model per command (`RaftConfig` for `ragtune synth raft`,
`FromQAConfig` for `synth from-qa`, `PairsConfig`, `PreferencesConfig`, `FromFeedbackConfig`), validated when built.

The same models are the `synth:` section of `ragtune run`'s YAML (`synth.raft`, `synth.from_qa`; see
`ragtune.run.config`), so a field added here is a key there with the same default and the same check, and a bad value
in a YAML file fails when the file is read, not when synthesis starts. Unknown fields are errors (a typo must not
silently synthesize with the default). A bad value fails with a `pydantic.ValidationError` whose message names the
command-line option that sets it (`--p-oracle must be between 0 and 1, got 1.5`); its location names the field.

The builders (`raft.py`, `from_qa.py`, ...) import their model from here; `ragtune.synth.raft.RaftConfig` and the
others stay importable where they always were.
"""

from __future__ import annotations

import random
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from ragtune.config import SEARCH_MODES, StrictSettings, at_least, between, one_of, setting_error
from ragtune.prompts import STUDENT_SYSTEM
from ragtune.synth.filters import ROUND_TRIP_MODES
from ragtune.synth.teacher_prompts import STYLES as PROMPT_STYLES

SPLITS = ("train", "eval", "all")
TEACHER_CONTEXTS = ("all", "oracle")
COT_STYLES = ("full", "short")
COT_MODES = ("evidence", "evidence-short", "teacher")
DISTRACTOR_SOURCES = ("auto", "own", "index", "pool")


# train | eval | all, and the teacher's view: the same check in every builder that takes them
SplitName = Annotated[str, AfterValidator(lambda v: one_of(v, SPLITS, "--split"))]
TeacherContext = Annotated[str, AfterValidator(lambda v: one_of(v, TEACHER_CONTEXTS, "--teacher-context"))]


def _option(info: ValidationInfo) -> str:
    """The command-line option of the field being checked (`p_oracle` -> `--p-oracle`)."""
    return "--" + str(info.field_name).replace("_", "-")


class RaftConfig(StrictSettings):
    """Settings of `ragtune synth raft`. Fields in `FINGERPRINT` must match to resume into an existing file."""

    questions_per_chunk: int = Field(default=3, description="Questions the teacher writes per chunk "
                                     "(`--questions-per-chunk`).")
    distractors: int = Field(default=3, description="k distractor documents per example (`--distractors`).")
    p_oracle: float = Field(default=0.8, description="Probability of KEEPING the oracle in an example, in [0, 1] "
                            "(the paper's P; `--p-oracle`).")
    hard_negatives: bool = Field(default=False, description="Mine distractors from the index (similar, but wrong) "
                                 "instead of random chunks (`--hard-negatives`).")
    search_mode: str = Field(default="hybrid", description="Search mode that mines hard negatives: hybrid | dense | "
                             "bm25.")
    limit: int | None = Field(default=None, description="At most N chunks, a seed-chosen spread (`--limit`).")
    seed: int = Field(default=0, description="Seed of chunk choice, distractors and oracle draws (`--seed`).")
    concurrency: int = Field(default=8, description="Chunks per wave: batch size (local teacher) or requests in "
                             "flight (server) (`--concurrency`).")
    retries: int = Field(default=1, description="Re-asks of the teacher for an invalid answer (`--retries`).")
    teacher_context: TeacherContext = Field(default="all", description="all: the teacher sees oracle + "
                                            "distractors, as the student will | oracle: the oracle only "
                                            "(`--teacher-context`).")
    min_quotes: int = Field(default=1, description="Verbatim quotes a valid answer needs.")
    question_tokens: int = Field(default=160, description="Token budget of the teacher's questions "
                                 "(`--question-tokens`).")
    answer_tokens: int = Field(default=384, description="Token budget of the teacher's answers (`--answer-tokens`).")
    temperature: float = Field(default=0.0, description="Teacher temperature (0: greedy).")
    min_chunk_words: int = Field(default=12, description="Chunks with fewer words are not asked about.")
    # prompts and grounding
    prompt_style: str = Field(default="auto", description="fewshot (one question + short answer per sentence, for "
                              "small local teachers) | instruct (questions, then quoted CoT answers, for strong "
                              "ones) | auto: fewshot for local teachers, instruct for openai: (`--prompt-style`).")
    ground: bool = Field(default=True, description="Locate the evidence in the chunk when the teacher's quotes are "
                         "not verbatim (`--ground/--no-ground`).")
    cot_style: str = Field(default="full", description="Grounded chain of thought: full (connecting prose) | short "
                           "(quotes + answer) (`--cot-style`).")
    fuzzy_threshold: float = Field(default=85.0, description="0-100 partial ratio for the fuzzy tier of answer "
                                   "alignment (`--fuzzy-threshold`).")
    max_quotes: int = Field(default=2, description="Most quotes a grounded chain of thought holds.")
    resample: int = Field(default=0, description="Few-shot: ask a slot whose candidate was rejected again, up to N "
                          "times, sampling (`--resample`).")
    resample_temperature: float = Field(default=0.8, description="Sampling temperature of those re-asks (> 0).")
    # filters (each counted; rejections kept in rejected.jsonl)
    copy_threshold: float = Field(default=0.8, description="A question this similar (0-1 character ratio) to a chunk "
                                  "sentence is a copy, and rejected.")
    round_trip_k: int = Field(default=5, description="Keep a question only when the retriever finds its chunk in the "
                              "top k; 0 turns the check off (`--round-trip-k`).")
    round_trip: str = Field(default="retriever", description="retriever (top k) | student (shown only the chunk, it "
                            "gives the teacher's answer) | either (the retriever, else the student) | both (the "
                            "retriever, then the student) (`--round-trip`).")
    student_match: float = Field(default=0.5, description="0-1 agreement (F1 or answer recall) the student's answer "
                                 "needs with the teacher's (`--student-match`).")
    dedup_threshold: float = Field(default=0.9, description="MiniLM cosine at or above which a question duplicates an "
                                   "earlier one; 1 or more: off (`--dedup-threshold`).")
    max_question_words: int = Field(default=30, description="Longer questions are rejected.")
    max_answer_words: int = Field(default=12, description="Answers longer than this (after shortening) are rejected "
                                  "(`--max-answer-words`).")
    short_answer_words: int = Field(default=6, description="A longer teacher answer is shortened to the part the "
                                    "question does not say.")
    max_cot_words: int = Field(default=160, description="Longer chains of thought are rejected.")

    FINGERPRINT: ClassVar[tuple[str, ...]] = (
        "questions_per_chunk",
        "distractors",
        "p_oracle",
        "hard_negatives",
        "search_mode",
        "seed",
        "retries",
        "teacher_context",
        "min_quotes",
        "question_tokens",
        "answer_tokens",
        "temperature",
        "min_chunk_words",
        "prompt_style",
        "ground",
        "cot_style",
        "fuzzy_threshold",
        "max_quotes",
        "copy_threshold",
        "round_trip_k",
        "dedup_threshold",
        "max_question_words",
        "max_answer_words",
        "short_answer_words",
        "max_cot_words",
    )
    # settings added later, with the value every file written before them implies: in the fingerprint only when
    # set otherwise, so those files still resume
    FINGERPRINT_LATER: ClassVar[dict[str, Any]] = {"round_trip": "retriever", "student_match": 0.5, "resample": 0,
                                                   "resample_temperature": 0.8}

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the file it appends to."""
        data = {k: getattr(self, k) for k in self.FINGERPRINT}
        return data | {k: getattr(self, k) for k, default in self.FINGERPRINT_LATER.items()
                       if getattr(self, k) != default}

    @field_validator("p_oracle", "student_match")
    @classmethod
    def _share(cls, value: float, info: ValidationInfo) -> float:
        return between(value, 0, 1, _option(info))

    @field_validator("fuzzy_threshold")
    @classmethod
    def _fuzzy(cls, value: float) -> float:
        return between(value, 0, 100, "--fuzzy-threshold")

    @field_validator("distractors", "retries", "round_trip_k", "resample", "dedup_threshold")
    @classmethod
    def _not_negative(cls, value: float, info: ValidationInfo) -> float | None:
        return at_least(value, 0, _option(info))

    @field_validator("questions_per_chunk", "concurrency", "limit", "max_answer_words")
    @classmethod
    def _positive(cls, value: int | None, info: ValidationInfo) -> int | None:
        return at_least(value, 1, _option(info))

    @field_validator("question_tokens", "answer_tokens")
    @classmethod
    def _token_budget(cls, value: int, info: ValidationInfo) -> int | None:
        return at_least(value, 8, _option(info))

    @field_validator("max_quotes", "min_quotes")
    @classmethod
    def _quotes(cls, value: int, info: ValidationInfo) -> int | None:
        return at_least(value, 1, str(info.field_name))

    @field_validator("resample_temperature")
    @classmethod
    def _resample_temperature(cls, value: float) -> float:
        if value <= 0:
            raise setting_error(f"resample_temperature must be > 0, got {value}")
        return value

    @field_validator("prompt_style")
    @classmethod
    def _prompt_style(cls, value: str) -> str:
        return one_of(value, PROMPT_STYLES, "--prompt-style")

    @field_validator("cot_style")
    @classmethod
    def _cot_style(cls, value: str) -> str:
        return one_of(value, COT_STYLES, "--cot-style")

    @field_validator("round_trip")
    @classmethod
    def _round_trip(cls, value: str) -> str:
        return one_of(value, ROUND_TRIP_MODES, "--round-trip")

    @field_validator("search_mode")
    @classmethod
    def _search_mode(cls, value: str) -> str:
        return one_of(value, SEARCH_MODES, "search_mode")


class FromQAConfig(StrictSettings):
    """Settings of `ragtune synth from-qa`. Fields in `FINGERPRINT` must match to resume into an existing file."""

    cot: str = Field(default="evidence", description="evidence: quote the gold evidence (no teacher) | "
                     "evidence-short: the quotes and the answer only | teacher: a teacher writes it (`--cot`).")
    distractors: int = Field(default=3, description="k distractor documents per example (`--distractors`).")
    # With a maximum, each example draws its own k from distractors..distractors_max (seeded by its id): a student
    # trained at one k learns to answer from that many documents only (RAFT trained at k=1 fell from 1.86x the base
    # F1 at K=3 to 1.02x at K=6 in benchmarks/raft_hotpotqa.py).
    distractors_max: int | None = Field(default=None, description="Draw each example's k uniformly from distractors "
                                        "to this, so the student learns to answer from as many documents as it will "
                                        "be shown (`--distractors-max`).")
    p_oracle: float = Field(default=0.8, description="Probability of KEEPING the oracle in an example, in [0, 1] "
                            "(`--p-oracle`).")
    distractor_source: str = Field(default="auto", description="auto | own (the example's context) | index (the "
                                   "workspace's) | pool (the data set's other documents) (`--distractor-source`).")
    split: SplitName = Field(default="train", description="train | eval | all: the hash split of the questions "
                             "used (`--split`).")
    limit: int | None = Field(default=None, description="The first N questions (`--limit`).")
    seed: int = Field(default=0, description="Seed of distractor and oracle draws (`--seed`).")
    concurrency: int = Field(default=8, description="Teacher batch size or requests in flight (`--concurrency`).")
    retries: int = Field(default=1, description="Re-asks of the teacher for an invalid answer (`--retries`).")
    teacher_context: TeacherContext = Field(default="all", description="cot teacher: all (oracle + distractors) | "
                                            "oracle.")
    answer_tokens: int = Field(default=384, description="cot teacher: token budget of an answer.")
    include_unanswerable: bool = Field(default=False, description="Keep SQuAD 2.0's impossible questions "
                                       "(`--include-unanswerable`).")

    FINGERPRINT: ClassVar[tuple[str, ...]] = (
        "cot",
        "distractors",
        "distractors_max",
        "p_oracle",
        "distractor_source",
        "split",
        "seed",
        "retries",
        "teacher_context",
        "answer_tokens",
        "include_unanswerable",
    )

    @field_validator("cot")
    @classmethod
    def _cot(cls, value: str) -> str:
        return one_of(value, COT_MODES, "--cot")

    @field_validator("p_oracle")
    @classmethod
    def _p_oracle(cls, value: float) -> float:
        return between(value, 0, 1, "--p-oracle")

    @field_validator("distractors", "distractors_max", "retries")
    @classmethod
    def _not_negative(cls, value: int | None, info: ValidationInfo) -> int | None:
        return at_least(value, 0, _option(info))

    @field_validator("concurrency", "limit")
    @classmethod
    def _positive(cls, value: int | None, info: ValidationInfo) -> int | None:
        return at_least(value, 1, _option(info))

    @field_validator("answer_tokens")
    @classmethod
    def _answer_tokens(cls, value: int) -> int | None:
        return at_least(value, 8, "answer_tokens")

    @field_validator("distractor_source")
    @classmethod
    def _distractor_source(cls, value: str) -> str:
        return one_of(value, DISTRACTOR_SOURCES, "--distractor-source")

    @model_validator(mode="after")
    def _distractor_range(self) -> Any:
        if self.distractors_max is not None and self.distractors_max < self.distractors:
            raise setting_error(f"--distractors-max ({self.distractors_max}) must be >= --distractors "
                                f"({self.distractors})")
        return self

    @property
    def most_distractors(self) -> int:
        return self.distractors if self.distractors_max is None else self.distractors_max

    def draw_distractors(self, rng: random.Random) -> int:
        """This example's k: fixed, or uniform over distractors..distractors_max."""
        if self.distractors_max is None:
            return self.distractors
        return rng.randint(self.distractors, self.distractors_max)


class PairsConfig(StrictSettings):
    """Settings of `ragtune synth pairs`: (question, positive chunk, hard negatives) for retriever training."""

    negatives: int = Field(default=3, description="Hard negatives per question (`--negatives`).")
    mode: str = Field(default="hybrid", description="Search mode that mines negatives: hybrid | dense | bm25 "
                      "(`--mode`).")
    depth: int = Field(default=30, description="Hits searched per question for negatives.")
    split: SplitName = Field(default="train", description="train | eval | all: the hash split of the RAFT examples "
                             "used (`--split`).")
    mine: bool | None = Field(default=None, description="Mine negatives from the index; None: when the workspace has "
                              "one, else the example's own distractors (`--mine/--no-mine`).")

    @field_validator("negatives")
    @classmethod
    def _negatives(cls, value: int) -> int | None:
        return at_least(value, 0, "--negatives")

    @field_validator("depth")
    @classmethod
    def _depth(cls, value: int) -> int | None:
        return at_least(value, 1, "depth")

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        return one_of(value, SEARCH_MODES, "--mode")



class PreferencesConfig(StrictSettings):
    """Settings of `ragtune synth preferences`: DPO pairs from the student's own mistakes."""

    limit: int | None = Field(default=None, description="The first N RAFT examples (`--limit`).")
    split: SplitName = Field(default="train", description="train | eval | all: the hash split of the RAFT examples "
                             "used (`--split`).")
    max_new_tokens: int = Field(default=256, description="Token budget of the student's answer (`--max-tokens`).")
    concurrency: int = Field(default=8, description="Student batch size or requests in flight (`--concurrency`).")
    synthetic: bool = Field(default=True, description="When the student is right, reject an answer that cites a "
                            "distractor instead (`--synthetic/--no-synthetic`).")
    seed: int = Field(default=0, description="Seed of the synthetic rejected answers (`--seed`).")
    system_prompt: str | None = Field(default=STUDENT_SYSTEM, description="The student's system prompt (default: "
                                      "the RAFT student prompt); None: no system message.")
    f1_threshold: float = Field(default=0.5, description="A student answer below this token F1 with the gold answer "
                                "is wrong, in [0, 1].")

    @field_validator("limit", "concurrency")
    @classmethod
    def _positive(cls, value: int | None, info: ValidationInfo) -> int | None:
        return at_least(value, 1, _option(info))

    @field_validator("max_new_tokens")
    @classmethod
    def _max_new_tokens(cls, value: int) -> int | None:
        return at_least(value, 8, "--max-tokens")

    @field_validator("f1_threshold")
    @classmethod
    def _f1_threshold(cls, value: float) -> float:
        return between(value, 0, 1, "f1_threshold")


class FromFeedbackConfig(StrictSettings):
    """Settings of `ragtune synth from-feedback`: which served answers' feedback becomes training data."""

    tenant: str | None = Field(default=None, description="Only this tenant's feedback; None: every tenant's (the "
                               "operator trains one model for all) (`--tenant`).")
    reviewed_only: bool = Field(default=False, description="Only feedback a curator accepted or edited; default: all "
                                "but rejected (`--reviewed-only`).")
