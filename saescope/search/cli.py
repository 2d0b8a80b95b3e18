"""`saescope search`: steered semantic search from the command line.

    saescope search "The central bank raised rates." --run runs/demo
    saescope search "The central bank raised rates." --boost football --suppress 1234:0.5
    saescope search --row 42 --zero 17 --json

In: a sentence-embedding run with `index/` (`saescope index`) and `latents/`; feature names
(`saescope keywords`) to pick features by a word. Out: on stdout, the results before and
after the edits side by side (cosine similarity, text, each edited feature's activation
on the result), then why each edited result is there: the features it shares with the
query. Nothing is written. Options: `saescope/options/search.py`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict

from saescope.errors import SaescopeError
from saescope.search.query import ChosenEdit, Hit, SearchResult, SearchSession
from saescope.search.select import EditRequest, parse_spec


def requests(ns: argparse.Namespace) -> list[EditRequest]:
    """The edit requests of the flags, in the order boost, suppress, clamp, zero."""
    out = []
    for op in ("boost", "suppress", "clamp", "zero"):
        out += [parse_spec(op, spec) for spec in getattr(ns, op) or []]
    return out


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def describe_edit(e: ChosenEdit) -> str:
    name = f" [{e.label}]" if e.label else ""
    found = f' "{e.target}"' if isinstance(e.target, str) else ""
    if e.op == "zero":
        return f"zero #{e.feature}{found}{name}"
    unit = " x its max act" if e.unit == "typical" else " (absolute)"
    sign = {"boost": "+", "suppress": "-", "clamp": "= "}[e.op]
    value = f" (= {e.absolute:+.4g})" if e.unit == "typical" else ""
    return f"{e.op} #{e.feature}{found}{name}: {sign}{e.strength:g}{unit}{value}"


def _cell(h: Hit | None, text_w: int) -> str:
    if h is None:
        return " " * (text_w + 7)
    return f"{h.score:>5.3f}  {_clip(h.text, text_w):<{text_w}}"


def _acts(h: Hit | None, features: list[int]) -> str:
    if h is None:
        return ""
    return "".join(
        f"{h.edited.get(f, 0.0):>7.3g}" if h.edited.get(f) else f"{'.':>7}" for f in features
    )


def _shared(h: Hit, width: int) -> str:
    parts = [
        f"#{s.feature}"
        + (f" ({s.label})" if s.label else "")
        + f" {s.query_act:.2g}/{s.row_act:.2g}"
        for s in h.shared
    ]
    return _clip(", ".join(parts) if parts else "(no feature in common)", width)


def format_result(r: SearchResult, run: str, width: int) -> str:
    lines = [f"query: {_clip(r.query, width - 7)}"]
    if r.row is not None:
        lines[0] = f"query: row {r.row}: {_clip(r.query, width - 14 - len(str(r.row)))}"
    lines.append(f"run {run}: {r.index} index")
    lines += [f"  {describe_edit(e)}" for e in r.edits]
    if r.after is None:
        text_w = max(20, width - 14)
        lines += ["", f"  {'#':>2}  {'sim':>5}  text"]
        for h in r.before:
            lines.append(f"  {h.rank:>2}  {_cell(h, text_w)}".rstrip())
        lines += ["", "shared with the query (feature: query act / result act):"]
        lines += [f"  {h.rank:>2}  {_shared(h, width - 6)}" for h in r.before]
        return "\n".join(lines)
    assert r.cosine is not None and r.overlap is not None
    kept = round(r.overlap * len(r.before))
    lines.append(
        f"edited query: cosine {r.cosine:.3f} to the query; {kept} of {len(r.before)} results in both"
    )
    feats = list(dict.fromkeys(e.feature for e in r.edits))[:3]
    acts_w = 7 * len(feats)
    text_w = max(12, (width - 2 - 4 - 2 * 7 - 3 - acts_w) // 2)
    head = f"  {'#':>2}  {'sim':>5}  {'before':<{text_w}} | {'sim':>5}  {'after':<{text_w}}"
    head += "".join(f"{'#' + str(f):>7}" for f in feats)
    lines += ["", head]
    for i in range(max(len(r.before), len(r.after))):
        b = r.before[i] if i < len(r.before) else None
        a = r.after[i] if i < len(r.after) else None
        lines.append(f"  {i + 1:>2}  {_cell(b, text_w)} | {_cell(a, text_w)}{_acts(a, feats)}")
    lines += [
        "",
        "why the results after the edit (features shared with the query: query / result act):",
    ]
    before_rows = {h.row for h in r.before}
    for h in r.after:
        mark = " " if h.row in before_rows else "+"
        lines.append(f" {mark}{h.rank:>2}  {_shared(h, width - 7)}")
    lines.append("  (+: not among the results before the edit)")
    return "\n".join(lines)


def main(ns: argparse.Namespace) -> int:
    width = ns.width or max(80, shutil.get_terminal_size((120, 24)).columns)
    if ns.k < 1:
        raise SaescopeError(f"-k must be >= 1, got {ns.k}")
    if (ns.query is None) == (ns.row is None):
        raise SaescopeError("give a query text or --row (one of them)")
    reqs = requests(ns)  # a bad spec is refused before anything loads
    session = SearchSession(ns.run, ns.index, ns.nprobe, ns.sae, ns.model)
    result = session.search(
        ns.query, row=ns.row, edits=reqs, k=ns.k, strength=ns.strength, unit=ns.unit
    )
    print(json.dumps(asdict(result), indent=2) if ns.json else format_result(result, ns.run, width))
    return 0
