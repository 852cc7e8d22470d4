"""The reference workload's model: GPT-2 with random weights and an offline tokenizer.

Nothing can be fetched from a model hub here, so the model is built from ``GPT2Config`` with
``torch.manual_seed`` weights. The *shape* is what matters for OS tuning: 124M parameters and
a 50257-token LM head cost the same CPU, memory bandwidth and cache footprint as the real GPT-2
whatever the weights say. The text it produces is noise.

Tokenizer choice: a byte-level BPE trained in-process (``tokenizers``) on the small English
corpus below, so prompts split into GPT-2-like token counts (about 4 characters per token)
rather than one token per byte. Training is deterministic and takes a few milliseconds. The
model still samples over GPT-2's full vocabulary (realistic LM-head cost); ids beyond the
tokenizer's vocabulary are decoded modulo its size.

Decoding is incremental with the KV cache (``past_key_values``), one forward pass per token,
so time to first token (prefill + first sample) and per-token time are measured separately.
Units: seconds everywhere.

Weights: anonymous memory by default. With ``weights_file`` they are written there once (the
same seeded weights) and mapped from it (``torch.load(mmap=True)``), as llama.cpp maps its GGUF
and servers map safetensors: they are then page cache, which the kernel may evict under memory
pressure and read back on the next forward pass. On a host without swap that is the only part
of the server a memory-heavy neighbour can take (bench/scenarios.py, ``mem``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # torch is heavy: imported inside functions only
    import torch
    from tokenizers import Tokenizer

FinishReason = Literal["length", "stop"]

# Short English text to train the tokenizer on (written for this project).
CORPUS = """
Write a short story about a robot who learns to paint the sea at night.
Explain quantum computing in simple terms for a reader who has never studied physics.
What are the benefits of exercise for the heart, the lungs and the mind?
Describe the process of photosynthesis in green plants and why light matters.
How does the internet work, from the cable under the sea to the page in your browser?
What is machine learning, and how is it different from writing rules by hand?
Explain the water cycle: evaporation, condensation, precipitation and collection.
Why is the sky blue during the day and red at sunset?
The operating system schedules processes on the processor and shares memory between them.
A server answers requests; when too many arrive at once they wait in a queue and latency grows.
Pressure stall information tells how long tasks waited for the processor, memory or disk.
Control groups limit how much processor time and memory a group of processes may use.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
In the morning the town was quiet; by noon the market was full of people, voices and colour.
Numbers such as 1, 2, 3, 10, 42, 100 and 2024 appear in text, as do dates and prices.
She asked him why the train was late, and he said the signal had failed near the bridge.
Good documentation says what a function does, which units it uses and why it exists.
""".strip()

TOKENIZER_VOCAB = 1024  # target size; a small corpus yields fewer merges, which is fine


class ModelSpec(BaseModel):
    """GPT-2 shape. Defaults are GPT-2 small (124M parameters)."""

    model_config = ConfigDict(frozen=True)

    name: str = "gpt2"
    n_layer: int = Field(12, ge=1)
    n_head: int = Field(12, ge=1)
    n_embd: int = Field(768, ge=8)
    n_positions: int = Field(1024, ge=16)
    vocab_size: int = Field(50257, ge=256)
    seed: int = 0


PRESETS: dict[str, ModelSpec] = {
    "gpt2": ModelSpec(),
    # For tests and --quick benches: same code path, ~3.3M parameters (mostly the embedding).
    "tiny": ModelSpec(name="gpt2-tiny", n_layer=2, n_head=2, n_embd=64, n_positions=256),
}


def spec_for(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError as err:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from err


class TokenEvent(BaseModel):
    """One generated token, with the seconds since the request started generating.

    ``logprob`` / ``top_logprobs`` are filled only when asked for: natural log-probabilities
    under the model's raw distribution (before temperature / top-p / top-k), as vLLM reports.
    """

    index: int
    token_id: int
    text: str
    elapsed_s: float
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = []  # (token id, logprob), most likely first


class Generation(BaseModel):
    """A finished generation. ``ttft_s`` is prefill + first token; ``tpot_s`` per later token."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    ttft_s: float
    total_s: float
    token_times_s: list[float] = []  # elapsed seconds at each token

    @property
    def tpot_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]


@lru_cache(maxsize=1)
def build_tokenizer() -> "Tokenizer":
    """Byte-level BPE trained on CORPUS: deterministic, offline, a few ms."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tok


class Engine:
    """A GPT-2 model and tokenizer; ``stream``/``generate`` are safe to call from many threads.

    Forward passes share the (read-only) weights; each request has its own KV cache and its
    own sampling generator, so concurrent requests do not interfere.
    """

    def __init__(self, spec: ModelSpec | None = None, *, threads: int | None = None,
                 weights_file: Path | None = None) -> None:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        self.spec = spec or ModelSpec()
        if threads is not None:
            torch.set_num_threads(max(1, threads))
        self.threads = torch.get_num_threads()
        self.tokenizer = build_tokenizer()
        self.tok_vocab = self.tokenizer.get_vocab_size()
        s = self.spec
        config = GPT2Config(
            n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
            n_positions=s.n_positions, vocab_size=s.vocab_size,
        )
        self.weights_file = weights_file
        if weights_file is not None and not Path(weights_file).exists():
            with _SEED_LOCK:
                torch.manual_seed(s.seed)
                built = GPT2LMHeadModel(config)
            tmp = Path(f"{weights_file}.{os.getpid()}.tmp")
            torch.save(built.state_dict(), tmp)
            os.replace(tmp, weights_file)
            del built
        if weights_file is not None:
            with torch.device("meta"):
                self.model = GPT2LMHeadModel(config)
            self.model.load_state_dict(torch.load(weights_file, mmap=True, weights_only=True), assign=True)
            self.model.tie_weights()
            self.model.eval()
        else:
            with _SEED_LOCK:
                torch.manual_seed(s.seed)
                self.model = GPT2LMHeadModel(config).eval()
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt).ids
        return ids or [0]  # an empty prompt still needs one position to predict from

    @cached_property
    def max_chars_per_token(self) -> int:
        """Longest token in characters: ``len(text) > n * this`` proves more than n tokens."""
        return max(len(self.tokenizer.decode([i])) for i in range(self.tok_vocab))

    def encode_tail(self, text: str, keep: int) -> list[int]:
        """The last ``keep`` tokens of ``text`` without tokenizing all of a long text.

        Tokenizing holds the GIL (about 2 us per character here), so a megabyte prompt would
        stall every other request and the /metrics page for seconds. Only a tail long enough
        to hold ``keep + 1`` tokens whatever they are is encoded; the first token of that tail
        may be a cut word and is never among those kept.
        """
        if keep <= 0:
            return []
        tail = (keep + 2) * self.max_chars_per_token
        ids = self.encode(text[-tail:] if len(text) > tail else text)
        return ids[-keep:]

    def decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id % self.tok_vocab])

    def decode(self, ids: list[int]) -> str:
        return "".join(self.decode_one(i) for i in ids)

    def stream(
        self, prompt: str, max_tokens: int, temperature: float = 0.7, seed: int | None = None
    ) -> Iterator[TokenEvent]:
        """Library convenience: the prompt is truncated from the left so that prompt plus
        ``max_tokens`` fit the model's context (the server refuses overflow instead)."""
        max_tokens = max(0, min(max_tokens, self.spec.n_positions - 1))
        ids = self.encode(prompt)[-(self.spec.n_positions - max_tokens):]
        yield from self.stream_ids(ids, max_tokens, temperature=temperature, seed=seed)

    def stream_ids(
        self, ids: list[int], max_tokens: int, *, temperature: float = 0.7, seed: int | None = None,
        top_p: float = 1.0, top_k: int = 0, logprobs: int | None = None,
        generator: "torch.Generator | None" = None,
    ) -> Iterator[TokenEvent]:
        """Yield tokens as they are produced (KV-cache incremental decoding).

        ``ids`` must fit the context with ``max_tokens`` (callers validate). ``temperature <= 0``
        is greedy; ``top_k`` 0 and ``top_p`` 1 disable those filters. ``logprobs`` = k also
        reports each token's logprob and the k most likely alternatives. A shared
        ``generator`` lets several choices of one request draw different samples.
        """
        import torch

        gen = generator
        if gen is None:
            gen = torch.Generator()
            gen.manual_seed(seed if seed is not None else time.time_ns() & 0xFFFFFFFF)
        start = time.perf_counter()
        with torch.inference_mode():
            past = None
            inp = torch.tensor([ids], dtype=torch.long)
            for i in range(max_tokens):
                out = self.model(input_ids=inp, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1, :]
                nxt = _sample(logits, temperature, top_p, top_k, gen)
                lp, top = None, []
                if logprobs is not None:
                    lp, top = _logprobs(logits, nxt, logprobs)
                yield TokenEvent(index=i, token_id=nxt, text=self.decode_one(nxt),
                                 elapsed_s=time.perf_counter() - start, logprob=lp, top_logprobs=top)
                inp = torch.tensor([[nxt]], dtype=torch.long)

    def prompt_logprobs(self, ids: list[int], k: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """Logprob of each prompt token given the ones before it (None for the first), with
        the k most likely alternatives: what ``echo`` with ``logprobs`` returns."""
        import torch

        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0]
        out: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
        for pos in range(1, len(ids)):
            out.append(_logprobs(logits[pos - 1], ids[pos], k))
        return out

    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 0.7, seed: int | None = None
    ) -> Generation:
        start = time.perf_counter()
        events = list(self.stream(prompt, max_tokens, temperature, seed))
        total = time.perf_counter() - start
        return Generation(
            text="".join(e.text for e in events),
            prompt_tokens=len(self.encode(prompt)),
            completion_tokens=len(events),
            finish_reason="length",
            ttft_s=events[0].elapsed_s if events else total,
            total_s=total,
            token_times_s=[e.elapsed_s for e in events],
        )


_SEED_LOCK = threading.Lock()  # manual_seed + init must not interleave with another build


def _sample(logits, temperature: float, top_p: float, top_k: int, gen) -> int:  # noqa: ANN001
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    scaled = logits / temperature
    if top_k and 0 < top_k < scaled.numel():
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_p, dim=-1) - sorted_p > top_p  # keep the first that crosses
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=gen))


def _logprobs(logits, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:  # noqa: ANN001
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if k > 0:
        values, idx = torch.topk(lp, k)
        top = [(int(i), float(v)) for i, v in zip(idx, values)]
    return float(lp[token_id]), top
