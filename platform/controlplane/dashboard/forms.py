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
