"""Answers like an LLM that knows the topic run's topics, for the loopback fault server.

The topic run (`test_keywords_fixture`) plants five topics, each with its own
vocabulary. `Oracle` reads the prompts saescope sends (explain, detection,
fuzzing, intruder, simulation) and answers as a capable model would on that corpus:
it explains a feature by the topic whose words fill its examples (wrapped in the
markdown and preamble real models add), and judges an example by whether it holds
words of the named topic. `FaultServer(answer=oracle)` serves these answers over
real HTTP (with log-probabilities when asked), between any scripted faults.
"""

from __future__ import annotations

import re
from typing import Any

WORD = re.compile(r"[a-z]+")
EXAMPLE = re.compile(r"^Example (\d+): (.*)$", re.MULTILINE)


def lexicons(topics: dict[str, dict[str, list[str]]]) -> dict[str, set[str]]:
    """topic -> its content words (four letters or more, shared words left out)."""
    words = {
        t: {
            w
            for part in parts.values()
            for s in part
            for w in WORD.findall(s.lower())
            if len(w) > 3
        }
        for t, parts in topics.items()
    }
    shared = {w for t in words for u in words if t != u for w in words[t] & words[u]}
    return {t: w - shared for t, w in words.items()}


class Oracle:
    def __init__(self, topics: dict[str, dict[str, list[str]]]) -> None:
        self.lex = lexicons(topics)

    def hits(self, topic: str, text: str) -> int:
        return len(set(WORD.findall(text.lower())) & self.lex[topic])

    def topic_of(self, texts: list[str]) -> str:
        return max(self.lex, key=lambda t: (sum(self.hits(t, x) for x in texts), t))

    def named_topic(self, prompt: str) -> str | None:
        m = re.search(r"described as: (.*)", prompt)
        desc = m.group(1).lower() if m else ""
        return next((t for t in self.lex if t in desc), None)

    def __call__(self, body: dict[str, Any]) -> str:
        """The answer to a chat completion request body."""
        return self.answer("\n".join(m["content"] for m in body["messages"]))

    def answer(self, prompt: str) -> str:
        examples = [(int(n), t) for n, t in EXAMPLE.findall(prompt)]
        if "Explanation:" in prompt:
            active = prompt.split("NOT active")[0]
            topic = self.topic_of([t for _, t in EXAMPLE.findall(active)])
            return f'Sure! Looking at the examples.\n\n**Explanation:** "Sentences about {topic}."'
        topic = self.named_topic(prompt)
        if "Answer Yes or No." in prompt:  # one example a request: detection or fuzzing
            body = prompt.split("described as: ", 1)[1].split("\n\n", 1)[1]
            text = body.rsplit("\n\n", 1)[0].split("<<like this>>.\n\n")[-1]
            if "<<like this>>" in prompt:
                text = " ".join(re.findall(r"<<(.*?)>>", text))
                yes = bool(topic) and self.hits(topic, text) > 0
            else:
                yes = bool(topic) and self.hits(topic, text) >= 2
            return "Yes" if yes else "No"
        if "does not?" in prompt:  # intruder
            fewest = min(examples, key=lambda e: (self.hits(topic, e[1]) if topic else 0, e[0]))
            return str(fewest[0])
        if "from 0 (not active)" in prompt:  # simulation
            vals = [10 if topic and self.hits(topic, t) else 0 for _, t in examples]
            return "[" + ", ".join(map(str, vals)) + "]"
        if "marked <<like this>>" in prompt:  # fuzzing: is a marked span the topic's word?
            marks = [" ".join(re.findall(r"<<(.*?)>>", t)) for _, t in examples]
            vals = [int(bool(topic) and self.hits(topic, m) > 0) for m in marks]
            return "[" + ", ".join(map(str, vals)) + "]"
        vals = [int(bool(topic) and self.hits(topic, t) >= 2) for _, t in examples]  # detection
        return "[" + ", ".join(map(str, vals)) + "]"
