"""Regenerate the tiny tokenizers in tests/assets (run once; the outputs are committed).

They are trained on a few hundred words so that unit tests can build tiny random models from
configs with real tokenization, and no weights or downloads.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
CORPUS = (
    """
Review: a great movie with a fine cast. Sentiment: positive negative neutral
Review: a dull and boring film, badly acted. Sentiment: negative
The quick brown fox jumps over the lazy dog. It was terrible, awful, wonderful, superb.
Angela Merkel visited Paris on Monday. John Smith works for Acme Corp in New York.
So I said to him, you are an idiot and a fool. Please be kind and polite to everyone.
positive negative good bad great awful fresh rotten the a an and or of to in on is was are
"""
    * 3
)


def byte_level_bpe() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.save_pretrained(HERE / "tiny-bpe")


def wordpiece() -> None:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(HERE / "tiny-wordpiece")


CHINESE_CORPUS = (
    """
评论：这本书写得很好，内容丰富，值得一读。
这条评论是正面的。这条评论是负面的。正面 负面
评论：质量太差了，用了两天就坏了，非常失望。
评论：物流很快，包装完好，很满意，推荐购买。
评论：服务态度不好，东西也不好用，不推荐。
这是一条正面的评论。这是一条负面的评论。好 差 喜欢 讨厌 满意 失望 不错 垃圾
"""
    * 3
)


def chinese_bpe() -> None:
    """A Gemma-like tokenizer for Chinese: byte-level BPE that prepends <bos>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<pad>", "<eos>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CHINESE_CORPUS.splitlines(), trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(HERE / "tiny-chinese")


if __name__ == "__main__":
    byte_level_bpe()
    wordpiece()
    chinese_bpe()
