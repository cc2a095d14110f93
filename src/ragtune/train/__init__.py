"""Training: the generator (RAFT / RA-DIT SFT, DPO, domain-adaptive pre-training) and the retriever.

Each trainer reads the plain files earlier stages wrote (synth/*.jsonl, the index) and writes an adapter or a model
folder plus a manifest under `WORKSPACE/train/<run>/`. Generator trainers are built on TRL and PEFT, not rewritten.
"""
