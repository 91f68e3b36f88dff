#!/usr/bin/env python3
"""Writes a tiny random-weight Llama model folder (Hugging Face layout) for the tests.

    python3 tests/models/make_tiny_llama.py OUT_DIR [--style plain|llama3|qwen2]

Styles: `plain` (the default; a small chat template of its own), `llama3` (Llama 3.1's
special tokens and its official chat template, which renders `tools` as JSON and expects
`{"name": ..., "parameters": ...}` calls), `qwen2` (a Qwen2ForCausalLM: q/k/v biases, tied
embeddings, ChatML markers, `<tool_call>` tokens, fill-in-the-middle tokens, and Qwen 2.5's
official chat template with its Hermes-style tool calls).

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
STYLED_MAX_POSITIONS = 4096
SEED = 20261125

SPECIAL = ["<unk>", "<s>", "</s>"]
CHAT_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Llama 3.x: added special tokens; `<|python_tag|>` starts built-in tool calls.
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
# Qwen 2.5: special (ChatML) tokens, then added tokens that are written as text.
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
QWEN_TEXT = ["<tool_call>", "</tool_call>"]

# Meta's Llama 3.1 Instruct chat template (tokenizer_config.json), tools included.
LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Qwen 2.5 Instruct's chat template (tokenizer_config.json), tools included.
QWEN_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
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


def vocab(style="plain"):
    if style == "llama3":
        return SPECIAL + bytes_to_unicode() + LLAMA3_SPECIAL
    if style == "qwen2":
        return bytes_to_unicode() + QWEN_SPECIAL + QWEN_TEXT
    return SPECIAL + bytes_to_unicode() + CHAT_MARKERS


def specials(style):
    return {"plain": SPECIAL + CHAT_MARKERS, "llama3": SPECIAL + LLAMA3_SPECIAL, "qwen2": QWEN_SPECIAL}[style]


def tensors(style="plain"):
    """(name, shape, values) in a fixed order; the order fixes the random stream."""
    rng = SplitMix64(SEED if style == "plain" else SEED + {"llama3": 1, "qwen2": 2}[style])
    v = len(vocab(style))
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
        ]
        if style == "qwen2":
            out += [
                (p + "self_attn.q_proj.bias", [HIDDEN], mat(1, HIDDEN, 0.1)),
                (p + "self_attn.k_proj.bias", [kv], mat(1, kv, 0.1)),
                (p + "self_attn.v_proj.bias", [kv], mat(1, kv, 0.1)),
            ]
        out += [
            (p + "self_attn.o_proj.weight", [HIDDEN, HIDDEN], mat(HIDDEN, HIDDEN, 0.125)),
            (p + "post_attention_layernorm.weight", [HIDDEN], norm(HIDDEN)),
            (p + "mlp.gate_proj.weight", [INTERMEDIATE, HIDDEN], mat(INTERMEDIATE, HIDDEN, 0.25)),
            (p + "mlp.up_proj.weight", [INTERMEDIATE, HIDDEN], mat(INTERMEDIATE, HIDDEN, 0.25)),
            (p + "mlp.down_proj.weight", [HIDDEN, INTERMEDIATE], mat(HIDDEN, INTERMEDIATE, 0.125)),
        ]
    out += [("model.norm.weight", [HIDDEN], norm(HIDDEN))]
    if style != "qwen2":  # Qwen2's small models tie lm_head to the embeddings
        out += [("lm_head.weight", [v, HIDDEN], mat(v, HIDDEN, 0.5))]
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


def tokenizer_json(style="plain"):
    tokens = vocab(style)
    added = [
        {"id": tokens.index(t), "content": t, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for t in specials(style)
    ]
    if style == "qwen2":
        added += [
            {"id": tokens.index(t), "content": t, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": False}
            for t in QWEN_TEXT
        ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bos_token = {"plain": "<s>", "llama3": "<|begin_of_text|>"}.get(style)
    if bos_token is None:
        post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    else:
        bos = {"SpecialToken": {"id": bos_token, "type_id": 0}}
        post = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_token: {"id": bos_token, "ids": [tokens.index(bos_token)], "tokens": [bos_token]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": post,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [],
        },
    }


def main(out, style="plain"):
    os.makedirs(out, exist_ok=True)
    tokens = vocab(style)
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
        "eos_token_id": [2, tokens.index("<|end|>")] if style == "plain" else None,
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
    if style != "plain":
        # Room for prompts that carry tool definitions.
        config["max_position_embeddings"] = STYLED_MAX_POSITIONS
        tokenizer_config["model_max_length"] = STYLED_MAX_POSITIONS
    if style == "llama3":
        config["bos_token_id"] = tokens.index("<|begin_of_text|>")
        config["eos_token_id"] = [tokens.index(t) for t in ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]]
        config["rope_scaling"] = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64, "rope_type": "llama3"}
        config["rope_theta"] = 500000.0
        tokenizer_config.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", unk_token=None,
                                chat_template=LLAMA3_TEMPLATE)
    elif style == "qwen2":
        config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", tie_word_embeddings=True,
                      bos_token_id=tokens.index("<|endoftext|>"), eos_token_id=tokens.index("<|im_end|>"),
                      use_sliding_window=False, sliding_window=MAX_POSITIONS, max_window_layers=LAYERS,
                      rope_theta=1000000.0, rms_norm_eps=1e-6)
        for k in ("attention_bias", "mlp_bias"):
            config.pop(k)
        tokenizer_config.update(bos_token=None, eos_token="<|im_end|>", unk_token=None, add_bos_token=False,
                                pad_token="<|endoftext|>", chat_template=QWEN_TEMPLATE)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=1)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(style), f, ensure_ascii=False)
    write_safetensors(os.path.join(out, "model.safetensors"), tensors(style))


if __name__ == "__main__":
    args = sys.argv[1:]
    style = "plain"
    if len(args) == 3 and args[1] == "--style" and args[2] in ("plain", "llama3", "qwen2"):
        style = args[2]
        args = args[:1]
    if len(args) != 1:
        sys.exit("usage: make_tiny_llama.py OUT_DIR [--style plain|llama3|qwen2]")
    main(args[0], style)
