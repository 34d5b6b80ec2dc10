"""Forms of the serving pages. They check shape only; the services decide the rest (a name
taken, a version not ready, an alias that points nowhere), and the serve node checks a
playground request the way it checks any client's.

Defaults and bounds are read from the Deployment model's fields, written once there.
"""

from __future__ import annotations

from django import forms

from controlplane.serving.models import (
    DEPLOYMENT_NAME_PATTERN,
    Deployment,
    Device,
    deployment_name_validator,
)

MAX_PROMPT = 20_000
MAX_REASON = 2000


def _bounds(name: str) -> dict:
    """min_value, max_value and initial of an integer field of Deployment."""
    model_field = Deployment._meta.get_field(name)
    bounds = {"initial": model_field.default}
    for validator in model_field.validators:
        if hasattr(validator, "limit_value") and validator.code == "min_value":
            bounds["min_value"] = validator.limit_value
        elif hasattr(validator, "limit_value") and validator.code == "max_value":
            bounds["max_value"] = validator.limit_value
    return bounds


DEFAULT_CHOICE = ("", "as the training data's pipeline")


class DeployForm(forms.Form):
    """ "Deploy a model": a version (pinned) or an alias (followed), and how to serve it."""

    source = forms.ChoiceField(
        choices=[],
        label="Model",
        help_text="An alias (@production) is followed: when it moves, the deployment "
        "switches to the new version without dropping a request. A version is pinned.",
    )
    name = forms.CharField(
        max_length=63,
        validators=[deployment_name_validator],
        widget=forms.TextInput(attrs={"pattern": DEPLOYMENT_NAME_PATTERN[1:-1]}),
        help_text="Part of the base URL: lower-case letters, digits and '-'.",
    )
    replicas = forms.IntegerField(**_bounds("replicas"))
    device = forms.ChoiceField(choices=Device.choices, initial=Device.CPU)
    max_batch = forms.IntegerField(label="Max batch", **_bounds("max_batch"))
    max_queue = forms.IntegerField(label="Max queue", **_bounds("max_queue"))
    # A checkbox posts nothing when unticked: required=False makes that False, not an error.
    archive_requests = forms.BooleanField(
        label="Archive requests and responses",
        required=False,
        initial=Deployment._meta.get_field("archive_requests").default,
        help_text="Unticked, the deployment keeps no record of what it was asked or answered "
        "(no archive, no request list, no usage charts).",
    )
    pii = forms.ChoiceField(
        label="Input PII",
        required=False,
        choices=[DEFAULT_CHOICE, ("off", "off"), ("redact", "redact"), ("refuse", "refuse")],
    )
    pii_output = forms.ChoiceField(
        label="Output PII",
        required=False,
        choices=[DEFAULT_CHOICE, ("off", "off"), ("redact", "redact")],
    )
    toxicity = forms.ChoiceField(
        label="Toxicity",
        required=False,
        choices=[DEFAULT_CHOICE, ("off", "off"), ("flag", "flag"), ("refuse", "refuse")],
    )
    toxicity_threshold = forms.FloatField(
        label="Toxicity threshold",
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="Share of lexicon words above which a text counts as toxic.",
    )
    rate_limit_per_minute = forms.IntegerField(
        label="Rate limit (requests per minute per token)", **_bounds("rate_limit_per_minute")
    )

    def __init__(self, *args, models: list, **kwargs):
        """`models`: page_selectors.Deployable rows (name, versions, aliases)."""
        super().__init__(*args, **kwargs)
        self.fields["source"].choices = [
            (
                m.name,
                [(f"{m.name}@{alias}", f"{m.name} @{alias} (now v{n})") for alias, n in m.aliases]
                + [(f"{m.name}:{n}", f"{m.name} v{n}") for n in m.versions],
            )
            for m in models
        ]

    def clean(self):
        data = super().clean()
        source = data.get("source") or ""
        # Model names never hold '@' or ':' (MODEL_NAME_PATTERN): the split is unambiguous.
        if "@" in source:
            data["model_name"], data["alias"] = source.split("@", 1)
            data["version_number"] = None
        elif ":" in source:
            data["model_name"], number = source.split(":", 1)
            data["alias"], data["version_number"] = None, int(number)
        overrides = {
            key: data[key]
            for key in ("pii", "pii_output", "toxicity")
            if data.get(key)  # "" keeps the training data's setting
        }
        if data.get("toxicity_threshold") is not None:
            overrides["toxicity_threshold"] = data["toxicity_threshold"]
        data["guardrails"] = overrides or None
        return data


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(**_bounds("replicas"))


class StopForm(forms.Form):
    label_suffix = ""
    reason = forms.CharField(
        max_length=MAX_REASON,
        required=False,
        help_text="Shown to clients in the 503 while the deployment is stopped.",
    )
    confirm = forms.BooleanField(
        label="Stop serving: requests answer 503 until it is started again"
    )


class TextPlaygroundForm(forms.Form):
    mode = forms.ChoiceField(
        choices=[("completion", "completion"), ("chat", "chat")], initial="completion"
    )
    prompt = forms.CharField(
        max_length=MAX_PROMPT, strip=False, widget=forms.Textarea(attrs={"rows": 4})
    )
    max_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=64)
    temperature = forms.FloatField(min_value=0.0, max_value=2.0, initial=0.8)
    seed = forms.IntegerField(required=False, min_value=0, max_value=2**31 - 1)

    def body(self, model: str) -> tuple[str, dict]:
        """(endpoint path under /v1, the OpenAI request body, streamed)."""
        data = self.cleaned_data
        body: dict = {
            "model": model,
            "max_tokens": data["max_tokens"],
            "temperature": data["temperature"],
            "stream": True,
        }
        if data["seed"] is not None:
            body["seed"] = data["seed"]
        if data["mode"] == "chat":
            body["messages"] = [{"role": "user", "content": data["prompt"]}]
            return "/chat/completions", body
        body["prompt"] = data["prompt"]
        return "/completions", body


class ImagePlaygroundForm(forms.Form):
    prompt = forms.CharField(
        max_length=200, help_text="The digit to draw: 7, or 'a handwritten seven'."
    )
    n = forms.IntegerField(min_value=1, max_value=16, initial=4)
    steps = forms.IntegerField(
        required=False, min_value=1, max_value=1000, help_text="Diffusion models only."
    )

    def body(self, model: str) -> tuple[str, dict]:
        data = self.cleaned_data
        body = {
            "model": model,
            "prompt": data["prompt"],
            "n": data["n"],
            "response_format": "b64_json",
        }
        if data["steps"] is not None:
            body["steps"] = data["steps"]
        return "/images/generations", body
