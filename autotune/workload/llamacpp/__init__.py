"""llama.cpp's own ``llama-server`` as a second reference workload, built and fed offline.

- ``source``: the pinned llama.cpp tree (vendored in the ``llama-cpp-python`` sdist), fetched by
  pip, checked against its sha256 and unpacked into the cache;
- ``build``: cmake + ninja into the cache, keyed by this CPU's instruction set, idempotent;
- ``gguf``: a random-weight Llama model of a stated size with a tokenizer trained in-process,
  converted by llama.cpp's own script (``convert``: the driver that runs it unmodified).

Everything lands under ``autotune.workload.cache.cache_root()``, never in the repository. The
server's command line and how to talk to it are in ``autotune/workload/engines.py``. torch and
transformers are imported only inside ``gguf`` functions and the ``convert`` driver.
"""
