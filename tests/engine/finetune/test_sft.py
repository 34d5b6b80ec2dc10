import pytest
import torch

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
from engine.finetune.lora import LoRAConfig, apply_lora
from engine.finetune.sft import (
    IGNORE_INDEX,
    ChatTemplate,
    encode_records,
    pack_examples,
    sft_loss,
    sft_train,
)
from engine.models.gpt import GPT, GPTConfig

# A tiny instruction set with a learnable rule: the answer is the prompt reversed.
WORDS = ["cat", "dog", "sun", "map", "pen", "cup", "hat", "box"]
PAIRS = [{"prompt": w, "response": w[::-1]} for w in WORDS]


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train("".join(WORDS), special_tokens=DEFAULT_SPECIAL_TOKENS)


def tiny_gpt(vocab_size: int, block_size: int = 32) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    return GPT(config)


def test_chat_template_uses_reserved_role_tokens(tokenizer):
    example = ChatTemplate(tokenizer).encode({"prompt": "cat", "response": "tac"})
    assert tokenizer.decode(example.ids) == "<|user|>cat<|assistant|>tac<|endoftext|>"


def test_loss_mask_ignores_prompt_tokens(tokenizer):
    template = ChatTemplate(tokenizer)
    example = template.encode({"prompt": "cat", "response": "tac"})
    inputs, labels = pack_examples([example], block_size=12, pad_id=template.pad_id)
    labelled = [t for t in labels[0].tolist() if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "tac<|endoftext|>"
    # Changing the logits at prompt positions does not change the loss.
    logits = torch.randn(1, 12, tokenizer.vocab_size)
    before = sft_loss(logits, labels)
    prompt_positions = labels[0] == IGNORE_INDEX
    logits[0, prompt_positions] += 100 * torch.randn(int(prompt_positions.sum()), logits.size(-1))
    torch.testing.assert_close(sft_loss(logits, labels), before)


def test_packing_fills_rows_without_splitting_examples(tokenizer):
    template = ChatTemplate(tokenizer)
    examples = encode_records(template, PAIRS)  # 10 tokens each, 9 inputs after the shift
    inputs, labels = pack_examples(examples, block_size=20, pad_id=template.pad_id)
    assert inputs.shape == (4, 20)  # two examples per row
    assert (labels != IGNORE_INDEX).sum() == 8 * 4  # every response + end-of-text, once
    assert (inputs[:, 18:] == template.pad_id).all()
    unpacked, _ = pack_examples(examples, block_size=20, pad_id=template.pad_id, pack=False)
    assert unpacked.shape == (8, 20)


def test_bad_records_are_named(tokenizer):
    template = ChatTemplate(tokenizer)
    with pytest.raises(ValueError, match="record 1: missing or empty field 'response'"):
        encode_records(template, [PAIRS[0], {"prompt": "cat"}])
    too_long = encode_records(template, [PAIRS[0], {"prompt": "cat" * 10, "response": "x"}])
    with pytest.raises(ValueError, match="record 1: .* do not fit the context"):
        pack_examples(too_long, block_size=16, pad_id=template.pad_id)


def test_tokenizer_without_role_tokens_is_refused():
    plain = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match="<\\|user\\|>"):
        ChatTemplate(plain)


def test_a_few_sft_steps_reduce_the_loss(tokenizer):
    template = ChatTemplate(tokenizer)
    rows = pack_examples(encode_records(template, PAIRS), block_size=32, pad_id=template.pad_id)
    model = tiny_gpt(tokenizer.vocab_size)
    losses = sft_train(model, rows, steps=60, lr=3e-3, batch_size=2)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_sft_with_lora_adapts_a_trained_model_to_a_new_task(tokenizer):
    template = ChatTemplate(tokenizer)
    # The base first learns to echo the prompt (full fine-tuning): a random base's frozen
    # tiny embeddings cap how sharp its logits can get, a trained one's do not.
    echo = [{"prompt": w, "response": w} for w in WORDS]
    echo_rows = pack_examples(encode_records(template, echo), 32, template.pad_id)
    model = tiny_gpt(tokenizer.vocab_size)
    sft_train(model, echo_rows, steps=60, lr=3e-3, batch_size=2)
    embedding = model.transformer.wte.weight.detach().clone()

    rows = pack_examples(encode_records(template, PAIRS), block_size=32, pad_id=template.pad_id)
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    model.eval()
    with torch.no_grad():
        start = sft_loss(model(rows[0])[0], rows[1]).item()
    sft_train(model, rows, steps=60, lr=1e-2, batch_size=2)
    model.eval()
    with torch.no_grad():
        end = sft_loss(model(rows[0])[0], rows[1]).item()
    assert end < 0.25 * start
    torch.testing.assert_close(model.transformer.wte.weight, embedding, rtol=0, atol=0)
