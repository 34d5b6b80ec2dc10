"""Forms of the organisation pages: create one, its settings, add a member, change a role."""

from django import forms

from controlplane.names import validate_name
from controlplane.orgs.models import OrgRole
from controlplane.projects.models import slug_validator


class OrgForm(forms.Form):
    name = forms.CharField(max_length=120, validators=[validate_name])
    slug = forms.CharField(
        max_length=63, validators=[slug_validator], help_text="lowercase letters, digits, hyphens"
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class OrgSettingsForm(forms.Form):
    name = forms.CharField(max_length=120, validators=[validate_name])
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    members_create_projects = forms.BooleanField(
        required=False,
        label="Members create projects",
        help_text="Unticked: only the organisation's admins create projects in it.",
    )


class OrgMemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=OrgRole.choices)


class OrgRoleForm(forms.Form):
    role = forms.ChoiceField(choices=OrgRole.choices)
