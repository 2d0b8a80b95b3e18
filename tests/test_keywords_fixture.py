"""A small run with planted structure, shared by the keyword and scoring tests.

Five clearly distinct topics (cooking, football, astronomy, finance, medicine),
60 template sentences each, embedded with the packaged MiniLM; a TopK SAE with a
few more features than topics, trained for a few hundred steps here, so that
features fire per topic. Built once per test session.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

TOPICS: dict[str, dict[str, list[str]]] = {
    "cooking": {
        "subj": ["The chef", "My grandmother", "The baker", "Our cook", "The kitchen team"],
        "verb": ["simmered", "baked", "roasted", "seasoned", "chopped", "stirred"],
        "obj": [
            "the garlic",
            "the pasta sauce",
            "fresh bread",
            "the onions",
            "a chicken stew",
            "the tomato soup",
        ],
        "tail": [
            "in the oven",
            "with olive oil",
            "for the dinner recipe",
            "in a cast iron pan",
            "with butter and herbs",
        ],
    },
    "football": {
        "subj": [
            "The striker",
            "The goalkeeper",
            "The midfielder",
            "The team captain",
            "The coach",
        ],
        "verb": ["scored", "defended", "missed", "celebrated", "passed", "kicked"],
        "obj": [
            "a late goal",
            "the penalty",
            "the ball",
            "a free kick",
            "the corner kick",
            "the match winner",
        ],
        "tail": [
            "in the stadium",
            "during the league match",
            "before the referee whistled",
            "in the second half",
            "against the rival club",
        ],
    },
    "astronomy": {
        "subj": [
            "The astronomer",
            "The telescope",
            "The space probe",
            "The observatory",
            "The astronaut",
        ],
        "verb": ["observed", "photographed", "discovered", "tracked", "measured", "orbited"],
        "obj": [
            "a distant galaxy",
            "the comet",
            "a new exoplanet",
            "the nebula",
            "the moon craters",
            "a supernova",
        ],
        "tail": [
            "in the night sky",
            "beyond the solar system",
            "through the orbit",
            "near the bright stars",
            "across the milky way",
        ],
    },
    "finance": {
        "subj": [
            "The investors",
            "The central bank",
            "The hedge fund",
            "The stock market",
            "The accountant",
        ],
        "verb": ["sold", "bought", "raised", "cut", "audited", "traded"],
        "obj": [
            "the shares",
            "interest rates",
            "the bonds",
            "quarterly profits",
            "the dividend",
            "the currency",
        ],
        "tail": [
            "after the earnings report",
            "on wall street",
            "amid inflation fears",
            "before the market closed",
            "to cover the debt",
        ],
    },
    "medicine": {
        "subj": ["The doctor", "The nurse", "The surgeon", "The hospital", "The patient"],
        "verb": ["treated", "diagnosed", "prescribed", "examined", "vaccinated", "monitored"],
        "obj": [
            "the infection",
            "a fever",
            "the antibiotics",
            "the heart disease",
            "the blood pressure",
            "the wound",
        ],
        "tail": [
            "in the clinic",
            "after the surgery",
            "with a new vaccine",
            "in the emergency room",
            "during the hospital visit",
        ],
    },
}
PER_TOPIC = 60


def topic_texts(seed: int = 0) -> tuple[list[str], list[str]]:
    """(texts, topic label per text): PER_TOPIC distinct sentences per topic, shuffled."""
    rng = random.Random(seed)
    texts, labels = [], []
    for name, parts in TOPICS.items():
        seen: set[str] = set()
        while len(seen) < PER_TOPIC:
            s = " ".join(rng.choice(parts[k]) for k in ("subj", "verb", "obj", "tail")) + "."
            seen.add(s)
        texts += sorted(seen)
        labels += [name] * PER_TOPIC
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


def train_topk(x: torch.Tensor, d_sae: int, k: int, steps: int = 300, seed: int = 0):
    """A small TopK SAE trained here (Adam on MSE), decoder rows unit norm."""
    from saescope.sae import SAE, SAEConfig

    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig("topk", x.shape[1], d_sae, k=k))
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        init = x[torch.randperm(len(x), generator=g)[:d_sae]] - x.mean(0)
        sae.W_dec.copy_(init / init.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(steps):
        out = sae(x)
        loss = (out.x_hat - x).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
    return sae


def build_topic_run(root: Path) -> tuple[Path, list[str]]:
    """Write corpus, acts and sae/ of the topic run under `root`; return (run, labels)."""
    from saescope.corpus import CorpusConfig
    from saescope.corpus import run as make_corpus
    from saescope.embed import EmbedConfig
    from saescope.embed import run as embed
    from saescope.paths import RunPaths
    from saescope.store import ActivationStore

    run = root / "topics"
    texts, labels = topic_texts()
    src = root / "topics.txt"
    src.write_text("\n".join(texts) + "\n")
    make_corpus(CorpusConfig(run=str(run), source=str(src), min_chars=5))
    embed(EmbedConfig(run=str(run), batch_size=64))
    store = ActivationStore(RunPaths(run).acts)
    x = store.rows(np.arange(store.count))
    train_topk(x, d_sae=8, k=1).save(RunPaths(run).sae)
    return run, labels


_BUILT: dict[str, tuple[Path, list[str]]] = {}


def topic_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """The session's topic run (built on first use)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = build_topic_run(tmp_path_factory.mktemp("kw"))
    return _BUILT[key]
