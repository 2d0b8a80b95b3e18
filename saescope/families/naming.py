"""A family's name, from its parent's and its descendants' names.

In: a family and the run's `Annotations` (current keywords, LLM explanations when
they exist). Out: `FamilyName`: `parent` (the parent's explanation, else its first
keywords), `shared` (the keywords most of the descendants have, that the parent's
label does not hold already, then the first keyword of each direct child) and
`name` = "parent: shared, ...". A family whose
features have no names gets no name (`name` None, `source` "none"), never a
placeholder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from saescope.families.trees import Family
from saescope.report.data import Annotations

PARENT_KEYWORDS = 2  # keywords of the parent in its label
CHILD_KEYWORDS = 3  # keywords of each descendant counted as shared
SHARED = 3  # descendants' keywords in the name


@dataclass(frozen=True)
class FamilyName:
    name: str | None
    parent: str | None  # the parent's label
    shared: list[str]  # descendants' keywords: the most shared, then the direct children's
    source: str  # "explanations", "keywords" or "none"


def family_name(fam: Family, ann: Annotations) -> FamilyName:
    parent, source = None, "none"
    if fam.parent in ann.explanations:
        parent, source = ann.explanations[fam.parent].text.strip().rstrip("."), "explanations"
    elif fam.parent in ann.keywords:
        parent, source = ", ".join(ann.keywords[fam.parent].words[:PARENT_KEYWORDS]), "keywords"
    taken = set((parent or "").lower().replace(",", " ").split())

    def new_word(w: str) -> bool:
        return not set(w.lower().split()) <= taken

    counts: Counter[str] = Counter()
    for child in fam.descendants:
        kw = ann.keywords.get(child)
        counts.update(list(dict.fromkeys(kw.words[:CHILD_KEYWORDS] if kw else [])))
    # words several descendants share, most shared first (then as they first appear) ...
    order = {w: i for i, w in enumerate(counts)}
    shared = [w for w in sorted(counts, key=lambda w: (-counts[w], order[w])) if counts[w] > 1]
    # ... then the first keyword of each direct child, strongest edge first
    for child in fam.children_of(fam.parent):
        kw = ann.keywords.get(child)
        if kw and kw.words:
            shared.append(kw.words[0])
    shared = [w for w in dict.fromkeys(shared) if new_word(w)][:SHARED]
    if source == "none" and shared:
        source = "keywords"
    name: str | None = ", ".join(shared) if shared else None
    if parent:
        name = f"{parent}: {name}" if name else parent
    return FamilyName(name, parent, shared, source)
