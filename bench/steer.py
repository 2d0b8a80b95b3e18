"""Generation speed with steering against plain `generate` (target: >= 0.9x).

Loads the packaged SmolLM2 (or --model), puts a random TopK SAE of 8x its width
at --hookpoint (the speed of the hook does not depend on what the SAE learned),
and generates --new-tokens greedy tokens from the same prompts, with the KV
cache, in three ways, interleaved over --repeats rounds:
  plain      `model.generate`, no hook
  add        saescope's Steerer adding one feature (no encoding needed)
  clamp      saescope's Steerer clamping one feature (encodes every new token)
and prints tokens/s of each and the ratio to plain (median of the rounds),
with PASS or FAIL against the target for `add` and `clamp`.

    python bench/steer.py [--prompts 8] [--new-tokens 32] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saescope.edits import Edit
from saescope.lm import hooks
from saescope.lm.model import load_lm
from saescope.sae import SAE
from saescope.sae.config import SAEConfig
from saescope.steer.generate import generate, prompt_ids
from saescope.steer.hook import Steerer
from saescope.steer.stage import shipped_prompts


def random_sae(d_in: int, d_sae: int, k: int, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_sae, d_in, generator=g)
    w = w / w.norm(dim=1, keepdim=True)
    tensors = {
        "W_enc": w.T.contiguous(),
        "b_enc": torch.zeros(d_sae),
        "W_dec": w,
        "b_dec": torch.zeros(d_in),
        "threshold": torch.zeros(d_sae),
    }
    sae = SAE.from_tensors(SAEConfig("topk", d_in, d_sae, k=k), tensors)
    return sae.eval().requires_grad_(False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--hookpoint", default="middle")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per batch (default: 8)")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated (default: 32)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--target", type=float, default=0.9)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_lm(args.model)
    hp = hooks.resolve(lm.model, args.hookpoint)
    sae = random_sae(lm.d_model, 8 * lm.d_model, 32)
    ids = prompt_ids(lm, shipped_prompts()[: args.prompts], args.new_tokens)
    f = 17
    ways = {
        "plain": None,
        "add": Steerer(lm.model, hp, sae, [Edit(f, "add", 20.0, "absolute")]),
        "clamp": Steerer(lm.model, hp, sae, [Edit(f, "clamp", 20.0, "absolute")]),
    }
    # the same number of new tokens each time: no EOS stop (the token is never produced)
    eos = lm.tokenizer.eos_token_id
    lm.tokenizer.eos_token_id = None
    lm.model.generation_config.eos_token_id = None
    generate(lm, ids, 4, None, batch_size=len(ids))  # warm-up
    rates: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.repeats):
        for name, steerer in ways.items():
            t0 = time.perf_counter()
            gens = generate(lm, ids, args.new_tokens, steerer, batch_size=len(ids))
            dt = time.perf_counter() - t0
            new = sum(len(g) - n for g, n in zip(gens.ids, gens.prompt_lens, strict=True))
            rates[name].append(new / dt)
    lm.tokenizer.eos_token_id = eos
    print(
        f"{args.model} at {hp.name}, SAE {sae.cfg.d_sae} latents, {len(ids)} prompts x "
        f"{args.new_tokens} new tokens, KV cache, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    plain = statistics.median(rates["plain"])
    ok = True
    for name, r in rates.items():
        med = statistics.median(r)
        ratio = med / plain
        verdict = "" if name == "plain" else ("  PASS" if ratio >= args.target else "  FAIL")
        ok &= name == "plain" or ratio >= args.target
        print(f"  {name:<6} {med:8.1f} tokens/s   x{ratio:.2f} plain{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
