"""The offline GGUF model: its spec, cache name and parameter count; generated for real (marked)
from the pinned source, twice, to show the same spec gives the same bytes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.errors import WorkloadError
from autotune.workload.cache import cache_root
from autotune.workload.llamacpp import gguf, source

HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers"))


def test_default_spec_is_the_60m_model():
    spec = gguf.PRESETS[gguf.DEFAULT_PRESET]
    assert (spec.hidden, spec.layers, spec.intermediate, spec.heads, spec.vocab) == (640, 10, 1728, 10, 8192)
    assert spec.parameters == 60_060_800
    assert spec.name == "llama-h640-l10-i1728-a10-v8192-c1024-s0"


def test_every_parameter_is_in_the_cache_name(tmp_path):
    base = gguf.GgufSpec()
    names = {gguf.GgufSpec(**{**base.model_dump(), field: value}).name
             for field, value in (("hidden", 320), ("layers", 4), ("intermediate", 512), ("heads", 5),
                                  ("vocab", 4096), ("context", 2048), ("seed", 1))}
    assert len(names) == 7 and base.name not in names
    assert gguf.gguf_path(tmp_path, base) == (source.version_dir(tmp_path) / "models"
                                              / f"{base.name}-g{gguf.GENERATOR_REVISION}-f16.gguf")


def test_a_shape_heads_cannot_split_is_refused():
    with pytest.raises(ValueError, match="hidden 100 must split into 8 heads"):
        gguf.GgufSpec(hidden=100, heads=8)
    with pytest.raises(ValueError, match="hidden 30 must split into 10 heads of an even size"):
        gguf.GgufSpec(hidden=30, heads=10)
    with pytest.raises(ValueError, match="less than or equal to 16384"):
        gguf.GgufSpec(vocab=32000)


def test_resolve_model(tmp_path):
    with pytest.raises(WorkloadError, match=r"run `autotune workload llamacpp model` first$"):
        gguf.resolve_model(tmp_path, "llama60m")
    with pytest.raises(WorkloadError, match="model --preset tiny` first"):
        gguf.resolve_model(tmp_path, "tiny")
    path = gguf.gguf_path(tmp_path, gguf.PRESETS["tiny"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF")
    assert gguf.resolve_model(tmp_path, "tiny") == path
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    assert gguf.resolve_model(tmp_path, str(own)) == own
    with pytest.raises(WorkloadError, match="not a preset"):
        gguf.resolve_model(tmp_path, str(tmp_path / "absent.gguf"))


@pytest.mark.workload
@pytest.mark.skipif(not HAS_TORCH, reason="needs the workload extra (torch, transformers, tokenizers)")
def test_parameter_count_matches_transformers():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    for spec in gguf.PRESETS.values():
        config = LlamaConfig(hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                             intermediate_size=spec.intermediate, num_attention_heads=spec.heads,
                             num_key_value_heads=spec.heads, vocab_size=spec.vocab, tie_word_embeddings=False)
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        assert sum(p.numel() for p in model.parameters()) == spec.parameters


@pytest.mark.workload
@pytest.mark.skipif(not HAS_TORCH, reason="needs the workload extra (torch, transformers, tokenizers)")
def test_tokenizer_fills_the_vocab_with_ascii_tokens_deterministically():
    """Every token is complete text: llama-server then streams exactly one chunk per token."""
    a, b = gguf.train_tokenizer(8192), gguf.train_tokenizer(8192)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == 8192 and a.token_to_id(gguf.EOT) == 0
    texts = [a.decode([i]) for i in range(1, 8192)]
    assert all(t and t.isascii() for t in texts)
    text = "Why is the sky blue? Explain quantum computing in simple terms."
    assert a.decode(a.encode(text).ids) == text
    assert len(a.encode(text).ids) < len(text) / 2  # merges: not one token per byte


def _read_gguf(vendor: Path, path: Path) -> dict:
    """Metadata through the pinned gguf-py (in a child: its path must not leak into this one)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import gguf; r = gguf.GGUFReader(sys.argv[2]); "
            "print(json.dumps({k: f.contents() for k, f in r.fields.items() if not k.startswith('tokenizer.ggml.t') "
            "and k != 'tokenizer.ggml.merges'}))")
    out = subprocess.run([sys.executable, "-c", code, str(vendor / "gguf-py"), str(path)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out)


@pytest.mark.llamacpp
@pytest.mark.workload
@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="needs the workload extra (torch, transformers, tokenizers)")
@pytest.mark.skipif(not source.sdist_path(cache_root()).is_file(),
                    reason="the pinned llama.cpp sdist is not in the cache: run `autotune workload llamacpp build`")
def test_the_same_spec_gives_the_same_gguf_bytes(tmp_path):
    spec = gguf.PRESETS["tiny"]
    results = []
    for run in ("a", "b"):
        root = tmp_path / run
        source.sdist_path(root).parent.mkdir(parents=True)
        os.symlink(source.sdist_path(cache_root()), source.sdist_path(root))
        results.append(gguf.generate(root, spec))
    a, b = results
    assert a.built and b.built and a.path.read_bytes() == b.path.read_bytes()
    assert not gguf.generate(tmp_path / "a", spec).built  # cached by its parameters
    meta = _read_gguf(source.source_dir(tmp_path / "a"), a.path)
    assert meta["general.architecture"] == "llama" and meta["general.name"] == spec.name
    assert meta["general.file_type"] == 1  # MOSTLY_F16
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.vocab_size"]) == (2, 64, 1024)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eos_token_id"] == 0
