"""A real OpenAI-compatible HTTP server on loopback whose answers a test scripts, fault by fault.

`FaultServer().start()` serves `POST /v1/chat/completions` on 127.0.0.1 at a
free port in a background thread (uvicorn); `stop()` ends it. Each request
takes the next step of the script (`play(...)`), or "ok" once it is used up:

  ok             a correct answer, after `ok_delay` seconds: `answer(body)` when the server
                 was given an answerer (e.g. `oracle_server.Oracle`), else
                 "echo: <last user message>"
  429:S          429 with `Retry-After: S` (seconds)
  429-date:S     429 with `Retry-After` as an HTTP date S seconds ahead
  500, 503, 400, 401, 404, 422   that status with a JSON error body
  401-echo       401 quoting the Authorization header it received (as some servers do)
  hang:S         no answer for S seconds (past the client's timeout), then a correct one
  malformed      status 200, a body that is not JSON
  empty          status 200, JSON with no choices
  length         a truncated answer (finish_reason "length")
  wrong          an answer in the wrong format (prose where a number was asked)

It counts requests, the most in flight at once, and keeps the Authorization
headers and request bodies it received.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

WRONG_ANSWER = "Well, it is hard to say; the examples are all rather different from each other."


class FaultServer:
    def __init__(
        self, ok_delay: float = 0.0, answer: Callable[[dict[str, Any]], str] | None = None
    ) -> None:
        self.ok_delay = ok_delay
        self.answer = answer
        self.script: deque[str] = deque()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def play(self, *steps: str) -> None:
        """Answer the next requests with `steps`, in order (then "ok")."""
        self.script = deque(steps)

    def reset(self) -> None:
        self.script.clear()
        self.requests = self.in_flight = self.max_in_flight = 0
        self.auth.clear()
        self.bodies.clear()
        self.ok_delay = 0.0

    def start(self) -> FaultServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    async def _chat(self, request: Request) -> Response:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.auth.append(request.headers.get("authorization", ""))
            body = await request.json()
            self.bodies.append(body)
            step = self.script.popleft() if self.script else "ok"
            return await self._answer(step, body, self.auth[-1])
        finally:
            self.in_flight -= 1

    async def _answer(self, step: str, body: dict[str, Any], request_auth: str) -> Response:
        name, _, arg = step.partition(":")
        if name == "429":
            return _error(429, "rate limited", {"Retry-After": arg or "1"})
        if name == "429-date":
            return _error(
                429,
                "rate limited",
                {"Retry-After": formatdate(time.time() + float(arg), usegmt=True)},
            )
        if name == "401-echo":  # a server that quotes the key it was sent back in its error
            return _error(401, f"invalid key {request_auth}")
        if name.isdigit():
            return _error(int(name), f"scripted {name}")
        if name == "hang":
            await asyncio.sleep(float(arg or 5))
            return _completion(body, "too late")
        if name == "malformed":
            return Response('{"id": "x", "choices": [{"message": ', media_type="application/json")
        if name == "empty":
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})
        if name == "length":
            return _completion(body, "The feature fires on words about", finish="length")
        if name == "wrong":
            return _completion(body, WRONG_ANSWER)
        assert name == "ok", f"unknown step {step!r}"
        if self.ok_delay:
            await asyncio.sleep(self.ok_delay)
        if self.answer is not None:
            return _completion(body, self.answer(body))
        last_user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return _completion(body, f"echo: {last_user}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"message": message, "type": "scripted", "code": status}},
        status_code=status,
        headers=headers,
    )


def _completion(body: dict[str, Any], text: str, finish: str = "stop") -> Response:
    """A chat completion answering `text`, with logprobs when the request asked for them.

    Tokens are words with their leading space; a word of a list ("[1,", "0]") is cut
    into its digits and its brackets and commas, and a digit's first alternative is the
    other digit of 0/1 (as a 0/1 judgement's would be)."""
    tokens: list[str] = []
    for i, word in enumerate(text.split(" ")):
        lead = "" if i == 0 else " "
        parts = re.findall(r"\d|[^\d]+", word) if re.fullmatch(r"[\[\],\d]+", word) else [word]
        tokens += [lead + parts[0], *parts[1:]] if parts else [lead]
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": None,
    }
    if body.get("logprobs"):
        n = int(body.get("top_logprobs") or 1)
        alts = [(-1.5, " maybe"), (-2.5, " no"), (-3.5, " yes")]

        def top(t: str) -> list[dict[str, Any]]:
            others = list(alts)
            if t.strip() in ("0", "1"):
                other = t.replace(t.strip(), "1" if t.strip() == "0" else "0")
                others = [(-2.3, other), *alts]
            pairs = [(-0.1, t), *[(lp, a) for lp, a in others]][:n]
            return [{"token": a, "logprob": lp} for lp, a in pairs]

        choice["logprobs"] = {
            "content": [{"token": t, "logprob": -0.1, "top_logprobs": top(t)} for t in tokens]
        }
    return JSONResponse(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fault"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": len(tokens),
                "total_tokens": 10 + len(tokens),
            },
        }
    )
