#!/usr/bin/env python3
"""Reference logits for the tiny Llama test (tests/models/llama_reference.json).

Run once, by hand, in a scratch venv with transformers and torch (not in the test
command):

    /tmp/refvenv/bin/python tests/models/llama_reference.py > tests/models/llama_reference.json

It writes the model with make_tiny_llama.py (deterministic), runs Hugging Face's
LlamaForCausalLM on a few prompts in float32, and records the last position's logits and
the greedy continuation.
"""

import json
import os
import sys
import tempfile

import torch
import transformers
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tiny_llama  # noqa: E402

PROMPTS = [
    [1, 77, 78, 79],
    [1, 43, 104, 115, 115, 118, 35, 123, 118, 121, 115, 103],
    [1, 259, 120, 119, 104, 262, 13, 260],
]
GREEDY_TOKENS = 12

with tempfile.TemporaryDirectory() as out:
    make_tiny_llama.main(out)
    model = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cases = []
    with torch.no_grad():
        for ids in PROMPTS:
            x = torch.tensor([ids])
            logits = model(x).logits[0, -1]
            greedy = model.generate(
                x, max_new_tokens=GREEDY_TOKENS, do_sample=False, eos_token_id=None,
                pad_token_id=0, attention_mask=torch.ones_like(x),
            )[0, len(ids):]
            cases.append({
                "prompt_ids": ids,
                "last_logits": [float(v) for v in logits],
                "greedy_ids": [int(t) for t in greedy],
            })
json.dump(
    {"generator": f"transformers {transformers.__version__}, torch {torch.__version__}", "cases": cases},
    sys.stdout,
)
