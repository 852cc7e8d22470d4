"""Run the vendored ``convert_hf_to_gguf.py`` unmodified, with two facts about our model declared.

Usage: ``python -m autotune.workload.llamacpp.convert LLAMA_CPP_DIR MODEL_DIR [script options]``.
The vendored ``gguf-py`` goes first on ``sys.path`` (the pinned writer, not whatever ``gguf`` the
environment has), then two methods of the script's classes are replaced in memory:

- ``TextModel.get_vocab_base_pre`` returns ``"gpt-2"``. The script names a BPE pre-tokenizer by
  hashing how a tokenizer splits a test string and looking the hash up in a table of published
  models; a tokenizer trained in-process is in no table, so the lookup raises. Ours is
  ``tokenizers``' ByteLevel pre-tokenizer with the GPT-2 split regex, which is what llama.cpp's
  ``gpt-2`` pre-tokenizer implements.
- ``LlamaModel.set_vocab`` goes straight to ``_set_vocab_gpt2`` (byte-level BPE from
  tokenizer.json). It otherwise tries SentencePiece first, which needs the ``sentencepiece``
  package merely to learn that there is no ``tokenizer.model``.

Nothing in the cached tree is edited, so the tree stays exactly the pinned sdist's.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m autotune.workload.llamacpp.convert LLAMA_CPP_DIR MODEL_DIR [options]")
    vendor = Path(argv[0]).resolve()
    script = vendor / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise SystemExit(f"{script}: not found (unpack the llama.cpp tree first)")
    sys.path[0:0] = [str(vendor / "gguf-py"), str(vendor)]

    import conversion.base as base
    import conversion.llama as llama

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    llama.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2()
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
