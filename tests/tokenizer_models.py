"""Test models with real tokenizers, built here with the ``tokenizers`` library (no downloads).

A base tokenizer (byte-level BPE, Unigram/SentencePiece style, or WordPiece) is trained on a small
fixed corpus; finetunes add tokens the way users do (``add_special_tokens`` / ``add_tokens``), resize
their embeddings with transformers' ``resize_token_embeddings`` and are saved with their tokenizers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, merging models is fun and merging tokenizers is careful work",
    "tokenizers are built from text: letters, digits 0123456789 and punctuation!",
    "a finetune adds tokens; the merged model must keep every one of them",
] * 8

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
)


def byte_bpe(vocab_size: int = 300):
    """A GPT-2 style byte-level BPE tokenizer with <s>, </s> and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def unigram(vocab_size: int = 160):
    """A SentencePiece-style Unigram tokenizer (Metaspace ▁ word starts) with <unk>, <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def wordpiece(vocab_size: int = 150):
    """A BERT-style WordPiece tokenizer ([CLS] text [SEP])."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_llama(vocab_size: int, *, tied: bool = False, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(dtype)


def tiny_bert(vocab_size: int, seed: int = 0):
    import transformers

    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(config)


def save(model, tokenizer, path: Path, shard_size: str = "16KB") -> Path:
    """Model (sharded safetensors, config with the tokenizer's special ids) and tokenizer, as on the hub."""
    for role in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None and hasattr(model.config, f"{role}_token_id"):
            setattr(model.config, f"{role}_token_id", token_id)
    model.save_pretrained(path, max_shard_size=shard_size)
    tokenizer.save_pretrained(path)
    return path


def finetune(
    base_model,
    base_dir: Path,
    path: Path,
    seed: int,
    *,
    special: tuple[str, ...] = (),
    plain: tuple[str, ...] = (),
    chat_template: str | None = None,
    scale: float = 0.02,
) -> Path:
    """A finetune of ``base_model`` that added tokens: its tokenizer is the base's plus ``special``
    (extra special tokens) and ``plain`` tokens, its embeddings resized to match, every weight moved."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    if plain:
        tokenizer.add_tokens(list(plain))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = copy.deepcopy(base_model)
    torch.manual_seed(seed)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_((torch.randn(param.shape, generator=generator) * scale).to(param.dtype))
    return save(model, tokenizer, path)


def load_state(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model directory as float64."""
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(directory.glob("*.safetensors")):
        state.update({k: v.double().numpy() for k, v in load_file(shard).items()})
    return state


def vocab_of(directory: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory).get_vocab()
