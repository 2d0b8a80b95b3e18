"""Feature families: features grouped into trees by co-occurrence, and matched across SAE widths.

A sub-package because it holds several small concepts, one file each:
  methods.py  the two methods (saerch, thesis): their rules and published thresholds
  graph.py    normalised co-occurrence edges and their maximum spanning forest
  trees.py    families from the forests, round after round; near-duplicates merged
  stats.py    size, depth, parent-child vs child-child co-occurrence, block-diagonal ratio
  naming.py   a family's name from its parent's and children's keywords or explanations
  splits.py   feature splitting across SAE widths (decoder cosine, shared examples)
  tables.py   the files of families/ and `read_families` for inspect and the report
  stage.py    the `saescope families` stage: `run(FamiliesConfig) -> Path`
"""
