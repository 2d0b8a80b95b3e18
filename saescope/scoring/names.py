"""The names a scorer scores: keyword lists or LLM explanations, and the split they used.

In: a run and which names (`keywords`: interp/keywords.parquet; `explanations`:
interp/explanations.jsonl). Out: `Names`: per feature its name as phrases (a
keyword list, or the explanation as one phrase) and as one text, the features that
have no name (and why), the naming/scoring split the names were made with (read
from their provenance record, so scorers use the other half), the names' method,
and the file and record that make them an upstream input.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from saescope import provenance
from saescope.errors import SaescopeError
from saescope.llm.jobs import ResultsFile
from saescope.paths import RunPaths

NAME_KINDS = ("keywords", "explanations")


class Names(NamedTuple):
    kind: str  # keywords | explanations
    method: str  # the keywords method or the explainer
    phrases: dict[int, list[str]]  # named features -> keywords (an explanation: one phrase)
    not_named: dict[int, str]  # feature -> "status: reason"
    split: tuple[int, str]  # (split_seed, split kind) the names were made with
    path: Path
    record: Path

    def text(self, feature: int) -> str:
        """The name as one text: keywords joined by ", ", or the explanation."""
        return ", ".join(self.phrases[feature])


def read_names(run: str | Path, kind: str) -> Names:
    rp = RunPaths(run)
    if kind == "keywords":
        from saescope.interp.keywords import read_keywords

        kw = read_keywords(run)
        path, record = rp.keywords, rp.keywords_record
        phrases, not_named = {}, {}
        for f, k, status, reason in zip(
            kw["feature"], kw["keywords"], kw["status"], kw["reason"], strict=True
        ):
            if status == "ok":
                phrases[int(f)] = [str(x) for x in k]
            else:
                not_named[int(f)] = f"{status}: {reason}"
    elif kind == "explanations":
        path, record = rp.explanations, rp.explanations_record
        if not path.exists():
            raise SaescopeError(
                f"no explanations at {path}; run `saescope explain --run {run}` first "
                "(or score the keywords: --names keywords)"
            )
        phrases, not_named = {}, {}
        for f, r in ResultsFile(path).load().items():
            if r.get("status") == "ok" and r.get("explanation"):
                phrases[f] = [str(r["explanation"])]
            else:
                not_named[f] = f"{r.get('status')}: {r.get('reason', '')}"
    else:
        raise SaescopeError(f"unknown names {kind!r}; choose {', '.join(NAME_KINDS)}")
    saved = provenance.read_record(record)
    if saved is None:
        raise SaescopeError(
            f"{record} is missing: the {kind} have no record of what they were made from; "
            f"re-run `saescope {'keywords' if kind == 'keywords' else 'explain'} --overwrite`"
        )
    cfg = saved["config"]
    method = str(cfg.get("method", ""))
    return Names(
        kind, method, phrases, not_named, (int(cfg["split_seed"]), str(cfg["split"])), path, record
    )


def same_activations(names: Names, upstream: dict[str, str]) -> None:
    """Refuse to score names on other activations than those they were made from."""
    made_from = provenance.saved_upstream(names.record)
    differ = [k for k in ("corpus", "acts", "sae") if made_from.get(k) != upstream.get(k)]
    if differ:
        raise SaescopeError(
            f"the {names.kind} in {names.path} were made from other activations than these "
            f"({', '.join(differ)} differ): scores would not measure those names. Re-make "
            "them on these activations (or score with the ones they used)"
        )
