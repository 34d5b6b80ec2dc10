"""The policies app's pages. A project's compliance pages name the project by its slug
(`gates.policy_url` links a refusal to `/projects/<slug>/compliance/policy/#rule-<key>`)."""

from django.urls import path

from controlplane.policies import views

COMPLIANCE = "projects/<slug:project_slug>/compliance/"

urlpatterns = [
    path("compliance/", views.compliance_overview, name="compliance_overview"),
    path("compliance/policy/", views.policy_default, name="policy_default"),
    path("orgs/<slug:org_slug>/policy/", views.org_policy, name="org_policy"),
    path(COMPLIANCE, views.project_compliance, name="project_compliance"),
    path(COMPLIANCE + "policy/", views.project_policy, name="project_policy"),
    path(
        COMPLIANCE + "violations/<int:violation_id>/assign/",
        views.violation_assign,
        name="compliance_violation_assign",
    ),
    path(
        COMPLIANCE + "violations/<int:violation_id>/comment/",
        views.violation_comment,
        name="compliance_violation_comment",
    ),
    path(
        COMPLIANCE + "violations/<int:violation_id>/resolve/",
        views.violation_resolve,
        name="compliance_violation_resolve",
    ),
    path(COMPLIANCE + "waivers/", views.waiver_grant, name="compliance_waiver_grant"),
    path(
        COMPLIANCE + "waivers/<int:waiver_id>/revoke/",
        views.waiver_revoke,
        name="compliance_waiver_revoke",
    ),
    path(COMPLIANCE + "holds/", views.hold_place, name="compliance_hold_place"),
    path(
        COMPLIANCE + "holds/<int:hold_id>/release/",
        views.hold_release,
        name="compliance_hold_release",
    ),
    path(COMPLIANCE + "scans/", views.scan_now, name="compliance_scan"),
]
