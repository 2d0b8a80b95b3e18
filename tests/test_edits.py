"""Feature edits keep the SAE's error term: no edit and clamping to a feature's own value change nothing."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_sae_weights

from saescope.edits import Edit, apply_edits, resolve, typical_activation
from saescope.errors import SaescopeError
from saescope.sae import SAE
from saescope.sae.config import SAEConfig


@pytest.fixture(params=["topk", "relu", "row_standardize"])
def sae(request):
    g = torch.Generator().manual_seed(0)
    arch = "relu" if request.param == "relu" else "topk"
    norm = "row_standardize" if request.param == "row_standardize" else "none"
    cfg = SAEConfig(
        architecture=arch, d_in=16, d_sae=48, k=6 if arch == "topk" else None, input_norm=norm
    )
    return SAE.from_tensors(cfg, random_sae_weights(g, arch, 16, 48, 0.3, 0.0))


def test_no_edit_and_clamp_to_own_value_change_nothing(sae):
    x = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(apply_edits(sae, x, []), x)
    z = sae.encode(x.reshape(-1, 16))
    f = int(z.sum(0).argmax())  # an active feature
    own = float(z[0, f].detach())
    first = x.reshape(-1, 16)[:1]
    out = apply_edits(sae, first, [Edit(f, "clamp", own, "absolute")])
    assert torch.allclose(out, first, atol=1e-6)
    assert torch.allclose(apply_edits(sae, x, [Edit(f, "add", 0.0, "absolute")]), x)


def test_add_moves_along_the_decoder_row_and_zero_removes_the_feature(sae):
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(2))
    z = sae.encode(x)
    f = int((z > 0).sum(0).argmax())
    added = apply_edits(sae, x, [Edit(f, "add", 2.5, "absolute")])
    if sae.cfg.input_norm == "none":
        assert torch.allclose(added - x, 2.5 * sae.W_dec[f].expand_as(x), atol=1e-5)
    zeroed = apply_edits(sae, x, [Edit(f, "zero")])
    # what changed is exactly the feature's part of the reconstruction
    xs, mean, std = sae._standardize(x)
    z_without = z.clone()
    z_without[:, f] = 0
    want = x + sae.decode(z_without, mean, std) - sae.decode(z, mean, std)
    assert torch.allclose(zeroed, want, atol=1e-5)
    assert not torch.allclose(zeroed, x)


def test_typical_units_and_bad_edits():
    table = pd.DataFrame({"feature": [1, 0, 2], "max_act": [4.0, 2.0, np.nan]})
    typ = typical_activation(table)
    assert typ.tolist()[:2] == [2.0, 4.0]
    (e,) = resolve([Edit(1, "add", 0.5)], typ, 3)
    assert e.value == 2.0 and e.unit == "absolute"
    with pytest.raises(SaescopeError, match="never fires"):
        resolve([Edit(2, "add", 1.0)], typ, 3)
    with pytest.raises(SaescopeError, match="out of range"):
        resolve([Edit(7, "add", 1.0)], typ, 3)
    with pytest.raises(SaescopeError, match="not finite"):
        Edit(0, "add", float("nan"))
    with pytest.raises(SaescopeError, match="unknown edit"):
        Edit(0, "boost", 1.0)
