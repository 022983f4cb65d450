"""The quality benchmark (``python -m bench.quality``): the project's counterpart of the
TF-LLMER paper's main table and training-loss figure, run through the real service."""
