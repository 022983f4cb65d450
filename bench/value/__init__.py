"""The value benchmark (``python -m bench.value``): what TF-LLMER buys a recommender team,
measured where users feel it (converged quality, time to quality, tail items, cold-start
items, zero-shot retrieval), always against PCA + norm in the same run."""
