#!/usr/bin/env python3
"""Writes a tiny random-weight Llama model folder (Hugging Face layout) for the tests.

    python3 tests/models/make_tiny_llama.py OUT_DIR

Standard library only, and deterministic: the weights come from a fixed splitmix64
stream, so every run (and every machine) writes byte-identical files. That is what lets
a reference computed once with Hugging Face transformers (llama_reference.py) stay valid
as a committed fixture while the tests regenerate the model on each run.

The model: 2 layers, hidden 64, 4 attention heads over 2 key/value heads (grouped-query
attention, as in Llama 2/3), and a byte-level BPE tokenizer without merges (258 byte and
control tokens plus 4 chat markers), so any text encodes. tokenizer_config.json carries a
Jinja chat template that uses the markers.
"""

import json
import os
import struct
import sys
from array import array

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
MAX_POSITIONS = 256
SEED = 20261125

SPECIAL = ["<unk>", "<s>", "</s>"]
CHAT_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def bytes_to_unicode():
    """GPT-2's printable stand-ins for the 256 byte values (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def uniform(self, scale):
        """A float in [-scale, scale), from the top 24 bits (exact in f32)."""
        return ((self.next() >> 40) / float(1 << 24) * 2.0 - 1.0) * scale


def vocab():
    return SPECIAL + bytes_to_unicode() + CHAT_MARKERS


def tensors():
    """(name, shape, values) in a fixed order; the order fixes the random stream."""
    rng = SplitMix64(SEED)
    v = len(vocab())
    head_dim = HIDDEN // HEADS
    kv = KV_HEADS * head_dim

    def mat(rows, cols, scale):
        return [rng.uniform(scale) for _ in range(rows * cols)]

    def norm(n):
        return [1.0 + rng.uniform(0.1) for _ in range(n)]

    out = [("model.embed_tokens.weight", [v, HIDDEN], mat(v, HIDDEN, 1.0))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", [HIDDEN], norm(HIDDEN)),
            (p + "self_attn.q_proj.weight", [HIDDEN, HIDDEN], mat(HIDDEN, HIDDEN, 0.25)),
            (p + "self_attn.k_proj.weight", [kv, HIDDEN], mat(kv, HIDDEN, 0.25)),
            (p + "self_attn.v_proj.weight", [kv, HIDDEN], mat(kv, HIDDEN, 0.25)),
            (p + "self_attn.o_proj.weight", [HIDDEN, HIDDEN], mat(HIDDEN, HIDDEN, 0.125)),
            (p + "post_attention_layernorm.weight", [HIDDEN], norm(HIDDEN)),
            (p + "mlp.gate_proj.weight", [INTERMEDIATE, HIDDEN], mat(INTERMEDIATE, HIDDEN, 0.25)),
            (p + "mlp.up_proj.weight", [INTERMEDIATE, HIDDEN], mat(INTERMEDIATE, HIDDEN, 0.25)),
            (p + "mlp.down_proj.weight", [HIDDEN, INTERMEDIATE], mat(HIDDEN, INTERMEDIATE, 0.125)),
        ]
    out += [
        ("model.norm.weight", [HIDDEN], norm(HIDDEN)),
        ("lm_head.weight", [v, HIDDEN], mat(v, HIDDEN, 0.5)),
    ]
    return out


def write_safetensors(path, items):
    header, blobs, offset = {}, [], 0
    for name, shape, values in items:
        data = array("f", values)
        if sys.byteorder != "little":
            data.byteswap()
        raw = data.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def tokenizer_json():
    tokens = vocab()
    added = [
        {"id": tokens.index(t), "content": t, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for t in SPECIAL + CHAT_MARKERS
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [],
        },
    }


def main(out):
    os.makedirs(out, exist_ok=True)
    tokens = vocab()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": len(tokens),
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": [2, tokens.index("<|end|>")],
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=1)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(), f, ensure_ascii=False)
    write_safetensors(os.path.join(out, "model.safetensors"), tensors())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_llama.py OUT_DIR")
    main(sys.argv[1])
