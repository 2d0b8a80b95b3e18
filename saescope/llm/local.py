"""An in-process client: a transformers chat model answering in this process, no server needed.

In: a causal LM name (default: the packaged SmolLM2, loaded by
`saescope.lm.model.load_lm`, which dequantises the GGUF once into the cache) and
chat requests. Out: `LLMResponse`s with exact token counts and, when asked, the
top log-probabilities of every generated token (read off the logits, so they
are always there). Also `token_losses`: the mean negative log-likelihood of each
text's tokens after a prefix (the surprisal scorer's measure).

The model loads on the first request. One model answers one request at a time
(a lock); generation runs in a worker thread so the event loop stays free.
Temperature 0 is greedy decoding.
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
        self, model_path: str | None = None, *, device: str = "cpu", dtype: str = "float32"
    ) -> None:
        self.model = model_path or DEFAULT_LM
        self.device = device
        self.dtype = dtype
        self._lm: Any = None  # saescope.lm.model.LM, loaded on first use
        self._lock = threading.Lock()

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
        return await asyncio.to_thread(self.complete_sync, request)

    async def aclose(self) -> None:
        return None

    def complete_sync(self, request: LLMRequest) -> LLMResponse:
        """`complete`, blocking: the answer to `request`."""
        with self._lock:
            lm = self._load()
            try:
                return _generate(lm, request, self.model)
            except (RuntimeError, ValueError) as exc:  # e.g. a prompt longer than the context
                raise LLMError("client", f"{self.model} cannot answer: {describe(exc)}") from exc

    def token_losses(self, prefix: str, texts: list[str], batch_size: int = 16) -> list[float]:
        """Mean negative log-likelihood (nats per token) of each text's tokens after `prefix`.

        The text is conditioned on the start token (BOS, else EOS) and the prefix's
        tokens; every token of the text is scored. An empty text gives nan.
        """
        with self._lock:
            return _token_losses(self._load(), prefix, texts, batch_size)

    async def atoken_losses(self, prefix: str, texts: list[str]) -> list[float]:
        return await asyncio.to_thread(self.token_losses, prefix, texts)


def _generate(lm: Any, request: LLMRequest, model_name: str) -> LLMResponse:
    import torch

    tok = lm.tokenizer
    messages = [{"role": role, "content": text} for role, text in request.messages]
    enc = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    input_ids = enc["input_ids"].to(lm.device)  # (1, n_prompt)
    n_prompt = int(input_ids.shape[1])
    sample = request.temperature > 0
    kwargs: dict[str, Any] = {"do_sample": sample}
    if sample:
        kwargs["temperature"] = request.temperature
    else:  # the model's generation config may ask for sampling: greedy means greedy
        kwargs.update(temperature=None, top_p=None, top_k=None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = lm.model.generate(
            input_ids,
            attention_mask=enc["attention_mask"].to(lm.device),
            max_new_tokens=request.max_tokens,
            return_dict_in_generate=True,
            output_logits=request.top_logprobs > 0,
            pad_token_id=pad,
            **kwargs,
        )
    new_ids = out.sequences[0, n_prompt:].tolist()
    eos = _eos_ids(lm)
    finish = "stop"
    if new_ids and new_ids[-1] in eos:
        new_ids = new_ids[:-1]
    elif len(new_ids) >= request.max_tokens:
        finish = "length"
    n_generated = int(out.sequences.shape[1]) - n_prompt
    top = None
    if request.top_logprobs > 0:
        top = []
        for step_logits in out.logits[:n_generated]:  # each (1, vocab)
            logp = torch.log_softmax(step_logits[0].float(), dim=-1)
            vals, ids = logp.topk(request.top_logprobs)
            step: dict[str, float] = {}
            for v, i in zip(vals.tolist(), ids.tolist(), strict=True):
                step.setdefault(tok.decode([i]), v)  # two ids may decode alike: keep the likelier
            top.append(step)
    return LLMResponse(
        text=tok.decode(new_ids, skip_special_tokens=True),
        prompt_tokens=n_prompt,
        completion_tokens=n_generated,
        model=model_name,
        top_logprobs=top,
        finish_reason=finish,
    )


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
