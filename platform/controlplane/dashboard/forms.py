from django import forms

from controlplane.projects.models import Role, slug_validator


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=120)
    slug = forms.CharField(
        max_length=63, validators=[slug_validator], help_text="lowercase letters, digits, hyphens"
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class UploadForm(forms.Form):
    file = forms.FileField()


class InspectJobForm(forms.Form):
    upload_id = forms.IntegerField(widget=forms.HiddenInput)
    preview_records = forms.IntegerField(min_value=1, max_value=50, initial=5)
    read_rate_limit_mb_s = forms.FloatField(
        min_value=0.01, required=False, label="Read rate limit (MB/s)"
    )


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100)


class DatasetForm(forms.Form):
    name = forms.CharField(max_length=120)
    slug = forms.SlugField(max_length=63, help_text="lowercase letters, digits, hyphens")
    kind = forms.ChoiceField(choices=[("text", "Text"), ("images", "Images")])
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    source = forms.CharField(max_length=500, required=False, help_text="where the data came from")
    license = forms.CharField(max_length=120, required=False)
    subject_field = forms.CharField(
        max_length=120,
        required=False,
        label="Data-subject field",
        help_text="the record field naming the person, if the data holds personal data",
    )


class PipelineJobForm(forms.Form):
    pipeline = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 12, "class": "code"}),
        required=False,
        help_text="the engine's pipeline config as JSON: stages and their thresholds",
    )
    tokenizer = forms.ChoiceField(choices=[("char", "characters"), ("bpe", "byte-level BPE")])
    vocab_size = forms.IntegerField(
        min_value=260, max_value=65535, initial=4096, required=False, help_text="BPE only"
    )
    val_fraction = forms.FloatField(min_value=0.001, max_value=0.5, initial=0.05)

    def clean_pipeline(self):
        import json

        text = self.cleaned_data["pipeline"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value

    def job_params(self, version_id: int) -> dict:
        data = self.cleaned_data
        tokenizer = {"kind": data["tokenizer"]}
        if data["tokenizer"] == "bpe":
            tokenizer["vocab_size"] = data["vocab_size"] or 4096
        return {
            "dataset_version_id": version_id,
            "pipeline": data["pipeline"],
            "tokenizer": tokenizer,
            "val_fraction": data["val_fraction"],
        }
