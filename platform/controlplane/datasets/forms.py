from django import forms

from controlplane.datasets.models import DatasetKind
from controlplane.names import validate_name


class DatasetEditForm(forms.Form):
    """What can be corrected once a dataset exists (services.EDITABLE_FIELDS)."""

    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    source = forms.CharField(max_length=500, required=False, help_text="where the data came from")
    license = forms.CharField(max_length=120, required=False)


class DatasetForm(DatasetEditForm):
    name = forms.CharField(max_length=120, validators=[validate_name])
    slug = forms.SlugField(max_length=63, help_text="lowercase letters, digits, hyphens")
    kind = forms.ChoiceField(choices=DatasetKind.choices)
    subject_field = forms.CharField(
        max_length=120,
        required=False,
        label="Data-subject field",
        help_text="the record field naming the person, if the data holds personal data",
    )

    field_order = ["name", "slug", "kind", "description", "source", "license", "subject_field"]
