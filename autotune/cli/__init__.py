"""Command-line interface. Each command group lives in its own module; heavy imports stay
inside command functions so ``autotune --help`` starts fast and never imports torch,
transformers or scikit-learn."""
