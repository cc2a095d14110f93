"""Evaluation's QA data sets are the foundation's (`ragtune.datasets`, one reader per format, shared with ingestion
and synthesis). This module keeps the names eval/runner.py and older callers import; new code imports
`ragtune.datasets`."""

from __future__ import annotations

from ragtune.datasets import FORMATS, LOADERS, DatasetError, QAItem, Split, load_dataset, load_items, select
from ragtune.records import ContextDoc
from ragtune.splits import split_of

EvalDoc = ContextDoc  # the former name, kept while eval/runner.py imports it: documents are `records.ContextDoc`

__all__ = ["FORMATS", "LOADERS", "DatasetError", "EvalDoc", "QAItem", "Split", "load_dataset", "load_items", "select",
           "split_of"]
