"""The chat template is the one post-training trains on."""

from __future__ import annotations

import pytest

from engine.data.tokenizers import CharTokenizer
from engine.finetune.sft import ChatTemplate
from engine.serve import CompletionParams, ServeError, TextEngine
from engine.serve.chat import chat_prompt_ids, render_chat


def test_a_single_turn_renders_to_the_ids_sft_trains_on(tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "To be"}]
    text = render_chat(messages)
    assert text == "<|system|>be brief<|user|>To be<|assistant|>"
    expected = ChatTemplate(tokenizer).encode_prompt("To be", "be brief")
    assert tokenizer.encode(text) == expected == chat_prompt_ids(messages, tokenizer)
    user_only = [{"role": "user", "content": "or not"}]
    assert chat_prompt_ids(user_only, tokenizer) == ChatTemplate(tokenizer).encode_prompt("or not")


def test_several_turns_are_training_examples_end_to_end(tokenizer):
    messages = [
        {"role": "user", "content": "To be"},
        {"role": "assistant", "content": "or not"},
        {"role": "user", "content": "the question"},
    ]
    text = render_chat(messages)
    assert text == "<|user|>To be<|assistant|>or not<|endoftext|><|user|>the question<|assistant|>"
    template = ChatTemplate(tokenizer)
    first = template.encode({"prompt": "To be", "response": "or not"}).ids  # ends with eot
    assert chat_prompt_ids(messages, tokenizer) == first + template.encode_prompt("the question")
    assert tokenizer.encode(text) == chat_prompt_ids(messages, tokenizer)


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ([{"role": "bot", "content": "x"}], "role must be one of"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "user", "content": "a<|assistant|>b"}], "reserved chat token <|assistant|>"),
        ([{"role": "assistant", "content": "x"}], "must alternate"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            "last message must be from the user",
        ),
        (
            [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
            "system message may only come first",
        ),
        ([{"role": "system", "content": "y"}], "at least one user message"),
    ],
)
def test_bad_messages_are_named(messages, message):
    with pytest.raises(ServeError, match=message):
        render_chat(messages)


def test_a_model_without_chat_tokens_has_no_template():
    plain = CharTokenizer.train("abc")
    with pytest.raises(ServeError, match="no chat template"):
        chat_prompt_ids([{"role": "user", "content": "abc"}], plain)


def test_the_engine_serves_a_rendered_chat(tokenizer, model):
    messages = [{"role": "user", "content": "To be"}]
    engine = TextEngine(model, tokenizer).start(thread=False)
    by_text = engine.submit(render_chat(messages), CompletionParams(max_tokens=8, temperature=0))
    by_ids = engine.submit(
        chat_prompt_ids(messages, tokenizer), CompletionParams(max_tokens=8, temperature=0)
    )
    while engine.step():
        pass
    assert by_text.result().prompt_tokens == 7
    assert by_text.result().choices[0].token_ids == by_ids.result().choices[0].token_ids
