"""The commented `ragtune.yaml` that `ragtune init` writes (kept as a string: no package data to ship)."""

STARTER = """\
# ragtune.yaml: the whole chain in one file. Run it with `ragtune run ragtune.yaml`.
#
# Stages, in order: ingest -> search -> synth -> train -> retriever -> compare (which writes the report).
# A stage whose settings, input files and earlier stages' outputs are unchanged is skipped (it says so), so run
# the same command again after editing any value: only that stage and those after it run. An interrupted run
# (Ctrl-C, kill -9) resumes where it stopped. `--from STAGE` re-runs a stage and the ones after it; `--only STAGE`
# runs just that one. Every key is checked on load: a typo is an error that lists the allowed keys.
#
# Relative paths are relative to this file's folder. Every stage section takes the same settings as its command
# (`ragtune ingest --help`, `ragtune synth raft --help`, `ragtune train sft --help`, `ragtune compare --help`), with
# dashes written as underscores.

workspace:
  path: ragtune-workspace          # index, training data, adapters, report, run_state.json, run.log

ingest:
  paths: [docs]                    # files or folders: txt, md, html, pdf, docx, json, jsonl, ...
  chunker: sentences               # tokens | sentences | paragraphs | semantic
  chunk_size: 240                  # in the embedder's tokens

# A look at retrieval right after ingest (optional): the top hits of a few queries.
search:
  queries: ["What is this collection about?"]
  k: 3

# Training data. raft: a teacher writes questions about each chunk and answers that quote it. The default teacher
# is the bundled SmolLM2-135M (offline, weak); a stronger one writes far better data, e.g.
#   teacher: openai:gpt-4o-mini    (base_url: default $OPENAI_BASE_URL; the key is read from $OPENAI_API_KEY)
# For a labelled QA set instead: method: from-qa, data: {format: hotpotqa, path: FILE}, from_qa: {cot: evidence}.
synth:
  method: raft
  teacher: null
  raft:
    questions_per_chunk: 2
    distractors: 3                 # k distractor chunks per example
    p_oracle: 0.8                  # probability of keeping the oracle chunk
    limit: 50                      # at most this many chunks (remove for all of them)
  export:
    - {format: openai-chat, out: raft_openai_chat.jsonl}

# The generator: RAFT-LoRA on the train split of the synthesized data (1 in 5 questions is held out).
train:
  name: raft-lora
  max_steps: 100                   # a fixed step count: the same adapter on a busy or an idle machine
  batch_size: 2
  grad_accum: 1
  lr: 3.0e-4
  max_length: 768
  seed: 0
  lora: {r: 16, dropout: 0.0}

# The retriever (optional): RA-DIT LM-supervised retrieval trains the query encoder; the index is left as it is.
# retriever:
#   method: lsr
#   lsr: {top_k: 10, epochs: 1}

# Before / after on the held-out questions of the synthesized data. `adapter: trained` is the adapter trained above.
compare:
  data: {format: raft}            # the synthesized questions (WORKSPACE/synth/raft.jsonl), held-out split
  limit: 40
  title: "RAFT on my documents: before / after"
  defaults: {setting: oracle, distractors: 2, max_new_tokens: 160, dtype: auto}
  systems:
    - {name: base model, prompt: cot}
    - {name: RAFT-LoRA tuned, prompt: cot, adapter: trained}
"""
