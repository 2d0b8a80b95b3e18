"""Compare two SAEs feature by feature (`saescope compare A B`).

Two SAEs of one input space (two seeds, two widths, two architectures, ours and a
published one) are matched by their features' directions: every feature's nearest
partner in the other SAE by decoder cosine (the mean of those maxima is the MMCS,
mean max cosine similarity), and a one-to-one matching of the two dictionaries
(Hungarian on decoder cosine; mutual nearest neighbours above 8192 x 8192). A pair is
*shared* when both its decoder and its encoder cosines reach the threshold (0.7, as
Paulo & Belrose 2025 count features two seeds share). With a run's activation store,
both SAEs encode a sample of its rows: only the features that fire there take part,
on both sides, each pair gets the correlation of its activations, and where one SAE
is the run's latent cache's SAE its features are shown by their names.

In: two SAEs `load_sae` reads (folders, files, `hf:` names; inside a run by folder
name with `--run`). Out: `CompareResult` (`compare()`), printed or as JSON; nothing
is written.
"""

from saescope.compare.report import CompareResult, compare, main

__all__ = ["CompareResult", "compare", "main"]
