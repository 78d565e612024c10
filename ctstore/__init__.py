"""ctstore: out-of-core co-occurrence stores, K0 embeddings and spectral seeding.

Pipeline (one module per arrow, docs/design.md §1)::

    corpus --tokenize--> tokens --count--> counts --k0--> embeddings --seed--> model --sft--> run
"""

__version__ = "0.1.0"
