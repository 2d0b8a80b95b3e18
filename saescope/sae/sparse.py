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

    TopK SAEs skip the dense codes: the k largest pre-activations of each row, then
    relu, exactly as `SAE.sparsify` does before scattering them into a dense matrix
    (the tests compare the result with `sae.encode`). Other architectures scan the
    dense codes.
    """
    if sae.cfg.architecture == "topk":
        xs, _, _ = sae._standardize(x.to(sae.W_enc.dtype))
        h = sae.pre_activations(xs)  # (batch, d_sae)
        vals, idx = torch.topk(h, int(sae.cfg.k or 0), dim=-1, sorted=False)  # (batch, k)
        with one_thread():
            idx, order = torch.sort(idx, dim=1)
            vals = torch.relu(vals.gather(1, order))
            keep = vals > 0
            rows = torch.arange(len(x), device=x.device).unsqueeze(1).expand_as(idx)[keep]
            return rows, idx[keep], vals[keep]
    codes = sae.encode(x)  # (batch, d_sae)
    with one_thread():
        r, f = codes.nonzero(as_tuple=True)
        return r, f, codes[r, f]
