"""Feature recovery: which architecture finds the true directions of synthetic data.

The data come from a known dictionary of n_features unit directions in R^d_in,
more than 8x the dimension (default 32 -> 320), each row the sum of the directions
that fire in it times a magnitude in [0.5, 1.5], plus noise of std 0.01:
- independent features: firing probabilities log-uniform in [0.005, 0.05], firing
  *correlated* in blocks of 8 (a Gaussian copula: z_i = sqrt(rho) g_block +
  sqrt(1 - rho) e_i, rho = 0.5, fires when z_i passes its quantile);
- a planted hierarchy: parents (probability 0.04) each with 3 children; a child can
  fire only with its parent (probability 0.3 each when the parent fires), so every
  child always co-fires with its parent, the setting where absorption happens.

Each architecture trains an SAE of d_sae = n_features latents (k = the data's mean
L0, rounded) with saescope's defaults for the same number of rows; SAELens's
BatchTopK and Matryoshka BatchTopK train on the same batches (plain tensors through
its `SAETrainer`, at saescope's learning rate and Matryoshka widths) and are read
back through their inference files. Printed per SAE, on held-out rows:

  recovered  fraction of true directions whose best decoder row has cosine >= 0.9
  mean cos   mean over true directions of the best decoder row's cosine
  absorption for each (parent P, child C) with P recovered, let j_P and j_C be the
             latents whose decoder rows have the largest cosine with P and C
             (pairs with j_P == j_C are left out and counted); over held-out rows
             where C fires (so P fires too): the number of rows where j_C fires and
             j_P does not, divided by the number of rows where C fires, pooled over
             pairs. 0 = the parent latent always fires with its children; nan when
             no parent is recovered.
  parent miss the same rows' fraction where j_P does not fire, whatever j_C does
             (absorption is the part of it that a child latent takes over)
  L0, NMSE   mean active latents per row, and squared error over the rows' variance
  dead       fraction of latents that never fire on the held-out rows

    python bench/recovery.py [--d-in 32] [--n-features 320] [--steps 1000]
                             [--archs relu topk ...] [--no-saelens] [--seed 0] [--threads 1]
                             [--lr LR] [--input-norm row_standardize none]
                             [--matryoshka-groups F ...] [--reference] [--reference-from-truth]

Every SAE trains once per `--input-norm` value: rows standardised inside the SAE
(`input_norm` row_standardize; for SAELens the bench standardises the rows it is given,
see `run_saelens`), which is what `saescope train`'s auto takes on these rows (their
norm grows with the number of features that fire), and rows as they come (none). The batch-wide rules and JumpReLU
need the first: they hand out latents by activation size, so without it the big, busy
rows take them and the rows that show one direction alone get none. A caveat of the
measure: standardised rows have their mean over d_in removed, so decoder rows learned
on them stay near orthogonal to the all-ones direction, and a true direction with a
large component along it cannot reach cosine 0.9 (about 1.2% of random unit directions
in 32 dimensions): "recovered" is a little harder on standardised rows.

`--reference` adds TopK and BatchTopK written in plain torch (`run_reference`, no
saescope or SAELens code), to tell a rule's behaviour from an implementation's;
`--reference-from-truth` starts them at the true directions instead.

The default run takes a few minutes on one thread (the matrices are small: more
threads only add synchronisation). ReLU and JumpReLU get sparsity coefficients
(l1 0.4, l0 0.03) picked by hand in a few short runs to bring their L0 towards k
on this data (JumpReLU also starts at L0 k: `jumprelu_init_l0`; its l0 is 0.02 on
standardised rows); their L0 is printed, so compare at similar L0.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from functools import partial

import torch

from saescope.sae.archs import ARCHITECTURES
from saescope.sae.model import row_standardize
from saescope.train import TrainConfig, train_on_batches

CHILDREN = 3
BLOCK = 8
RHO = 0.5


@dataclass
class Truth:
    dirs: torch.Tensor  # (n_features, d_in) unit rows
    p_indep: torch.Tensor  # (n_indep,) firing probabilities
    parents: torch.Tensor  # (n_parents,) feature ids
    children: torch.Tensor  # (n_parents, CHILDREN) feature ids
    n_indep: int


def make_truth(d_in: int, n_features: int, seed: int) -> Truth:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_features, d_in, generator=g), dim=1)
    n_parents = n_features // 10
    n_indep = n_features - n_parents * (1 + CHILDREN)
    p_indep = torch.exp(torch.empty(n_indep).uniform_(math.log(0.005), math.log(0.05), generator=g))
    parents = torch.arange(n_indep, n_indep + n_parents)
    children = torch.arange(n_indep + n_parents, n_features).view(n_parents, CHILDREN)
    return Truth(dirs, p_indep, parents, children, n_indep)


def sample(truth: Truth, n_rows: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (n_rows, d_in), fired (n_rows, n_features) bool)."""
    n_feat = truth.dirs.shape[0]
    fired = torch.zeros(n_rows, n_feat, dtype=torch.bool)
    n_blocks = math.ceil(truth.n_indep / BLOCK)
    block = torch.randn(n_rows, n_blocks, generator=g).repeat_interleave(BLOCK, dim=1)
    z = math.sqrt(RHO) * block[:, : truth.n_indep] + math.sqrt(1 - RHO) * torch.randn(
        n_rows, truth.n_indep, generator=g
    )
    cut = torch.distributions.Normal(0.0, 1.0).icdf(1 - truth.p_indep)  # (n_indep,)
    fired[:, : truth.n_indep] = z > cut
    parent_on = torch.rand(n_rows, len(truth.parents), generator=g) < 0.04
    fired[:, truth.parents] = parent_on
    child_on = torch.rand(n_rows, *truth.children.shape, generator=g) < 0.3
    fired[:, truth.children.reshape(-1)] = (child_on & parent_on[:, :, None]).reshape(n_rows, -1)
    mags = torch.empty(n_rows, n_feat).uniform_(0.5, 1.5, generator=g) * fired
    x = mags @ truth.dirs + 0.01 * torch.randn(n_rows, truth.dirs.shape[1], generator=g)
    return x, fired


def score(
    truth: Truth,
    W_dec: torch.Tensor,
    codes: torch.Tensor,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    fired: torch.Tensor,
) -> dict[str, float]:
    dec = torch.nn.functional.normalize(W_dec.detach().float(), dim=1)  # (d_sae, d_in)
    cos = truth.dirs @ dec.t()  # (n_features, d_sae)
    best, latent = cos.max(dim=1)
    on = codes > 0  # (n_rows, d_sae)
    absorbed = child_rows = missed = 0
    merged = 0
    for p, kids in zip(truth.parents.tolist(), truth.children.tolist(), strict=True):
        if best[p] < 0.9:
            continue
        jp = int(latent[p])
        for c in kids:
            jc = int(latent[c])
            if jc == jp:
                merged += 1
                continue
            rows = fired[:, c]
            child_rows += int(rows.sum())
            absorbed += int((on[rows, jc] & ~on[rows, jp]).sum())
            missed += int((~on[rows, jp]).sum())
    var = (x - x.mean(0)).pow(2).sum()
    return {
        "recovered": float((best >= 0.9).float().mean()),
        "mean_cos": float(best.mean()),
        # nan when no parent was recovered: there is nothing to absorb from
        "absorption": absorbed / child_rows if child_rows else math.nan,
        "parent_miss": missed / child_rows if child_rows else math.nan,
        "merged_pairs": merged,
        "l0": float(on.sum(1).float().mean()),
        "nmse": float((x_hat - x).pow(2).sum() / var),
        "dead": float((~on.any(0)).float().mean()),
    }


def batches(truth: Truth, steps: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return [sample(truth, batch, g)[0] for _ in range(steps)]


def run_ours(
    arch: str,
    data: list[torch.Tensor],
    d_sae: int,
    k: int,
    lr: float,
    input_norm: str = "auto",
    groups: list[float] | None = None,
):
    extra: dict = {"input_norm": input_norm}
    if arch == "matryoshka_batchtopk" and groups:
        extra["matryoshka_groups"] = groups
    if arch == "relu":
        extra["l1_coefficient"] = 0.4
    if arch == "jumprelu":  # starts at the data's L0; each coefficient ends near L0 k
        l0 = 0.02 if input_norm == "row_standardize" else 0.03
        extra.update(l0_coefficient=l0, jumprelu_init_l0=float(k))
    cfg = TrainConfig(
        architecture=arch, d_sae=[d_sae], k=[k], batch_size=data[0].shape[0], lr=lr, **extra
    )
    sae = train_on_batches(data, cfg).saes[0]

    def apply(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = sae(x)
        return out.codes, out.x_hat

    return sae.W_dec, apply


def run_saelens(
    arch: str,
    data: list[torch.Tensor],
    d_sae: int,
    k: int,
    lr: float,
    input_norm: str = "none",
    groups: list[float] | None = None,
):
    from _peers import saelens_for_use, train_saelens  # bench/, the script's folder

    # Standardised rows are standardised here, before SAELens sees them, so that its
    # loss is on the standardised rows as saescope's is. SAELens's own option for it,
    # `normalize_activations` "layer_norm", only standardises inside the SAE (its loss
    # stays on the raw rows), and its Matryoshka cannot train with it: the per-prefix
    # decode calls the inverse norm once per prefix, and the first call deletes the
    # stored std (AttributeError: no attribute 'ln_std'; sae-lens 6.54).
    scaled = input_norm == "row_standardize"
    if scaled:
        data = [row_standardize(x)[0] for x in data]
    batch, d_in = data[0].shape
    sae = train_saelens(
        arch, d_in, d_sae, k, iter(data), batch * len(data), batch, lr, matryoshka_groups=groups
    )
    inf = saelens_for_use(sae, arch)  # jumprelu with the learned threshold

    def apply(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            xs, mean, std = row_standardize(x) if scaled else (x, 0, 1)
            codes = inf.encode(xs)
            return codes, inf.decode(codes) * std + mean

    return inf.W_dec, apply


def run_reference(
    rule: str,
    data: list[torch.Tensor],
    d_sae: int,
    k: int,
    lr: float,
    input_norm: str = "none",
    groups: list[float] | None = None,
    start: torch.Tensor | None = None,
):
    """TopK or BatchTopK in plain torch, written apart from saescope and SAELens so that a
    result shared by both can be told from a property of the rule: tied init (random unit
    decoder rows, or `start`'s rows), b_enc 0, b_dec the first batch's mean, mse summed over
    dims and averaged over rows, torch's Adam at `lr`, decoder rows renormalised after each
    step, no AuxK, no schedule. BatchTopK keeps the k * rows largest relu'd pre-activations
    of the batch and infers with the running mean (rate 0.01) of the smallest kept one.
    With `input_norm` row_standardize each row is standardised first, (x - mean) / std,
    and the reconstruction mapped back."""
    gen = torch.Generator().manual_seed(12345)  # not the truth's seed: its first draw is the truth
    if input_norm == "row_standardize":
        data = [standardize(x)[0] for x in data]
    d_in = data[0].shape[1]
    rows = start if start is not None else torch.randn(d_sae, d_in, generator=gen)
    W_dec = torch.nn.Parameter(torch.nn.functional.normalize(rows.clone(), dim=1))
    W_enc = torch.nn.Parameter(W_dec.detach().t().clone())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(data[0].mean(0))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    threshold = torch.tensor(-1.0)

    def encode(x: torch.Tensor, training: bool) -> torch.Tensor:
        nonlocal threshold
        h = torch.relu((x - b_dec) @ W_enc + b_enc)
        if rule == "topk":
            vals, idx = h.topk(k, dim=1)
            return torch.zeros_like(h).scatter(1, idx, vals)
        if not training:
            return h * (h > threshold)
        vals, idx = h.flatten().topk(k * x.shape[0])
        low = vals.min().detach()
        threshold = low if threshold < 0 else 0.99 * threshold + 0.01 * low
        return torch.zeros_like(h).flatten().scatter(0, idx, vals).view_as(h)

    for x in data:
        loss = (encode(x, True) @ W_dec + b_dec - x).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.copy_(torch.nn.functional.normalize(W_dec, dim=1))

    def apply(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            xs, mean, std = standardize(x) if input_norm == "row_standardize" else (x, 0, 1)
            codes = encode(xs, False)
            return codes, (codes @ W_dec + b_dec) * std + mean

    return W_dec.detach(), apply


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's own row standardisation (it shares no code with saescope on purpose;
    the same rule as `saescope.sae.model.row_standardize`)."""
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True)
    return (x - mean) / (std + 1e-5), mean, std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-in", type=int, default=32)
    ap.add_argument("--n-features", type=int, default=320)
    ap.add_argument("--steps", type=int, default=1000, help="training batches per SAE")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--eval-rows", type=int, default=20_000)
    ap.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    ap.add_argument("--no-saelens", action="store_true", help="skip SAELens's SAEs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--lr", type=float, default=0.0, help="learning rate of every SAE (0: saescope's default)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (these matrices are small)"
    )
    ap.add_argument(
        "--input-norm",
        nargs="+",
        default=["row_standardize", "none"],
        choices=("row_standardize", "none"),
        help="train every SAE once per value: rows standardised (saescope: inside the SAE; "
        "SAELens: before it sees them) or as they come",
    )
    ap.add_argument(
        "--matryoshka-groups",
        nargs="+",
        type=float,
        default=None,
        help="Matryoshka group sizes as fractions of d_sae, ours and SAELens's "
        "(default saescope's, 1/16 1/16 1/8 1/4 1/2)",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="also train TopK and BatchTopK written in plain torch (`run_reference`)",
    )
    ap.add_argument(
        "--reference-from-truth",
        action="store_true",
        help="start the reference SAEs' decoder (and tied encoder) at the true directions: "
        "does a rule keep a dictionary it is given?",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    truth = make_truth(args.d_in, args.n_features, args.seed)
    x_eval, fired_eval = sample(
        truth, args.eval_rows, torch.Generator().manual_seed(args.seed + 99)
    )
    k = max(1, round(float(fired_eval.sum(1).float().mean())))
    data = batches(truth, args.steps, args.batch, args.seed)
    d_sae = args.n_features
    lr = args.lr if args.lr > 0 else TrainConfig().learning_rate(d_sae)
    print(
        f"data: d_in {args.d_in}, {args.n_features} true directions "
        f"({args.n_features / args.d_in:.0f}x d_in), {len(truth.parents)} parents x {CHILDREN} "
        f"children, mean L0 {fired_eval.sum(1).float().mean():.2f} -> k {k}; "
        f"{args.steps} x {args.batch} training rows, {args.eval_rows} held out; "
        f"d_sae {d_sae}, lr {lr:.2e} (every SAE)"
    )
    runs = [("saescope", a, run_ours) for a in args.archs]
    if not args.no_saelens:
        try:
            import sae_lens  # noqa: F401

            runs += [("SAELens", a, run_saelens) for a in ("batchtopk", "matryoshka_batchtopk")]
        except ImportError as exc:
            print(f"SAELens not run: {exc}")
    if args.reference or args.reference_from_truth:
        start = truth.dirs if args.reference_from_truth else None
        label = "ref-truth" if start is not None else "reference"
        for rule in ("topk", "batchtopk"):
            runs.append((label, rule, partial(run_reference, start=start)))
    auto = TrainConfig().resolved_input_norm("texts", data[0])  # the same for every rule
    norms = data[0].norm(dim=1)
    print(
        f"row norms: 1st/50th/99th percentile {norms.quantile(0.01):.2f} / "
        f"{norms.median():.2f} / {norms.quantile(0.99):.2f}; saescope train's input_norm "
        f"auto takes {auto} on these rows",
        flush=True,
    )
    header = (
        f"{'library':9s} {'architecture':21s} {'input norm':15s} {'recovered':>9s} {'mean cos':>8s} "
        f"{'absorption':>10s} {'parent miss':>11s} {'L0':>6s} {'NMSE':>7s} {'dead':>6s} {'s':>5s}"
    )
    print(header)
    print("-" * len(header))
    for norm in args.input_norm:
        for lib, arch, fn in runs:
            t0 = time.perf_counter()
            try:
                W_dec, apply = fn(arch, data, d_sae, k, lr, norm, args.matryoshka_groups)
            except Exception as exc:  # a peer that cannot train here is reported, not fatal
                print(f"{lib:9s} {arch:21s} {norm:15s} not run: {type(exc).__name__}: {exc}")
                continue
            secs = time.perf_counter() - t0
            codes, x_hat = apply(x_eval)
            m = score(truth, W_dec, codes, x_eval, x_hat, fired_eval)
            merged = m["merged_pairs"]
            print(
                f"{lib:9s} {arch:21s} {norm:15s} {m['recovered']:9.3f} {m['mean_cos']:8.3f} "
                f"{m['absorption']:10.3f} {m['parent_miss']:11.3f} {m['l0']:6.2f} "
                f"{m['nmse']:7.4f} {m['dead']:6.3f} {secs:5.0f}"
                + (f"  ({merged} parent/child pairs share a latent)" if merged else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
