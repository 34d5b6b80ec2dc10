"""A redacted prompt is never refused for the redaction's own characters: the guardrails
pick a placeholder the model's tokenizer can encode (the demo's character model has no
"<" in its vocabulary)."""

from engine.data.tokenizers import CharTokenizer
from workers.serve.guardrails import Guardrails, placeholder_for
from workers.serve.protocol import GuardrailConfig


def _encodable(tokenizer):
    def check(text):
        try:
            tokenizer.encode(text)
        except ValueError:
            return False
        return True

    return check


def test_the_pipelines_placeholder_when_the_vocabulary_has_it():
    tokenizer = CharTokenizer.train("<EMAIL> [PHONE] mail me")
    assert placeholder_for(["EMAIL"], _encodable(tokenizer)) == "<{type}>"


def test_a_narrower_vocabulary_gets_the_next_placeholder_it_can_encode():
    brackets = CharTokenizer.train("[EMAIL] mail me")
    letters = CharTokenizer.train("EMAIL mail me")
    lower = CharTokenizer.train("mail me")
    assert placeholder_for(["EMAIL"], _encodable(brackets)) == "[{type}]"
    assert placeholder_for(["EMAIL"], _encodable(letters)) == "{type}"
    assert placeholder_for(["EMAIL"], _encodable(lower)) == ""


def test_the_redacted_prompt_encodes_with_the_chosen_placeholder():
    tokenizer = CharTokenizer.train("ROMEO: mail [EMAIL]\nJULIET: me at")
    guard = Guardrails(GuardrailConfig(pii_types=["EMAIL"]), encodable=_encodable(tokenizer))
    text, found = guard.redact("ROMEO: mail me at romeo@verona.example")
    assert text == "ROMEO: mail me at [EMAIL]" and found == {"EMAIL": 1}
    tokenizer.encode(text)  # no ValueError
