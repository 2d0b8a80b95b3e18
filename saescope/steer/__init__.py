"""Steering generation with SAE features (`saescope steer`).

A sub-package because steering has several small concepts, one file each:
  hook.py      the position-aware steering hook, correct with and without the KV cache
  generate.py  batched generation from prompts, unsteered and steered alike
  measure.py   concept activation, perplexity and output score, without a judge
  sweep.py     choosing a strength on half the prompts, reporting it on the other half
  stage.py     the `saescope steer` stage
The edits themselves (add, clamp, ablate, keeping the SAE's error term) are
`saescope.edits`, shared with search steering.
"""
