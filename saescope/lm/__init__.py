"""Causal language models: loading (the packaged SmolLM2 by default), hookpoints, tokens.

A sub-package because the LM half has several small concepts, one file each:
  model.py   load any Hugging Face causal LM, or the packaged GGUF dequantised once (`load_lm`)
  hooks.py   hookpoints by site and layer or module name; capture (stopping the forward), replace
  tokens.py  corpus texts to packed or padded contexts, and which tokens become store rows
  acts.py    the `saescope acts` stage
"""
