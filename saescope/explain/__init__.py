"""LLM explanations of features (`saescope explain`).

  explainers.py  default and contrastive: a feature's naming-half examples -> one request
  stage.py       the stage: prompts, the asynchronous resumable run, the files it writes

Prompts are package data (`saescope.prompts`); rows are shown by
`saescope.examples.shown`; requests go through `saescope.llm`.
"""

from saescope.explain.explainers import EXPLAINERS

__all__ = ["EXPLAINERS"]
