"""Build the tiny random-weight Llama, its tokenizer and LoRA adapters that the real vLLM CPU
server serves in tests and benchmarks. Nothing is downloaded.

Run under the vLLM environment's python (it needs torch, transformers, tokenizers, peft):

    VENV/bin/python tiny_model_build.py DEST --final FINAL --seed 0 --ranks 8,16,8,16

writes DEST/base (model + tokenizer) and DEST/loras/a<i> (one adapter per rank). Every random
choice (training text, weights, adapter weights) derives from `--seed`, so the same seed and
environment give byte-identical files. `--final` is where DEST will be renamed to once complete;
the adapters' `base_model_name_or_path` points there.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYLLABLES = ("ka ri to mu sen la po ne vi da sho tem ar ix qu ul be go fa zu wen "
             "ost rel min pra cho lu ey dro num ty").split()
PUNCTUATION = (".", ",", ";", ":", "?", "!", " (", ") ", " -", "\n")


def training_text(seed: int, n_words: int = 300_000) -> list[str]:
    """Pseudo-language lines from a seeded generator: words of 1-4 syllables with a Zipf-like
    frequency, numbers and punctuation, enough for a 4096-token byte-level BPE."""
    rng = random.Random(seed)
    lexicon = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
                      for _ in range(6000)})
    rng.shuffle(lexicon)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    words = rng.choices(lexicon, weights=weights, k=n_words)
    lines, line = [], []
    for w in words:
        r = rng.random()
        if r < 0.03:
            w = str(rng.randint(0, 9999))
        elif r < 0.08:
            w = w.capitalize()
        line.append(w)
        if rng.random() < 0.08:
            line.append(rng.choice(PUNCTUATION).strip() or ".")
        if len(line) > 12 and rng.random() < 0.1:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return lines


def build_tokenizer(seed: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_text(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(out)
    return fast


def build_base(seed: int, out: Path, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=640, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)


def build_adapter(seed: int, rank: int, base_dir: Path, base_final: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.bfloat16)
    peft_model = get_peft_model(base, LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
        bias="none", task_type="CAUSAL_LM"))
    # lora_B starts at zero (a no-op adapter); small seeded values make each adapter change
    # the outputs, as a trained one would.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_B" in name:
                param.copy_((torch.randn(param.shape, generator=gen) * 0.02).to(param.dtype))
    peft_model.save_pretrained(out, safe_serialization=True)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base_final)
    config["target_modules"] = sorted(config["target_modules"])  # a set: order varies per run
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)  # a model card naming the build folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--final", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranks", default="8,16,8,16", help="one adapter per rank")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # same bits whatever the machine's core count
    base_dir = args.dest / "base"
    tokenizer = build_tokenizer(args.seed, base_dir)
    build_base(args.seed, base_dir, tokenizer)
    for i, rank in enumerate(int(r) for r in args.ranks.split(",")):
        build_adapter(args.seed * 1000 + i + 1, rank, base_dir, args.final / "base",
                      args.dest / "loras" / f"a{i}")


if __name__ == "__main__":
    main()
