"""An in-process client: a transformers chat model answering in this process, no server needed.

In: a causal LM name (default: the packaged SmolLM2, loaded by
`saescope.lm.model.load_lm`, which dequantises the GGUF once into the cache) and
chat requests. Out: `LLMResponse`s with exact token counts and, when asked, the
top log-probabilities of every generated token (read off the logits, so they
are always there). Also `token_losses`: the mean negative log-likelihood of each
text's tokens after a prefix (the surprisal scorer's measure).

The model loads on the first request. Requests that arrive together (a stage's
concurrency) are answered together: up to `batch_size` prompts, left-padded, in
one `generate`, which on a CPU answers several prompts in little more time than
one. Generation runs in a worker thread so the event loop stays free; one model
runs one batch at a time (a lock). Temperature 0 is greedy decoding.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from saescope.defaults import DEFAULT_LM
from saescope.errors import SaescopeError, describe
from saescope.llm.types import LLMError, LLMRequest, LLMResponse


class LocalClient:
    """Chat completions from a transformers causal LM in this process."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
    ) -> None:
        self.model = model_path or DEFAULT_LM
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, batch_size)
        self._lm: Any = None  # saescope.lm.model.LM, loaded on first use
        self._lock = threading.Lock()
        self._pending: list[tuple[LLMRequest, asyncio.Future[LLMResponse]]] = []
        self._worker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"LocalClient({self.model!r})"

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loads the model)."""
        return self._load().tokenizer

    def _load(self) -> Any:
        if self._lm is None:
            from saescope.lm.model import load_lm

            self._lm = load_lm(self.model, device=self.device, dtype=self.dtype)
            if not getattr(self._lm.tokenizer, "chat_template", None):
                raise SaescopeError(
                    f"the model {self.model!r} has no chat template, so it cannot answer chat "
                    "requests; use an instruct/chat model"
                )
        return self._lm

    async def complete(self, request: LLMRequest) -> LLMResponse:
        fut: asyncio.Future[LLMResponse] = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        """Answer the pending requests, up to `batch_size` in one generate call."""
        while self._pending:
            await asyncio.sleep(0)  # let requests made in the same tick join the batch
            batch = self._pending[: self.batch_size]
            del self._pending[: len(batch)]
            try:
                answers = await asyncio.to_thread(self.complete_many, [r for r, _ in batch])
            except Exception as exc:  # the whole batch failed: each caller gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), answer in zip(batch, answers, strict=True):
                if not fut.done():
                    fut.set_result(answer)

    async def aclose(self) -> None:
        return None

    def complete_sync(self, request: LLMRequest) -> LLMResponse:
        """`complete`, blocking: the answer to `request`."""
        return self.complete_many([request])[0]

    def complete_many(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        """The answers to `requests`, generated together (one batch per sampling setting)."""
        with self._lock:
            lm = self._load()
            out: dict[int, LLMResponse] = {}
            groups: dict[float, list[int]] = {}
            for i, r in enumerate(requests):
                groups.setdefault(r.temperature, []).append(i)
            for idx in groups.values():
                try:
                    answers = _generate(lm, [requests[i] for i in idx], self.model)
                except (RuntimeError, ValueError) as exc:  # e.g. a prompt beyond the context
                    raise LLMError(
                        "client", f"{self.model} cannot answer: {describe(exc)}"
                    ) from exc
                out.update(zip(idx, answers, strict=True))
            return [out[i] for i in range(len(requests))]

    def token_losses(self, prefix: str, texts: list[str], batch_size: int = 16) -> list[float]:
        """Mean negative log-likelihood (nats per token) of each text's tokens after `prefix`.

        The text is conditioned on the start token (BOS, else EOS) and the prefix's
        tokens; every token of the text is scored. An empty text gives nan.
        """
        with self._lock:
            return _token_losses(self._load(), prefix, texts, batch_size)

    async def atoken_losses(self, prefix: str, texts: list[str]) -> list[float]:
        return await asyncio.to_thread(self.token_losses, prefix, texts)


def _generate(lm: Any, requests: list[LLMRequest], model_name: str) -> list[LLMResponse]:
    """Answer requests of one temperature together: prompts left-padded into one batch."""
    import torch

    tok = lm.tokenizer
    prompts = [
        tok.apply_chat_template(
            [{"role": role, "content": text} for role, text in r.messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        for r in requests
    ]
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)  # (batch, width)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    temperature = requests[0].temperature
    kwargs: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        kwargs["temperature"] = temperature
    else:  # the model's generation config may ask for sampling: greedy means greedy
        kwargs.update(temperature=None, top_p=None, top_k=None)
    want_logprobs = any(r.top_logprobs > 0 for r in requests)
    with torch.no_grad():
        out = lm.model.generate(
            ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            max_new_tokens=max(r.max_tokens for r in requests),
            return_dict_in_generate=True,
            output_logits=want_logprobs,
            pad_token_id=int(pad),
            **kwargs,
        )
    eos = _eos_ids(lm)
    answers = []
    for i, r in enumerate(requests):
        new_ids = out.sequences[i, width:].tolist()[: r.max_tokens]
        stop = next((j for j, t in enumerate(new_ids) if t in eos), None)
        finish = "stop" if stop is not None else "length"
        n_generated = stop + 1 if stop is not None else len(new_ids)
        text_ids = new_ids[:stop] if stop is not None else new_ids
        top = None
        if r.top_logprobs > 0:
            top = []
            for step_logits in out.logits[:n_generated]:  # each (batch, vocab)
                logp = torch.log_softmax(step_logits[i].float(), dim=-1)
                vals, tids = logp.topk(r.top_logprobs)
                step: dict[str, float] = {}
                for v, t in zip(vals.tolist(), tids.tolist(), strict=True):
                    step.setdefault(
                        tok.decode([t]), v
                    )  # two ids may decode alike: keep the likelier
                top.append(step)
        answers.append(
            LLMResponse(
                text=tok.decode(text_ids, skip_special_tokens=True),
                prompt_tokens=len(prompts[i]),
                completion_tokens=n_generated,
                model=model_name,
                top_logprobs=top,
                finish_reason=finish,
            )
        )
    return answers


def _eos_ids(lm: Any) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()


def start_ids(tokenizer: Any) -> list[int]:
    """The token a scored text is conditioned on when there is no prefix: BOS, else EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [int(tid)]
    return []


def _token_losses(lm: Any, prefix: str, texts: list[str], batch_size: int) -> list[float]:
    import torch

    tok = lm.tokenizer
    context = start_ids(tok) + (
        tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    )
    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    out: list[float] = []
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        rows = [context + s for s in chunk]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)  # (batch, width), right-padded
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.no_grad():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # (batch, width, vocab)
        for i, s in enumerate(chunk):
            if not s or not context and len(s) < 2:
                out.append(float("nan"))
                continue
            first = max(len(context), 1)  # position of the first scored token
            end = len(context) + len(s)
            targets = ids[i, first:end].to(logp.device)
            nll = -logp[i, first - 1 : end - 1].gather(1, targets[:, None])[:, 0]
            out.append(float(nll.mean()))
    return out
