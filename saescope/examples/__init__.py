"""Which rows stand for a feature, and which half of the naming/scoring split they come from.

The one place that decides a feature's examples: the keywords stage, the scorers,
the report, `saescope inspect` (and the LLM explainers and dashboard to come) call
this package; none picks rows itself.

    ex = open_examples(run, "latents", split_seed=1)        # activations + split
    fe = ex.of(feature, "naming", ExampleOptions(n_top=50))   # -> FeatureExamples
    fe.top_rows, fe.quantile_rows, fe.random_rows, fe.hard_rows

A sub-package because it holds several small concepts, one file each:
  split.py        the naming/scoring split, by document (`Split`, `load_split`)
  activations.py  every row's codes as one CSC matrix, built in one copy (`Activations`)
  select.py       the example rules and `FeatureExamples` / `Examples` / `open_examples`
  table.py        the same rules streamed over the cache for `latents/features.parquet`
  texts.py        the texts and text vectors of example rows
  tokens.py       what a row is (text or token): row -> text for any run, token windows
                  with a feature's activation on every token (LM runs)
  shown.py        rows as an LLM is shown them (texts, token windows with << >> marks)
  nearest.py      inactive rows nearest to a feature's active ones (by sentence embedding)
"""

from saescope.examples.activations import (
    ACTIVATION_SOURCES,
    Activations,
    csc_from_triples,
    load_activations,
)
from saescope.examples.select import (
    ExampleOptions,
    Examples,
    FeatureExamples,
    from_features_row,
    open_examples,
)
from saescope.examples.split import HALVES, SPLIT_KINDS, Split, load_split, make_split
from saescope.examples.texts import run_model_name, store_is_text_embedding, text_vectors

__all__ = [
    "ACTIVATION_SOURCES",
    "HALVES",
    "SPLIT_KINDS",
    "Activations",
    "ExampleOptions",
    "Examples",
    "FeatureExamples",
    "Split",
    "csc_from_triples",
    "from_features_row",
    "load_activations",
    "load_split",
    "make_split",
    "open_examples",
    "run_model_name",
    "store_is_text_embedding",
    "text_vectors",
]
