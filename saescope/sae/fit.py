"""Does an SAE fit a store: the width it takes, the model and the hookpoint it was trained on.

One check for every stage that runs an SAE on a run's rows (eval, latents, steer, search): a
native SAE knows its training store's meta (`metadata.store_meta`), a SAELens one its
`model_name` and `hook_name`, a sparsify one its hookpoint (the folder's name). What an
SAE does not say passes; what it says and the store contradicts is refused in one line.
Model names are compared by their last path part, case-insensitively, so a local copy
(`/models/SmolLM2-135M`) and the hub id (`HuggingFaceTB/SmolLM2-135M`) are the same model.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from saescope.errors import SaescopeError

if TYPE_CHECKING:
    from saescope.sae.model import SAE


def trained_model(sae: SAE) -> str | None:
    """The model whose rows the SAE was trained on, where it says so."""
    meta = sae.cfg.metadata
    store_meta = meta.get("store_meta")
    name = store_meta.get("model") if isinstance(store_meta, dict) else None
    name = name or meta.get("model_name")
    return str(name) if name else None


def same_model(a: str, b: str) -> bool:
    """Whether two model names (hub ids or local paths) name the same model."""

    def last(name: str) -> str:
        return PurePosixPath(name.strip().replace("\\", "/").rstrip("/")).name.lower()

    return last(a) == last(b)


def check_fits_store(
    sae: SAE, store_meta: dict[str, Any], d_in: int, where: str, model: Any = None
) -> None:
    """Refuse `sae` on rows of a store with this meta and width when its width, its model
    or (token stores) its hookpoint says it was trained on other rows. `model`: the loaded
    LM, which lets module names be compared (see `check_hookpoint`)."""
    tokens = store_meta.get("rows") == "tokens"
    store_model = store_meta.get("model")
    what = (
        f"hookpoint {store_meta.get('hookpoint')} of {store_model}"
        if tokens
        else f"{store_model or 'the store'}"
    )
    if sae.cfg.d_in != d_in:
        raise SaescopeError(
            f"the SAE in {where} takes d_in={sae.cfg.d_in}, but {what} gives {d_in}-d rows; "
            "use an SAE trained on this run's kind of rows"
        )
    mine = trained_model(sae)
    if mine and store_model and not same_model(mine, str(store_model)):
        raise SaescopeError(
            f"the SAE in {where} was trained on {mine}'s activations, but this run's rows are "
            f"{store_model}'s; use it on a run made with {mine}"
        )
    if tokens:
        from saescope.lm.metrics import check_hookpoint, sae_hookpoint

        check_hookpoint(sae_hookpoint(sae), store_meta, where, model)
