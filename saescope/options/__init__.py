"""The options of every stage: one frozen config dataclass per stage, in light modules.

These modules import nothing heavy (no torch, pandas or sentence-transformers),
so the CLI builds every `--help` in a fraction of a second without importing a
stage. Each stage module uses its config from here and re-exports it
(`saescope.corpus.CorpusConfig is saescope.options.corpus.CorpusConfig`).
Training's options are in `saescope/train/config.py`, light as well.
"""
