"""Hookpoints of a causal LM: name them, read activations there (stopping the forward), replace them.

A hookpoint is given as
    resid_post.L   the residual stream after decoder block L (= hidden_states[L + 1])
    resid_pre.L    the residual stream before block L (= hidden_states[L])
    mlp_out.L      the output of block L's MLP
    attn_out.L     the output of block L's attention (after its output projection)
    layers.L       sparsify's name for resid_post.L
    blocks.L.hook_resid_post / hook_resid_pre / hook_mlp_out / hook_attn_out
                   SAELens (TransformerLens) names with an unambiguous HF module
    middle         resid_post of the middle block (n_layers // 2; 15 of SmolLM2's 30)
or as the name of any module of the model (`model.layers.6.mlp.down_proj`: its output).
Blocks are the model's decoder layer list: the `nn.ModuleList` with one entry per
hidden layer (`model.layers` for Llama-like models, `transformer.h` for GPT-2).

`capture` runs the model up to the hookpoint only: a hook raises once it holds the
activations, so the blocks after it never run. `replaced` swaps the activations
at the hookpoint for a function of them (SAE splicing, ablation, steering).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saescope.errors import SaescopeError

SITES = ("resid_pre", "resid_post", "mlp_out", "attn_out")
MIDDLE = "middle"  # resid_post of block n_layers // 2
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_SAELENS = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|mlp_out|attn_out)$")
_SHORT = re.compile(r"^(resid_pre|resid_post|mlp_out|attn_out)\.(\d+)$")
_SPARSIFY = re.compile(r"^layers\.(\d+)$")


@dataclass(frozen=True)
class Hookpoint:
    """Where activations are read: a module, and whether its input or its output."""

    name: str  # as the user gave it, normalised (resid_post.6, or a module name)
    module: str  # the module's name in model.named_modules()
    read: str  # "output" or "input" (resid_pre: the block's first input)
    layer: int | None  # the block index, when the hookpoint is inside or at a block


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, modules) of the model's decoder blocks: the ModuleList with one per hidden layer."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and (n is None or len(mod) == n)
    ]
    if not found:
        raise SaescopeError(
            f"cannot find the decoder blocks of this {type(model).__name__} (a list of "
            f"{n} layers); give the hookpoint as a module name (see `saescope acts --list-hookpoints`)"
        )
    return max(found, key=lambda x: len(x[1]))


def _child(block: nn.Module, names: tuple[str, ...], what: str, prefix: str) -> str:
    for n in names:
        if hasattr(block, n):
            return f"{prefix}.{n}"
    raise SaescopeError(
        f"block {prefix} has no {what} module named {' or '.join(names)}; "
        "give the hookpoint as a module name instead"
    )


def normalise(spec: str) -> tuple[str, int] | None:
    """(site, layer) for the shorthand, sparsify and SAELens spellings; None for a module name."""
    spec = spec.strip()
    for pattern, order in ((_SHORT, (1, 2)), (_SAELENS, (2, 1))):
        m = pattern.match(spec)
        if m:
            return m.group(order[0]), int(m.group(order[1]))
    m = _SPARSIFY.match(spec)
    if m:
        return "resid_post", int(m.group(1))
    return None


def saelens_name(spec: str) -> str:
    """SAELens's (TransformerLens's) spelling of a site, `blocks.L.hook_SITE`; a module
    name stays as it is."""
    site_layer = normalise(spec)
    return spec.strip() if site_layer is None else f"blocks.{site_layer[1]}.hook_{site_layer[0]}"


def resolve(model: nn.Module, spec: str) -> Hookpoint:
    """The `Hookpoint` of `spec` in `model`, or a one-line error naming what exists.

    `middle` is resid_post of the middle block (block n_layers // 2).
    """
    if spec.strip() == MIDDLE:
        spec = f"resid_post.{len(block_list(model)[1]) // 2}"
    modules = dict(model.named_modules())
    site_layer = normalise(spec)
    if site_layer is None:
        if spec.startswith("blocks."):
            raise SaescopeError(
                f"hookpoint {spec!r}: only SAELens hooks hook_resid_pre, hook_resid_post, "
                "hook_mlp_out and hook_attn_out map to one Hugging Face module; give a module name"
            )
        if spec not in modules or spec == "":
            raise SaescopeError(
                f"hookpoint {spec!r} is neither a site (resid_post.L, resid_pre.L, mlp_out.L, "
                "attn_out.L) nor a module of the model; list them with `saescope acts --list-hookpoints`"
            )
        prefix, blocks = block_list(model)
        m = re.match(re.escape(prefix) + r"\.(\d+)(\.|$)", spec)
        return Hookpoint(spec, spec, "output", int(m.group(1)) if m else None)
    site, layer = site_layer
    prefix, blocks = block_list(model)
    if not 0 <= layer < len(blocks):
        raise SaescopeError(
            f"hookpoint {spec!r}: layer {layer} does not exist; the model has layers 0..{len(blocks) - 1}"
        )
    block = f"{prefix}.{layer}"
    name = f"{site}.{layer}"
    if site == "resid_post":
        return Hookpoint(name, block, "output", layer)
    if site == "resid_pre":
        return Hookpoint(name, block, "input", layer)
    if site == "mlp_out":
        return Hookpoint(name, _child(blocks[layer], _MLP_NAMES, "MLP", block), "output", layer)
    return Hookpoint(name, _child(blocks[layer], _ATTN_NAMES, "attention", block), "output", layer)


def list_hookpoints(model: nn.Module) -> list[str]:
    """Every site shorthand of the model, then every module name."""
    out: list[str] = []
    try:
        _, blocks = block_list(model)
        for layer in range(len(blocks)):
            for site in SITES:
                with suppress(SaescopeError):
                    out.append(resolve(model, f"{site}.{layer}").name)
    except SaescopeError:
        pass
    return out + [name for name, _ in model.named_modules() if name]


def _first(x: Any) -> torch.Tensor:
    """The hidden states in a module's output or input: a tensor, or the first of a tuple."""
    return x[0] if isinstance(x, (tuple, list)) else x


def _swap_first(x: Any, new: torch.Tensor) -> Any:
    if isinstance(x, tuple):
        return (new, *x[1:])
    if isinstance(x, list):
        return [new, *x[1:]]
    return new


class _Stop(Exception):
    """Raised from a hook to end the forward once the activations are held."""


@contextmanager
def _hook(
    model: nn.Module, hp: Hookpoint, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """Call fn(hidden) at the hookpoint; a tensor it returns replaces the hidden states."""
    module = dict(model.named_modules())[hp.module]
    if hp.read == "input":

        def pre(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            key = "hidden_states"
            new = fn(kwargs[key])
            return None if new is None else (args, {**kwargs, key: new})

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(_mod: nn.Module, _args: Any, output: Any) -> Any:
            new = fn(_first(output))
            return None if new is None else _swap_first(output, new)

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def capture(
    model: nn.Module,
    hp: Hookpoint,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    stop: bool = True,
) -> torch.Tensor:
    """(batch, seq, d) activations at `hp`; with `stop`, the blocks after it are not run."""
    held: list[torch.Tensor] = []

    def grab(h: torch.Tensor) -> None:
        held.append(h.detach())
        if stop:
            raise _Stop

    with _hook(model, hp, grab), torch.inference_mode(), suppress(_Stop):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if not held:
        raise SaescopeError(f"the forward pass never reached hookpoint {hp.name} ({hp.module})")
    return held[0]


@contextmanager
def replaced(
    model: nn.Module, hp: Hookpoint, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """While active, the activations at `hp` are replaced by fn(activations)."""
    with _hook(model, hp, fn):
        yield
