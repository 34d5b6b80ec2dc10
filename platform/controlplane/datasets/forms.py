from django import forms

from controlplane.datasets.models import DatasetKind
from controlplane.names import validate_name


class DatasetForm(forms.Form):
    name = forms.CharField(max_length=120, validators=[validate_name])
    slug = forms.SlugField(max_length=63, help_text="lowercase letters, digits, hyphens")
    kind = forms.ChoiceField(choices=DatasetKind.choices)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    source = forms.CharField(max_length=500, required=False, help_text="where the data came from")
    license = forms.CharField(max_length=120, required=False)
    subject_field = forms.CharField(
        max_length=120,
        required=False,
        label="Data-subject field",
        help_text="the record field naming the person, if the data holds personal data",
    )
