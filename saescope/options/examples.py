"""Choices of `saescope.examples` that stage options offer (keywords, score).

Light like every options module: `--help` is built from these tuples and
`saescope.examples` checks its inputs against the same ones.
"""

from __future__ import annotations

from typing import Any

from saescope.config import option

# where feature activations come from: the latent cache, or the SAE run over the store
ACTIVATION_SOURCES = ("latents", "sae")
# the naming/scoring split: every row of a document in one half, or each row on its own
SPLIT_KINDS = ("doc", "row")


def activations_option() -> Any:
    """The `--activations` option of every stage that reads feature activations."""
    return option(
        "latents",
        "where feature activations come from: the latent cache, or the SAE run over the store",
        choices=ACTIVATION_SOURCES,
    )
