"""An SAE's non-zero codes as sparse triples, without the dense codes where the rule allows.

In: an `SAE` and inputs x (n_rows, d_in). Out: (rows, features, values), the
non-zeros of `sae.encode(x)`, row-major with features ascending (`encode_sparse`).
The latents stage and `saescope.examples` (activations from the SAE) both encode
the store with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from saescope.sae.model import SAE


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run small torch ops on one thread: on a busy machine, waking a second intra-op
    thread for each of dozens of tiny ops per batch costs far more than the ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def encode_sparse(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zeros of `sae.encode(x)` as (rows, features, values), row-major, features ascending.

    An architecture that can skip the dense codes does (TopK: the k largest
    pre-activations of each row, then relu; the tests compare the result with
    `sae.encode`); the others scan the dense codes.
    """
    found = sae.arch.encode_sparse(sae, x)
    if found is not None:
        return found
    codes = sae.encode(x)  # (batch, d_sae)
    with one_thread():
        r, f = codes.nonzero(as_tuple=True)
        return r, f, codes[r, f]
