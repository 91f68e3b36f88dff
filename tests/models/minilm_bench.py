#!/usr/bin/env python3
"""sentence-transformers' side of `cargo bench --bench local_models`: embeddings per
second at each batch size on the same sentences, as JSON on stdout.

    PYTHON tests/models/minilm_bench.py MODEL_DIR SENTENCES_JSON SECONDS BATCH[,BATCH...]

Needs sentence-transformers and torch (a scratch venv, never the test venv).
"""

import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer


def rate(model, batches, seconds):
    model.encode(batches[0], batch_size=len(batches[0]), normalize_embeddings=True)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for b in batches:
            model.encode(b, batch_size=len(b), normalize_embeddings=True)
            done += len(b)
    return done / (time.perf_counter() - start)


model_dir, sentences_file, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
sizes = [int(s) for s in sys.argv[4].split(",")]
sentences = json.load(open(sentences_file))
model = SentenceTransformer(model_dir, device="cpu")
# Each thread count separately: on a shared, busy machine torch's OpenMP threads can wait
# on each other for most of a small batch, and one thread is then faster than two.
runs = {}
for threads in sorted({1, torch.get_num_threads()}):
    torch.set_num_threads(threads)
    with torch.inference_mode():
        runs[threads] = {
            str(size): rate(model, [sentences[i:i + size] for i in range(0, len(sentences), size)], seconds)
            for size in sizes
        }
json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs}, sys.stdout)
