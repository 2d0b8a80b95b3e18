"""An OpenAI-compatible server on loopback that answers like an LLM that knows the topics.

The topic run (`test_keywords_fixture`) plants five topics, each with its own
vocabulary. This server reads the prompts saescope sends (explain, detection,
fuzzing, intruder, simulation) and answers as a capable model would on that corpus:
it explains a feature by the topic whose words fill its examples (wrapped in the
markdown and preamble real models add), and judges an example by whether it holds
words of the named topic. Answers come with top log-probabilities when asked. It
counts the requests and keeps every prompt, so tests can check what was sent.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request

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
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def hits(self, topic: str, text: str) -> int:
        return len(set(WORD.findall(text.lower())) & self.lex[topic])

    def topic_of(self, texts: list[str]) -> str:
        return max(self.lex, key=lambda t: (sum(self.hits(t, x) for x in texts), t))

    def named_topic(self, prompt: str) -> str | None:
        m = re.search(r"described as: (.*)", prompt)
        desc = m.group(1).lower() if m else ""
        return next((t for t in self.lex if t in desc), None)

    def answer(self, prompt: str) -> str:
        examples = [(int(n), t) for n, t in EXAMPLE.findall(prompt)]
        if "Explanation:" in prompt:
            active = prompt.split("NOT active")[0]
            topic = self.topic_of([t for _, t in EXAMPLE.findall(active)])
            return f'Sure! Looking at the examples.\n\n**Explanation:** "Sentences about {topic}."'
        topic = self.named_topic(prompt)
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


def logprobs(text: str, top: int) -> dict:
    """OpenAI's logprobs.content for `text`, one entry per character (a digit is sure at 0.9)."""
    content = []
    for ch in text:
        if ch in "01":
            other = "1" if ch == "0" else "0"
            alts = [{"token": ch, "logprob": -0.105, "bytes": None}]
            alts.append({"token": other, "logprob": -2.303, "bytes": None})
        else:
            alts = [{"token": ch, "logprob": -0.01, "bytes": None}]
        content.append(
            {"token": ch, "logprob": alts[0]["logprob"], "bytes": None, "top_logprobs": alts[:top]}
        )
    return {"content": content}


def make_app(oracle: Oracle) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        prompt = "\n".join(m["content"] for m in body["messages"])
        with oracle.lock:
            oracle.prompts.append(prompt)
        text = oracle.answer(prompt)
        choice: dict = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": logprobs(text, int(body.get("top_logprobs") or 0))
            if body.get("logprobs")
            else None,
        }
        return {
            "id": f"oracle-{len(oracle.prompts)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "oracle"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt) // 4,
                "completion_tokens": len(text) // 4 + 1,
                "total_tokens": len(prompt) // 4 + len(text) // 4 + 1,
            },
        }

    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yield its /v1 URL."""
    import socket
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the oracle server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
