"""Forms of the project pages: create a project, add a member, change a member's role."""

from django import forms

from controlplane.names import validate_name
from controlplane.projects.models import Role, slug_validator


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=120, validators=[validate_name])
    slug = forms.CharField(
        max_length=63, validators=[slug_validator], help_text="lowercase letters, digits, hyphens"
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
