"""A GGUF model for llama-server, made here: random weights of a stated size, no model hub.

As for the GPT-2 reference server (``autotune/workload/model.py``), the *shape* is what OS tuning
sees: a model's parameter count and layout set its CPU, memory-bandwidth and cache cost whatever
the weights say, and the text it writes is noise. The default (hidden 640, 10 layers, MLP 1728,
10 heads, vocab 8192, context 1024: 60.1M parameters, ~120 MB in f16) generates tokens at tens
per second on one core, so a 2-core host can be pushed in and out of its SLO.

Reproducible: the tokenizer is a byte-level BPE trained by ``tokenizers`` on built-in text
(deterministic), the weights come from ``LlamaForCausalLM`` after
``torch.manual_seed(seed)``, and the GGUF's name is fixed, so the same spec gives the same bytes.
``save_pretrained`` writes a Hugging Face directory, which llama.cpp's own
``convert_hf_to_gguf.py --outtype f16`` (run by ``convert.py``) turns into the GGUF.

The tokenizer's vocabulary is exactly the model's, and every token is ASCII text: a byte-level BPE
(the GPT-2 scheme) whose alphabet is the characters of its corpus rather than all 256 bytes,
trained on the reference workload's English corpus plus a seeded synthetic one large enough to
learn ``vocab`` tokens. A random model samples tokens almost uniformly; llama-server holds back a
token that ends inside a UTF-8 character and sends it with the next one, and a padding token (what
the converter adds when the tokenizer is smaller than the model) prints nothing. Either would break
"one streamed chunk per token", which real models keep on English text and the latency clients rely
on. Non-ASCII input characters are dropped by this tokenizer; the load generators send English.
``<|endoftext|>`` (id 0) is BOS and EOS; the server is started with ``--ignore-eos``
(engines.py), so every request generates ``max_tokens`` tokens as on the reference server.

Models are cached next to the build (``<cache>/llamacpp/<pin>/models/``), named by every
parameter of the spec and the generator's revision. torch and transformers are imported inside
``write_hf`` only.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autotune.errors import WorkloadError
from autotune.workload.llamacpp import source

EOT = "<|endoftext|>"
# Bumped whenever how a spec becomes a GGUF changes (tokenizer, init, converter options), so a
# cached model made by older code is not taken for this one: it is part of the file name.
GENERATOR_REVISION = 1


class GgufSpec(BaseModel):
    """A Llama model's shape and seed (multi-head attention: as many KV heads as heads)."""

    model_config = ConfigDict(frozen=True)

    hidden: int = Field(640, ge=16)
    layers: int = Field(10, ge=1)
    intermediate: int = Field(1728, ge=16)
    heads: int = Field(10, ge=1)
    vocab: int = Field(8192, ge=512, le=16384)  # what the tokenizer corpus can fill, fast
    context: int = Field(1024, ge=64)  # max_position_embeddings, the GGUF's context_length
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "GgufSpec":
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden {self.hidden} must split into {self.heads} heads of an even size (RoPE)")
        return self

    @property
    def name(self) -> str:
        return (f"llama-h{self.hidden}-l{self.layers}-i{self.intermediate}-a{self.heads}"
                f"-v{self.vocab}-c{self.context}-s{self.seed}")

    @property
    def parameters(self) -> int:
        """Embedding + untied LM head + per layer (q, k, v, o; gate, up, down; 2 norms) + final norm."""
        h = self.hidden
        return 2 * self.vocab * h + self.layers * (4 * h * h + 3 * h * self.intermediate + 2 * h) + h


PRESETS: dict[str, GgufSpec] = {
    "llama60m": GgufSpec(),
    # tests: the same path in a second (0.2M parameters, mostly the embedding)
    "tiny": GgufSpec(hidden=64, layers=2, intermediate=128, heads=2, vocab=1024),
}
DEFAULT_PRESET = "llama60m"


class GgufResult(BaseModel):
    path: Path
    built: bool  # False: found in the cache
    parameters: int
    size_bytes: int
    generate_s: float = 0.0  # random weights + tokenizer + save_pretrained
    convert_s: float = 0.0  # convert_hf_to_gguf.py


def model_dir(root: Path) -> Path:
    return source.version_dir(root) / "models"


def gguf_path(root: Path, spec: GgufSpec) -> Path:
    return model_dir(root) / f"{spec.name}-g{GENERATOR_REVISION}-f16.gguf"


def resolve_model(root: Path, model: str) -> Path:
    """A preset name (its cached GGUF) or a path to a .gguf file; WorkloadError naming the
    command that makes it when it is not there."""
    if model in PRESETS:
        path = gguf_path(root, PRESETS[model])
        if not path.is_file():
            hint = "" if model == DEFAULT_PRESET else f" --preset {model}"
            raise WorkloadError(f"no GGUF for model {model!r} in {model_dir(root)}: run "
                                f"`autotune workload llamacpp model{hint}` first")
        return path
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise WorkloadError(f"--model {model!r}: not a preset ({', '.join(PRESETS)}) nor an existing .gguf file")


CORPUS_SEED = 20261207  # the synthetic corpus is part of the tokenizer, not of the weight seed


def synthetic_corpus(vocab: int) -> list[str]:
    """Seeded pseudo-words (syllables) in sentences, Zipf-weighted: enough distinct pairs for BPE
    to learn ``vocab`` tokens (8192 in ~2 s, 16384 in ~7 s)."""
    rng = random.Random(CORPUS_SEED)
    onsets = "b c d f g h j k l m n p r s t v w z br cr dr fr gr pr tr st sp sl ch sh th".split()
    vowels = "a e i o u ai ea ee oo ou".split()
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng"]
    n = max(4000, vocab // 2)
    words = ["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
             for _ in range(n)]
    weights = [1.0 / (rank + 1) for rank in range(n)]
    return [" ".join(rng.choices(words, weights, k=rng.randint(6, 14))).capitalize() + rng.choice(".?!,;:")
            for _ in range(n)]


def train_tokenizer(vocab: int):  # -> tokenizers.Tokenizer
    """Byte-level BPE of exactly ``vocab`` ASCII tokens, ``<|endoftext|>`` as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from autotune.workload.model import CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines() + synthetic_corpus(vocab), trainer=trainer)
    if tok.get_vocab_size() != vocab:
        raise WorkloadError(f"the tokenizer corpus yields {tok.get_vocab_size()} tokens, not {vocab}")
    return tok


def write_hf(spec: GgufSpec, out: Path) -> None:
    """The model and tokenizer as a Hugging Face directory (safetensors), seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = train_tokenizer(spec.vocab)
    config = LlamaConfig(hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                         intermediate_size=spec.intermediate, num_attention_heads=spec.heads,
                         num_key_value_heads=spec.heads, vocab_size=spec.vocab,
                         max_position_embeddings=spec.context, bos_token_id=0, eos_token_id=0,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT).save_pretrained(out)


def convert_argv(vendor: Path, hf_dir: Path, outfile: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "autotune.workload.llamacpp.convert", str(vendor), str(hf_dir),
            "--outtype", "f16", "--outfile", str(outfile), "--model-name", name]


def generate(root: Path, spec: GgufSpec) -> GgufResult:
    """The spec's GGUF in the cache, made unless it is there (written under a temporary name
    and renamed, so a killed run never leaves a file that looks complete)."""
    path = gguf_path(root, spec)
    if path.is_file():
        return GgufResult(path=path, built=False, parameters=spec.parameters, size_bytes=path.stat().st_size)
    with source.locked(root):
        vendor = source.unpack(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.parent / f".{spec.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    log_path = path.with_suffix(".log")
    try:
        t0 = time.monotonic()
        write_hf(spec, work / "hf")
        t1 = time.monotonic()
        tmp_out = work / path.name
        with open(log_path, "w") as log:
            res = subprocess.run(convert_argv(vendor, work / "hf", tmp_out, spec.name),
                                 stdout=log, stderr=subprocess.STDOUT)
        if res.returncode != 0 or not tmp_out.is_file():
            tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            raise WorkloadError(f"convert_hf_to_gguf.py failed (exit {res.returncode}): "
                                f"{tail[0][:200] if tail else 'no output'}; full log: {log_path}")
        t2 = time.monotonic()
        tmp_out.rename(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GgufResult(path=path, built=True, parameters=spec.parameters, size_bytes=path.stat().st_size,
                      generate_s=t1 - t0, convert_s=t2 - t1)
