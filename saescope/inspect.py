"""`saescope inspect`: look at one feature, or at the features a new text activates.

    saescope inspect 42 --run runs/demo            statistics, names and top texts of feature 42
    saescope inspect 42 --run runs/demo --json     the same as JSON, for scripts
    saescope inspect --text "..." --run runs/demo  embed a new text with the run's model and
                                                   list the features it activates, strongest first

In: `latents/features.parquet` and `corpus.parquet` (plus keywords, explanations,
scores and families when those stages have run: the feature's families and the
features of other SAE widths it splits into or was split from); `--text` also needs `acts/manifest.json` (which
model embedded the corpus) and the SAE. Out: text on stdout; nothing is written.

Token runs (an LM's residual stream, `saescope acts`): the examples are token
windows with the activating token marked <<like this>> (the JSON adds the
feature's activation on every token of the window), and the logit lens of the
feature is shown. `--text` tokenizes the text as the store did (BOS first when
the store's contexts have one), runs the LM to the hookpoint, encodes every
token with the SAE and prints a table: one line per token, one column per
feature, the features strongest on any token first.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.errors import SaescopeError
from saescope.examples import from_features_row
from saescope.examples.tokens import feature_column, feature_window, store_rows_kind
from saescope.families.tables import FamilyRef, SplitRef, read_families
from saescope.io import read_json
from saescope.paths import RunPaths
from saescope.report.data import (
    Annotations,
    LensTokens,
    RowTexts,
    load_annotations,
    logit_lens,
    read_features,
)


@dataclass(frozen=True)
class Example:
    row: int
    act: float
    text: str  # token runs: the window, the row's token marked <<like this>>
    bin: int | None = None
    # token runs only: the window's tokens and the feature's activation on each
    tokens: list[str] | None = None
    acts: list[float] | None = None
    center: int | None = None  # index of the row's own token in `tokens`


@dataclass(frozen=True)
class FeatureView:
    feature: int
    count: int
    density: float
    log10_density: float | None
    max_act: float
    mean_act: float
    mean_active_act: float | None
    dead: bool
    keywords: list[str] = field(default_factory=list)
    explanation: str | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    top: list[Example] = field(default_factory=list)
    quantiles: list[Example] = field(default_factory=list)
    logit_lens: LensTokens | None = None  # token runs: tokens the decoder direction promotes
    families: list[FamilyRef] = field(default_factory=list)  # `saescope families`
    splits: list[SplitRef] = field(default_factory=list)  # features of other SAE widths
    # names, scores and families of the run left out: made from other activations or names
    stale: list[str] = field(default_factory=list)


_TOKEN_FIELDS = ("tokens", "acts", "center", "logit_lens")


def _as_json(x: Any) -> Any:
    """asdict() of a view without the token-run fields where they are None (other runs)."""
    if isinstance(x, dict):
        return {k: _as_json(v) for k, v in x.items() if v is not None or k not in _TOKEN_FIELDS}
    if isinstance(x, list | tuple):
        return [_as_json(v) for v in x]
    return x


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def feature_view(
    run: str | Path, feature: int, n_top: int = 10, ann: Annotations | None = None
) -> FeatureView:
    """Everything known about one feature, with the texts of its top and quantile examples."""
    df = read_features(run)
    if not 0 <= feature < len(df):
        raise SaescopeError(
            f"feature {feature} is out of range: the SAE of {run} has features 0..{len(df) - 1}"
        )
    r = df.iloc[feature]
    ann = ann if ann is not None else load_annotations(run)
    texts = RowTexts(run, int(read_json(RunPaths(run).latents_manifest)["n_rows"]))
    fe = from_features_row(r).limit(n_top)
    example = _example_maker(run, texts, feature)
    top = [example(row, act) for row, act in zip(fe.top_rows, fe.top_acts, strict=True)]
    quant = [
        example(row, act, b)
        for row, act, b in zip(fe.quantile_rows, fe.quantile_acts, fe.quantile_bins, strict=True)
    ]
    kw = ann.keywords.get(feature)
    ex = ann.explanations.get(feature)
    fams = read_families(run)  # None until `saescope families` ran on this latent cache
    return FeatureView(
        feature=feature,
        count=int(r["count"]),
        density=float(r["density"]),
        log10_density=_num(r["log10_density"]),
        max_act=float(r["max_act"]),
        mean_act=float(r["mean_act"]),
        mean_active_act=_num(float(r["mean_active_act"])),
        dead=bool(r["dead"]),
        keywords=kw.words if kw else [],
        explanation=ex.text if ex else None,
        scores={s: v[feature] for s, v in ann.scores.items() if feature in v},
        top=top,
        quantiles=quant,
        logit_lens=logit_lens(r),
        families=fams.families_of(feature) if fams else [],
        splits=fams.splits_of(feature) if fams else [],
        stale=list(ann.stale),
    )


def _example_maker(run: str | Path, texts: RowTexts, feature: int):
    """row, act[, bin] -> Example: the row's text, or for token runs its window with the
    feature's activation on every token (the feature's column read once)."""
    if texts.tokens is None:
        return lambda row, act, b=None: Example(
            int(row), float(act), texts(int(row)), None if b is None else int(b)
        )
    from saescope.latents import LatentCache

    tokens = texts.tokens
    column = feature_column(LatentCache(run), feature)  # streamed: no matrix for one feature

    def make(row: int, act: float, b: int | None = None) -> Example:
        w = feature_window(tokens, None, feature, int(row), column=column)
        return Example(
            int(row),
            float(act),
            w.marked(),
            None if b is None else int(b),
            w.tokens,
            [round(a, 6) for a in w.acts],
            w.center,
        )

    return make


@dataclass(frozen=True)
class TextHit:
    feature: int
    act: float
    density: float
    keywords: list[str]
    top_text: str


def text_features(run: str | Path, text: str, n: int = 10) -> list[TextHit]:
    """Features a new text activates (strongest first), embedded the way the corpus was."""
    from saescope.embed import encode_texts, load_query_model
    from saescope.sae import SAE

    rp = RunPaths(run)
    if not (rp.acts / "manifest.json").exists():
        raise SaescopeError(f"no activation store at {rp.acts}; --text needs the run's store")
    meta = read_json(rp.acts / "manifest.json").get("meta", {})
    if meta.get("source") != "sentence-transformers" or not meta.get("model"):
        raise SaescopeError(
            f"the store of {run} was not made by a sentence-transformers model "
            f"(source {meta.get('source')!r}), so a new text cannot be embedded the same way"
        )
    df = read_features(run)
    from saescope.latents import LatentCache

    # the SAE whose features the table lists: the one the cache was encoded with
    sae = SAE.load(LatentCache(run).sae_dir()).eval()
    model = load_query_model(meta["model"], meta)
    x = encode_texts(model, [text], 1, bool(meta.get("normalize", False)))  # (1, d_in)
    with torch.inference_mode():
        codes = sae.encode(x)[0]  # (d_sae,)
    active = torch.nonzero(codes > 0).squeeze(1)
    order = active[torch.argsort(codes[active], descending=True)][:n].tolist()
    ann = load_annotations(run)
    texts = RowTexts(run, int(read_json(rp.latents_manifest)["n_rows"]))
    hits = []
    for f in order:
        r = df.iloc[f]
        top = texts(int(r["top_rows"][0])) if len(r["top_rows"]) else ""
        kw = ann.keywords.get(f)
        hits.append(TextHit(f, float(codes[f]), float(r["density"]), kw.words if kw else [], top))
    return hits


@dataclass(frozen=True)
class TokenFeature:
    """One feature's activation on every token of a new text."""

    feature: int
    max_act: float  # its largest activation over the text's tokens
    density: float  # its density over the run's rows
    keywords: list[str]
    promotes: list[str]  # the first tokens of its logit lens
    acts: list[float]  # (n_tokens,) one per token of `TokenHits.tokens`


@dataclass(frozen=True)
class TokenHits:
    """The features of a new text on a token run, strongest first."""

    text: str
    tokens: list[str]  # the tokens the store would hold (no BOS unless it keeps specials)
    features: list[TokenFeature]
    truncated: bool = False  # the text was longer than the store's contexts


def encode_text_tokens(
    lm: Any, hp: Any, sae: Any, meta: dict[str, Any], text: str
) -> tuple[list[str], torch.Tensor, bool]:
    """(token strings, codes (n_tokens, d_sae) float32 on CPU, truncated) of a new text,
    tokenized as the store's contexts were: BOS first when they have it, cut to their
    length; special tokens the store left out are left out here too."""
    from saescope.lm import hooks

    tok = lm.tokenizer
    ids: list[int] = list(tok(text, add_special_tokens=False)["input_ids"])
    if meta.get("bos", False) and tok.bos_token_id is not None:
        ids = [int(tok.bos_token_id), *ids]
    ctx_len = int(meta.get("ctx_len") or len(ids))
    truncated = len(ids) > ctx_len
    ids = ids[:ctx_len]
    if not ids:
        raise SaescopeError("the text has no tokens; give a non-empty text")
    special = set(getattr(tok, "all_special_ids", []) or [])
    keep = [bool(meta.get("keep_special", False)) or i not in special for i in ids]
    x = hooks.capture(lm.model, hp, torch.tensor([ids], device=lm.device))  # (1, seq, d_model)
    with torch.inference_mode():
        codes = sae.encode(x[0].to(device=sae.W_dec.device, dtype=sae.W_dec.dtype))  # (seq, d_sae)
    codes = codes[torch.tensor(keep, device=codes.device)].float().cpu()  # (n_tokens, d_sae)
    strings = tok.batch_decode([[i] for i, k in zip(ids, keep, strict=True) if k])
    return list(strings), codes, truncated


def strongest(codes: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """(each feature's largest activation over the tokens, the `n` strongest active features)."""
    top = codes.max(dim=0).values if len(codes) else torch.zeros(codes.shape[1])
    alive = torch.nonzero(top > 0).squeeze(1)
    return top, alive[torch.argsort(top[alive], descending=True, stable=True)][:n].tolist()


def token_text_features(run: str | Path, text: str, n: int = 10) -> TokenHits:
    """Per-token activations of the `n` features strongest on any token of `text`.

    The text is tokenized as the store's contexts were (BOS first when they have it,
    cut to their length) and run through the store's LM up to its hookpoint.
    """
    from saescope.device import pick_device
    from saescope.latents import LatentCache
    from saescope.lm import hooks
    from saescope.lm.model import load_lm
    from saescope.sae import SAE

    rp = RunPaths(run)
    meta = read_json(rp.acts_manifest).get("meta", {})
    if not meta.get("model") or not meta.get("hookpoint"):
        raise SaescopeError(
            f"the token store {rp.acts} names no model or hookpoint; re-run `saescope acts`"
        )
    df = read_features(run)
    device = pick_device("auto")
    sae = SAE.load(LatentCache(run).sae_dir(), device=str(device)).eval()
    lm = load_lm(str(meta["model"]), device, str(meta.get("model_dtype", "float32")))
    hp = hooks.resolve(lm.model, str(meta["hookpoint"]))
    strings, codes, truncated = encode_text_tokens(lm, hp, sae, meta, text)
    top, order = strongest(codes, n)
    ann = load_annotations(run)
    feats = []
    for f in order:
        kw = ann.keywords.get(f)
        acts = [round(float(a), 6) for a in codes[:, f]]
        lens = logit_lens(df.iloc[f])
        promotes = [t for t, _ in lens.promoted[:5]] if lens is not None else []
        words = kw.words if kw else []
        density = float(df.at[f, "density"])
        feats.append(TokenFeature(f, float(top[f]), density, words, promotes, acts))
    return TokenHits(text, list(strings), feats, truncated)


def _tok(t: str) -> str:
    """A token as it is printed in tables: quoted, with whitespace made visible."""
    return json.dumps(t, ensure_ascii=False)


def format_token_hits(h: TokenHits, width: int) -> str:
    lines = [f"features of: {_clip(h.text, width - 14)}"]
    if h.truncated:
        lines.append(f"  (cut to the store's {len(h.tokens)} tokens)")
    if not h.features:
        return "\n".join([*lines, "  (no feature is active on any token of this text)"])
    tok_w = min(18, max(5, *(len(_tok(t)) for t in h.tokens)))
    col_w = max(8, *(len(f"#{f.feature}") + 1 for f in h.features))
    shown = h.features[: max(1, (width - tok_w - 4) // (col_w + 1))]
    head = f"  {'token':<{tok_w}}  " + " ".join(f"{'#' + str(f.feature):>{col_w}}" for f in shown)
    lines.append(head)
    for i, t in enumerate(h.tokens):
        cells = [f"{f.acts[i]:>{col_w}.3g}" if f.acts[i] > 0 else f"{'.':>{col_w}}" for f in shown]
        lines.append(f"  {_clip(_tok(t), tok_w):<{tok_w}}  " + " ".join(cells))
    if len(shown) < len(h.features):
        lines.append(f"  ({len(h.features) - len(shown)} more features: --json or a wider --width)")
    lines.append("")
    for f in shown:
        left = f"  #{f.feature:<{col_w}} max {f.max_act:<8.4g} density {f.density:>7.2%}  "
        if f.keywords:
            lines.append(left + _clip(", ".join(f.keywords), width - len(left)))
        elif f.promotes:
            about = "promotes " + " ".join(_tok(t) for t in f.promotes)
            lines.append(left + _clip(about, width - len(left)))
        else:
            lines.append(left.rstrip())
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def _clip_marked(text: str, width: int) -> str:
    """`text` in `width` characters, keeping its <<marked>> token in view (context before
    it first: what the token follows is what made it fire)."""
    text = " ".join(text.split())
    lo, hi = text.find("<<"), text.rfind(">>")
    if len(text) <= width or lo < 0 or hi < lo:
        return _clip(text, width)
    before, mark, after = text[:lo], text[lo : hi + 2], text[hi + 2 :]
    room = max(width - len(mark), 0)
    keep_after = min(len(after), room // 4)
    keep_before = min(len(before), room - keep_after)
    keep_after = min(len(after), room - keep_before)
    head = before[len(before) - keep_before :]
    if keep_before < len(before) and head:
        head = "…" + head[1:]
    tail = after[:keep_after]
    if keep_after < len(after) and tail:
        tail = tail[:-1] + "…"
    return head + mark + tail


def format_feature(v: FeatureView, run: str, width: int) -> str:
    lines = [f"feature {v.feature}   (run {run})"]
    if v.dead:
        lines.append("  dead: never active on this run's rows")
    else:
        lines.append(
            f"  active in {v.count:,} rows   density {100 * v.density:.3g}%   "
            f"log10 density {v.log10_density:.2f}"
        )
        lines.append(
            f"  max act {v.max_act:.4g}   mean active act {v.mean_active_act:.4g}   "
            f"mean act (all rows) {v.mean_act:.4g}"
        )
    if v.keywords:
        lines.append("  keywords: " + _clip(", ".join(v.keywords), width - 12))
    if v.explanation:
        lines.append("  explanation: " + _clip(v.explanation, width - 15))
    for name, s in v.scores.items():
        shuffled = f"   (shuffled {s['shuffled_score']:.3f})" if "shuffled_score" in s else ""
        lines.append(f"  score {name}: {s['score']:.3f}{shuffled}")
    lines += _family_lines(v, width)
    if v.stale:
        why = "; ".join(v.stale) + " (re-run the stages that made them)"
        lines.append("  left out: " + _clip(why, width - 12))
    if v.logit_lens is not None:
        for side, pairs in (
            ("promotes", v.logit_lens.promoted),
            ("suppresses", v.logit_lens.suppressed),
        ):
            toks = ", ".join(f"{_tok(t)} {x:+.3g}" for t, x in pairs)
            lines.append(f"  {side}: " + _clip(toks, width - len(side) - 4))
    if v.top:
        row_w = max(3, len(str(max(e.row for e in v.top))))
        tokens = v.top[0].tokens is not None
        what = "window (the row's token <<marked>>)" if tokens else "text"
        lines += ["", "top examples", f"  {'#':>3}  {'act':>8}  {'row':>{row_w}}  {what}"]
        clip = _clip_marked if tokens else _clip
        for i, e in enumerate(v.top, 1):
            left = f"  {i:>3}  {e.act:>8.4g}  {e.row:>{row_w}}  "
            lines.append(left + clip(e.text, width - len(left)))
    return "\n".join(lines)


MAX_FAMILY_LINES = 5
MAX_SPLITS = 5


def _family_lines(v: FeatureView, width: int) -> list[str]:
    """The feature's families (nearest parent first) and its splits across SAE widths."""
    lines = []
    for r in sorted(v.families, key=lambda r: r.depth)[:MAX_FAMILY_LINES]:
        where = "its parent" if r.depth == 0 else f"depth {r.depth}, under #{r.tree_parent}"
        left = f"  family of feature {r.parent} ({r.size} features, {where}): "
        lines.append(left + _clip(r.name or "(unnamed)", width - len(left)))
        if r.children:
            kids = ", ".join(f"#{c}" for c in r.children)
            lines.append("    children: " + _clip(kids, width - 14))
    if len(v.families) > MAX_FAMILY_LINES:
        lines.append(f"  ({len(v.families) - MAX_FAMILY_LINES} more families: --json)")
    groups: dict[tuple[str, str, int], list[SplitRef]] = {}
    for s in v.splits:
        groups.setdefault((s.relation, s.sae, s.d_sae), []).append(s)
    for (relation, sae, d_sae), refs in groups.items():
        refs = sorted(refs, key=lambda s: -s.cosine)
        if relation == "split from":
            s = refs[0]
            lines.append(
                f"  split from feature {s.feature} of {sae} (d_sae {d_sae}): cosine "
                f"{s.cosine:.2f}; it fires on {s.inside:.0%} of this feature's rows, this one "
                f"on {s.share:.0%} of its rows"
            )
            continue
        head = f"  splits into {len(refs)} features of {sae} (d_sae {d_sae}): "
        parts = [f"#{s.feature} cos {s.cosine:.2f} share {s.share:.0%}" for s in refs[:MAX_SPLITS]]
        more = f", +{len(refs) - MAX_SPLITS} more" if len(refs) > MAX_SPLITS else ""
        lines.append(head + _clip("; ".join(parts) + more, width - len(head)))
    return lines


def format_hits(hits: list[TextHit], text: str, width: int) -> str:
    lines = [f"features of: {_clip(text, width - 14)}"]
    if not hits:
        return lines[0] + "\n  (no feature is active on this text)"
    lines.append(f"  {'feature':>7}  {'act':>8}  {'density':>8}  top text (or keywords)")
    for h in hits:
        left = f"  {h.feature:>7}  {h.act:>8.4g}  {h.density:>8.2%}  "
        about = "[" + ", ".join(h.keywords[:5]) + "] " + h.top_text if h.keywords else h.top_text
        lines.append(left + _clip(about, width - len(left)))
    return "\n".join(lines)


def _check_args(ns: argparse.Namespace) -> None:
    if ns.text is not None and ns.feature is not None:
        raise SaescopeError("give a FEATURE id or --text TEXT, not both")
    if ns.text is not None and not ns.text.strip():
        raise SaescopeError("the --text to inspect is empty")
    if ns.n < 1:
        raise SaescopeError(f"-n must be >= 1, got {ns.n}")
    if ns.width and ns.width < 60:
        raise SaescopeError(f"--width must be at least 60 (0: the terminal's), got {ns.width}")


def main(ns: argparse.Namespace) -> int:
    _check_args(ns)
    width = ns.width or max(60, shutil.get_terminal_size((100, 24)).columns)
    if ns.text is not None and store_rows_kind(ns.run) == "tokens":
        th = token_text_features(ns.run, ns.text, ns.n)
        out = json.dumps(asdict(th), indent=2) if ns.json else format_token_hits(th, width)
    elif ns.text is not None:
        hits = text_features(ns.run, ns.text, ns.n)
        out = (
            json.dumps([asdict(h) for h in hits], indent=2)
            if ns.json
            else format_hits(hits, ns.text, width)
        )
    elif ns.feature is None:
        raise SaescopeError("give a FEATURE id or --text TEXT (see `saescope inspect --help`)")
    else:
        from saescope.latents import LatentCache

        LatentCache(ns.run).sae_dir()  # refuses a cache of a store or an SAE changed since
        v = feature_view(ns.run, ns.feature, ns.n)
        out = (
            json.dumps(_as_json(asdict(v)), indent=2)
            if ns.json
            else format_feature(v, ns.run, width)
        )
    print(out)
    return 0
