"""`ragtune run CONFIG.yaml`: the whole chain (ingest -> search -> synth -> train -> retriever -> compare) from one
file, each stage skipped when nothing it depends on changed. The top layer: it may import every stage, and no stage
imports it."""
