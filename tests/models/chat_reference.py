#!/usr/bin/env python3
"""Reference outputs for the Llama 3 and Qwen 2.5 style tiny models
(tests/models/chat_reference.json): logits and greedy continuations from Hugging Face's
LlamaForCausalLM / Qwen2ForCausalLM, and prompts rendered by `apply_chat_template` with
`tools`, so the Rust side is held to transformers' bytes.

Run once, by hand, in a scratch venv with transformers and torch (not in the test
command):

    /tmp/refvenv/bin/python tests/models/chat_reference.py > tests/models/chat_reference.json
"""

import json
import os
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tiny_llama  # noqa: E402

GREEDY_TOKENS = 12
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        }, "required": ["city"]},
    }},
    {"type": "function", "function": {
        "name": "add", "description": "Adds two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
    }},
]
CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    ],
]

out = {"generator": f"transformers {transformers.__version__}, torch {torch.__version__}", "models": {}}
for style in ["llama3", "qwen2"]:
    with tempfile.TemporaryDirectory() as d:
        make_tiny_llama.main(d, style)
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
        model.eval()
        cases = []
        prompts = [tok("Hello, world")["input_ids"], tok("The gateway routes requests")["input_ids"]]
        with torch.no_grad():
            for ids in prompts:
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
        rendered = [
            tok.apply_chat_template(c, tools=TOOLS, tokenize=False, add_generation_prompt=True)
            for c in CONVERSATIONS
        ]
        plain = tok.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
        out["models"][style] = {"cases": cases, "rendered_with_tools": rendered, "rendered_plain": plain}
out["tools"] = TOOLS
out["conversations"] = CONVERSATIONS
json.dump(out, sys.stdout)
