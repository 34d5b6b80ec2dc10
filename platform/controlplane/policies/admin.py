"""Compliance policies in the Django admin: read-only. Policies change only through
services.policy_update (versioned, audited), waivers, holds and violations through their
services (checked and audited), scans through the scan task."""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin_readonly import ReadOnlyAdmin, ReadOnlyInline
from controlplane.policies.models import (
    ErasureHold,
    Policy,
    PolicyScan,
    PolicyVersion,
    Violation,
    ViolationComment,
    Waiver,
)


class PolicyVersionInline(ReadOnlyInline):
    model = PolicyVersion
    fields = readonly_fields = ["number", "reason", "diff", "created_by", "created_at"]
    ordering = ["-number"]


@admin.register(Policy)
class PolicyAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "project", "current_number", "created_at"]
    list_select_related = ["project"]
    search_fields = ["project__name", "project__slug"]
    inlines = [PolicyVersionInline]


@admin.register(PolicyVersion)
class PolicyVersionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "number", "reason", "created_by", "created_at"]
    list_select_related = ["policy__project", "created_by"]
    search_fields = ["reason", "policy__project__name"]


@admin.register(Waiver)
class WaiverAdmin(ReadOnlyAdmin):
    list_display = [
        "rule",
        "subject_label",
        "project",
        "expires_at",
        "granted_by",
        "granted_at",
        "revoked_at",
    ]
    list_filter = ["rule", "subject_type", "project"]
    list_select_related = ["project", "granted_by"]
    search_fields = ["subject_label", "reason"]


class ViolationCommentInline(ReadOnlyInline):
    model = ViolationComment
    fields = readonly_fields = ["author", "text", "created_at"]


@admin.register(Violation)
class ViolationAdmin(ReadOnlyAdmin):
    list_display = [
        "rule",
        "subject_label",
        "project",
        "state",
        "policy_version",
        "found_at",
        "last_seen_at",
        "assigned_to",
    ]
    list_filter = ["state", "rule", "subject_type", "project"]
    list_select_related = ["project", "assigned_to"]
    search_fields = ["subject_label", "reason", "resolution"]
    inlines = [ViolationCommentInline]


@admin.register(ErasureHold)
class ErasureHoldAdmin(ReadOnlyAdmin):
    list_display = [
        "reference",
        "dataset_version",
        "project",
        "placed_by",
        "placed_at",
        "released_at",
    ]
    list_filter = ["project"]
    list_select_related = ["project", "dataset_version__dataset", "placed_by"]
    search_fields = ["reference", "reason"]


@admin.register(PolicyScan)
class PolicyScanAdmin(ReadOnlyAdmin):
    list_display = ["pk", "project", "state", "requested_by", "created_at", "finished_at"]
    list_filter = ["state"]
    list_select_related = ["project", "requested_by"]
