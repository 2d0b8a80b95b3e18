"""Generate from prompts, unsteered and steered, with the same prompts, seeds and lengths.

In: a loaded LM, prompts, an optional `Steerer`. Out: `Generations`: the padded
token ids of prompt + continuation, where the continuation starts, and the texts.
Prompts are batched with left padding; decoding is greedy by default (sampling
with a seed per batch, so a steered and an unsteered run draw alike).
`prompt_ids` refuses a prompt that does not leave room for the new tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saescope.errors import SaescopeError
from saescope.lm.model import LM
from saescope.steer.hook import Steerer


@dataclass(frozen=True)
class Generations:
    ids: list[torch.Tensor]  # per prompt: its own tokens (no padding), prompt + continuation
    prompt_lens: list[int]  # per prompt: tokens of the prompt (BOS included when added)
    texts: list[str]  # per prompt: the continuation only, decoded

    def continuation(self, i: int) -> torch.Tensor:
        return self.ids[i][self.prompt_lens[i] :]


def prompt_ids(
    lm: LM, prompts: Sequence[str], max_new_tokens: int, bos: bool = True
) -> list[list[int]]:
    """Token ids of each prompt (BOS first when the tokenizer has one and `bos`)."""
    tok = lm.tokenizer
    out = []
    limit = lm.max_positions
    for p in prompts:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        if bos and tok.bos_token_id is not None:
            ids = [int(tok.bos_token_id), *ids]
        if not ids:
            raise SaescopeError(f"prompt {p!r} has no tokens")
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise SaescopeError(
                f"prompt {p[:40]!r}... has {len(ids)} tokens; with {max_new_tokens} new tokens "
                f"it exceeds the model's {limit} positions"
            )
        out.append([int(i) for i in ids])
    return out


def pad_id_of(lm: LM) -> int:
    """The id that pads prompts: the tokenizer's pad token, else its EOS, else 0."""
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad) if pad is not None else 0


def pad_left(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    return ids, mask


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: each row's first real token is position 0
    (as `generate` numbers them, so a padded row reads as it would alone)."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def forward(lm: LM, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits (batch, seq, vocab) of left-padded rows, positions numbered per row."""
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    return lm.model(
        input_ids=ids, attention_mask=mask, position_ids=positions_of(mask), use_cache=False
    ).logits


def generate(
    lm: LM,
    prompts: list[list[int]],
    max_new_tokens: int,
    steerer: Steerer | None = None,
    batch_size: int = 8,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
) -> Generations:
    """Continue every prompt by `max_new_tokens` tokens (fewer when it ends with EOS)."""
    tok = lm.tokenizer
    pad_id = pad_id_of(lm)
    eos = tok.eos_token_id
    device = lm.device
    ids_out: list[torch.Tensor] = []
    for b, lo in enumerate(range(0, len(prompts), batch_size)):
        batch = prompts[lo : lo + batch_size]
        ids, mask = pad_left(batch, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            pad_token_id=pad_id,
            use_cache=use_cache,
        )
        if sample:
            kwargs |= dict(temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs |= dict(temperature=None, top_k=None, top_p=None)
        torch.manual_seed(seed + b)
        with torch.inference_mode():
            if steerer is not None:
                with steerer.begin(mask):
                    out = lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            else:
                out = lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        width = ids.shape[1]
        for i, p in enumerate(batch):
            cont = out[i, width:].cpu()
            if eos is not None and (cont == eos).any():  # keep up to and including EOS
                cont = cont[: int((cont == eos).nonzero()[0]) + 1]
            ids_out.append(torch.cat([torch.tensor(p), cont]))
    lens = [len(p) for p in prompts]
    texts = [
        tok.decode(x[n:], skip_special_tokens=True) for x, n in zip(ids_out, lens, strict=True)
    ]
    return Generations(ids_out, lens, texts)
