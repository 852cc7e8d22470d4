"""The GPT-2 engine: offline tokenizer, seeded sampling, KV-cache timing."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from autotune.workload.model import Engine, build_tokenizer, spec_for  # noqa: E402

pytestmark = pytest.mark.workload


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(spec_for("tiny"), threads=1)


def test_tokenizer_is_deterministic_and_subword():
    a = build_tokenizer.__wrapped__()
    b = build_tokenizer.__wrapped__()
    text = "Explain quantum computing in simple terms"
    assert a.encode(text).ids == b.encode(text).ids
    assert a.get_vocab() == b.get_vocab()
    # BPE merges: well under one token per character, like GPT-2's ~4 chars/token
    assert len(a.encode(text).ids) < len(text) / 2


def test_generate_counts_and_timing(engine):
    g = engine.generate("Why is the sky blue?", 12, temperature=0.7, seed=3)
    assert g.completion_tokens == 12
    assert g.prompt_tokens == len(engine.encode("Why is the sky blue?"))
    assert len(g.token_times_s) == 12
    assert all(b >= a for a, b in zip(g.token_times_s, g.token_times_s[1:]))
    assert 0 < g.ttft_s <= g.total_s
    assert len(g.tpot_s) == 11


def test_seeded_sampling_reproducible_and_seed_matters(engine):
    ids = lambda seed: [e.token_id for e in engine.stream("What is machine learning?", 20, 1.0, seed)]  # noqa: E731
    assert ids(7) == ids(7)
    assert ids(7) != ids(8)


def test_greedy_ignores_seed(engine):
    a = [e.token_id for e in engine.stream("hello", 8, 0.0, 1)]
    b = [e.token_id for e in engine.stream("hello", 8, 0.0, 2)]
    assert a == b


def test_long_prompt_is_truncated_to_context(engine):
    prompt = "the quick brown fox " * 400  # far beyond the tiny model's 256 positions
    g = engine.generate(prompt, 5, 0.7, 0)
    assert g.completion_tokens == 5


def test_weights_depend_only_on_seed():
    a = Engine(spec_for("tiny"), threads=1)
    b = Engine(spec_for("tiny"), threads=1)
    pa = next(a.model.parameters())
    pb = next(b.model.parameters())
    assert bool((pa == pb).all())


def test_weights_mapped_from_a_file_are_the_same_weights(tmp_path, engine):
    """--weights-file: written once with the seeded weights, then mapped (page cache the kernel
    may evict), not copied: every parameter's storage is the file's, and the model answers
    exactly as the anonymous one does."""
    path = tmp_path / "tiny.pt"
    mapped = Engine(spec_for("tiny"), threads=1, weights_file=path)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    maps = [line.split() for line in open("/proc/self/maps") if line.rstrip().endswith(str(path))]
    spans = [tuple(int(x, 16) for x in m[0].split("-")) for m in maps]
    for (name, p), (_, q) in zip(mapped.model.named_parameters(), engine.model.named_parameters(), strict=True):
        assert bool((p == q).all()), name
        assert any(lo <= p.data_ptr() < hi for lo, hi in spans), f"{name} is not in a mapping of {path}"
    assert mapped.model.lm_head.weight.data_ptr() == mapped.model.transformer.wte.weight.data_ptr()  # still tied
    greedy = lambda e: [t.token_id for t in e.stream("hello there", 8, 0.0, 1)]  # noqa: E731
    assert greedy(mapped) == greedy(engine)
    again = Engine(spec_for("tiny"), threads=1, weights_file=path)  # an existing file is mapped as is
    assert greedy(again) == greedy(engine)
