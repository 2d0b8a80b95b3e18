"""What a steered generation did, measured without a human or an LLM judge.

In: generations (prompt + continuation token ids), the unsteered LM, the SAE and
its hookpoint. Out, per generation:
  concept      the mean activation of the steered feature(s) on the continuation's
               tokens, read by the UNSTEERED model and the SAE (so it measures the
               text, not the intervention)
  nll          mean negative log-likelihood of the continuation under the unsteered
               model; perplexity = exp(nll), pooled over tokens of a set of generations

`output_score` (after Arad, Mueller and Belinkov 2025, "SAEs are good for steering
if you select the right features"): with the feature added at a strength at every
prompt position, the next-token distribution after each prompt; the score is the
probability mass the feature's top logit-lens tokens gain over the unsteered
distribution (mean over prompts), and `output_rank` the best rank one of them
reaches (1 = the most likely token). A feature whose decoder direction does what
its logit lens says scores high; most features score near 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from saescope.edits import Edit
from saescope.lm import hooks
from saescope.lm.model import LM
from saescope.steer.generate import Generations, forward, pad_id_of, pad_left
from saescope.steer.hook import Positions, Steerer


@dataclass(frozen=True)
class TextMeasures:
    concept: np.ndarray  # (n_generations,) mean activation of the features on the continuation
    nll_sum: np.ndarray  # (n_generations,) summed NLL of the continuation's tokens
    n_tokens: np.ndarray  # (n_generations,) continuation tokens scored

    @property
    def perplexity(self) -> float:
        n = int(self.n_tokens.sum())
        return float(np.exp(self.nll_sum.sum() / n)) if n else float("nan")

    def subset(self, idx: np.ndarray) -> TextMeasures:
        return TextMeasures(self.concept[idx], self.nll_sum[idx], self.n_tokens[idx])


def measure_texts(
    lm: LM,
    hp: hooks.Hookpoint,
    sae,
    gens: Generations,
    features: Sequence[int],
    batch_size: int = 8,
) -> TextMeasures:
    """Concept activation and NLL of every continuation under the unsteered model."""
    pad_id = pad_id_of(lm)
    feats = torch.tensor(list(features), dtype=torch.long)
    concept, nll, count = [], [], []
    for lo in range(0, len(gens.ids), batch_size):
        seqs = [x.tolist() for x in gens.ids[lo : lo + batch_size]]
        ids, mask = pad_left(seqs, pad_id)
        held: list[torch.Tensor] = []

        def grab(h: torch.Tensor, held: list[torch.Tensor] = held) -> torch.Tensor:
            held.append(h)
            return h

        with torch.inference_mode(), hooks.replaced(lm.model, hp, grab):
            logits = forward(lm, ids, mask).float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(logp.device)
        token_nll = -logp.gather(-1, target[..., None])[..., 0].cpu()  # (b, width - 1)
        h = held[0]
        for j, seq in enumerate(seqs):
            pad = ids.shape[1] - len(seq)
            start = pad + gens.prompt_lens[lo + j]  # first continuation position
            n = len(seq) - gens.prompt_lens[lo + j]
            if n <= 0:
                concept.append(0.0)
                nll.append(0.0)
                count.append(0)
                continue
            codes = sae.encode(h[j, start : start + n].float())  # (n, d_sae)
            concept.append(float(codes[:, feats].mean()))
            nll.append(float(token_nll[j, start - 1 : start - 1 + n].sum()))
            count.append(n)
    return TextMeasures(np.array(concept), np.array(nll), np.array(count))


@dataclass(frozen=True)
class OutputScore:
    score: float  # mean probability mass gained by the top logit-lens tokens
    prob: float  # their mean probability mass when steered
    rank: float  # mean over prompts of the best rank (1-based) of one of them when steered


def output_score(
    lm: LM,
    hp: hooks.Hookpoint,
    sae,
    prompts: list[list[int]],
    edit: Edit,
    lens_ids: Sequence[int],
    batch_size: int = 16,
) -> OutputScore:
    """The output score of one (absolute) edit over `prompts` (see the module docstring)."""
    pad_id = pad_id_of(lm)
    lens = torch.tensor(list(lens_ids), dtype=torch.long)
    gained, probs, ranks = [], [], []
    for lo in range(0, len(prompts), batch_size):
        ids, mask = pad_left(prompts[lo : lo + batch_size], pad_id)
        with torch.inference_mode():
            clean = forward(lm, ids, mask)[:, -1]
            with Steerer(lm.model, hp, sae, [edit], Positions("all")):
                steered = forward(lm, ids, mask)[:, -1]
        p_clean = torch.softmax(clean.float(), -1).cpu()
        p_steer = torch.softmax(steered.float(), -1).cpu()
        mass = p_steer[:, lens].sum(1)
        gained += (mass - p_clean[:, lens].sum(1)).tolist()
        probs += mass.tolist()
        # rank of each lens token = how many tokens are more likely, + 1
        above = (p_steer[:, None, :] > p_steer[:, lens][:, :, None]).sum(-1) + 1  # (b, n_lens)
        ranks += above.min(1).values.float().tolist()
    return OutputScore(float(np.mean(gained)), float(np.mean(probs)), float(np.mean(ranks)))
