"""benchmarks/retriever.py's results file: the keys the checks read (corpora.<name>.<method>.ndcg@10, .best), and a
method that could not run reported as missing, never as a number."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_retriever", ROOT / "benchmarks" / "retriever.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_keys_best_and_missing(tmp_path):
    bench = load_benchmark()
    results = bench.Results(tmp_path / "r.json", meta={"quick": True})
    results.corpus("scifact", documents=10)

    def modes(ndcg: float) -> dict:
        return {"dense": {"ndcg@10": ndcg, "recall@10": 0.5, "recall@100": 0.9, "mrr@10": 0.4, "n": 3.0},
                "hybrid+rerank": {"ndcg@10": ndcg + 0.1, "recall@10": 0.6, "recall@100": 0.9, "mrr@10": 0.5}}

    results.method("scifact", "base", bench.scored_entry("base", modes(0.50)))
    results.method("scifact", "contrastive", bench.scored_entry("contrastive", modes(0.55)))
    results.method("scifact", "reranker", bench.scored_entry("reranker", modes(0.40)))  # headline: hybrid+rerank
    results.method("scifact", "lsr_tuned_lm", {"missing": "no tuned generator adapter"})
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    corpus = data["corpora"]["scifact"]
    assert corpus["base"]["ndcg@10"] == 0.5 and corpus["base"]["mode"] == "dense"
    assert corpus["reranker"]["ndcg@10"] == 0.5 and corpus["reranker"]["mode"] == "hybrid+rerank"
    assert corpus["contrastive"]["vs_base"] == 1.1
    assert corpus["best"] == "contrastive"
    assert corpus["missing"] == ["lsr_tuned_lm"] and "ndcg@10" not in corpus["lsr_tuned_lm"]
    assert data["summary"]["scifact.contrastive.ndcg@10"] == 0.55
    assert "scifact.lsr_tuned_lm.ndcg@10" not in data["summary"]


def test_a_second_invocation_keeps_the_other_corpus(tmp_path):
    bench = load_benchmark()
    path = tmp_path / "r.json"
    first = bench.Results(path, meta={"quick": False, "command": "retriever.py --corpora hotpotqa"})
    first.corpus("hotpotqa", documents=10)
    first.method("hotpotqa", "base", {"ndcg@10": 0.7, "mode": "dense"})
    second = bench.Results(path, meta={"quick": False, "command": "retriever.py --corpora scifact"},
                           keep_others=["scifact"])
    second.corpus("scifact", documents=5)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["corpora"]["hotpotqa"]["base"]["ndcg@10"] == 0.7  # carried over, with the command that made it
    assert data["corpora"]["hotpotqa"]["meta"]["command"] == "retriever.py --corpora hotpotqa"
    assert data["corpora"]["scifact"]["meta"]["command"] == "retriever.py --corpora scifact"
    quick = bench.Results(path, meta={"quick": True}, keep_others=["scifact"])  # a quick run never mixes with a full
    assert "hotpotqa" not in quick.data["corpora"]
