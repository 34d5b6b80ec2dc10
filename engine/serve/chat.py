"""The chat template of post-training (SFT, DPO, PPO), for chat requests to served models.

Post-training (engine/finetune/sft.py, ``ChatTemplate``) trains on::

    [<|system|>{system}]<|user|>{prompt}<|assistant|>{response}<|endoftext|>

and packs such examples end to end, so a conversation of several turns is the same
examples laid one after the other, the system message only in the first::

    <|system|>{s}<|user|>{q1}<|assistant|>{a1}<|endoftext|><|user|>{q2}<|assistant|>

The prompt ends with ``<|assistant|>``: the model continues with the answer and ends it with
end-of-text, which the engine treats as a stop. A single-turn chat renders to exactly the
ids ``ChatTemplate.encode_prompt`` gives the model in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.data.tokenizers import END_OF_TEXT
from engine.finetune.sft import ASSISTANT, PAD, SYSTEM, USER, ChatTemplate
from engine.serve.params import ServeError

ROLES = ("system", "user", "assistant")
RESERVED = (END_OF_TEXT, SYSTEM, USER, ASSISTANT, PAD)


def _turns(messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(role, content) pairs, checked: a system message only first, user and assistant
    alternating, the last from the user; no reserved token inside a message."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ServeError("messages: a non-empty list of {role, content} objects is required")
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ServeError(f"messages[{index}]: must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ServeError(f"messages[{index}].role must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ServeError(f"messages[{index}].content must be a string")
        for token in RESERVED:
            if token in content:
                raise ServeError(
                    f"messages[{index}].content contains the reserved chat token {token}"
                )
        if role == "system" and index != 0:
            raise ServeError(f"messages[{index}]: a system message may only come first")
        turns.append((role, content))
    dialogue = [role for role, _ in turns if role != "system"]
    if not dialogue:
        raise ServeError("messages: at least one user message is required")
    for position, role in enumerate(dialogue):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            raise ServeError(
                "messages: user and assistant messages must alternate, starting with the user"
            )
    if dialogue[-1] != "user":
        raise ServeError("messages: the last message must be from the user")
    return turns


def render_chat(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt text of a chat, in the post-training template (ends with <|assistant|>)."""
    parts: list[str] = []
    for role, content in _turns(messages):
        if role == "system":
            if content:
                parts.append(SYSTEM + content)
        elif role == "user":
            parts.append(USER + content + ASSISTANT)
        else:
            parts.append(content + END_OF_TEXT)
    return "".join(parts)


def chat_prompt_ids(messages: Sequence[Mapping[str, str]], tokenizer) -> list[int]:
    """The prompt ids of a chat, built from the role ids as ``ChatTemplate`` does; a
    ServeError when the tokenizer lacks the chat tokens (a model never post-trained)."""
    turns = _turns(messages)
    try:
        template = ChatTemplate(tokenizer)
    except ValueError as error:
        raise ServeError(f"this model has no chat template: {error}") from None
    ids: list[int] = []
    try:
        for role, content in turns:
            if role == "system":
                if content:
                    if template.system_id is None:
                        raise ServeError(f"this model's tokenizer has no {SYSTEM} token")
                    ids += [template.system_id] + tokenizer.encode(content)
            elif role == "user":
                ids += (
                    [template.role_ids[USER]]
                    + tokenizer.encode(content)
                    + [template.role_ids[ASSISTANT]]
                )
            else:
                ids += tokenizer.encode(content) + [template.eot_id]
    except ServeError:
        raise
    except ValueError as error:  # a character the tokenizer never saw
        raise ServeError(f"messages: {error}") from None
    return ids
