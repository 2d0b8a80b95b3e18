"""LLM scorers: how well a name (LLM explanation or keywords) predicts held-out activations.

One module per scorer, each with NAME, TOKENS_ONLY and
`async score(ctx, feature, name, samples) -> Outcome`; `SCORERS` maps names to
modules. `base.py` holds the samples (SCORING half only), the request helper and
the metrics; `stage.py` the resumable stage behind `saescope score --scorer NAME`.
"""

from saescope.scoring.llm import detection, fuzzing, intruder, simulation, surprisal

SCORERS = {m.NAME: m for m in (detection, fuzzing, intruder, simulation, surprisal)}

__all__ = ["SCORERS"]
