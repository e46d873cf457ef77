"""Tiny randomly initialised models, one per architecture family of the seed models.

GPT-2 (gpt2-medium), GPT-NeoX (Pythia), Gemma (gemma-2b), Phi (phi-2), Llama (Llama 3,
SmolLM2). Each is saved as an ordinary HF folder with a real (small, trained here) BPE
tokenizer, so tests load them through the same code path as real models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PhiConfig,
    PreTrainedTokenizerFast,
)

FAMILIES = ("gpt2", "gpt_neox", "gemma", "phi", "llama")
N_LAYERS = 4
D_MODEL = 64


def corpus() -> list[str]:
    words = (
        "Question Answer what is how many apples does Tom have yes no true false if then "
        "the a of and plus minus times equals number total left each"
    ).split()
    lines = [
        f"Question: What is {a} + {b}?\nAnswer: {a + b}\n\n"
        for a in range(30)
        for b in range(0, 30, 7)
    ]
    lines += [" ".join(words[i % len(words) :] + words[: i % len(words)]) for i in range(60)]
    return lines


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def make_config(family: str, vocab: int):
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        return GPT2Config(n_layer=N_LAYERS, n_embd=D_MODEL, n_head=4, n_positions=2048, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=2048,
            **common,
        )
    if family == "gemma":
        return GemmaConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=128,
            max_position_embeddings=2048,
            **common,
        )
    if family == "phi":
        return PhiConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=2048,
            **common,
        )
    if family == "llama":
        return LlamaConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=2048,
            **common,
        )
    raise ValueError(family)


def save_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_config(make_config(family, len(tok)))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
