"""The rule catalogue's validation and the licence checks: what an editor sees when a
parameter is wrong, and which licence expressions a policy lets through."""

from __future__ import annotations

import pytest

from controlplane.policies.errors import InvalidPolicy
from controlplane.policies.licences import licence_verdict
from controlplane.policies.rules import (
    RULES,
    RuleKey,
    check_changes,
    default_rules,
    diff,
    normalise,
)


def test_every_rule_is_off_by_default_with_its_parameters():
    rules = default_rules()
    assert list(rules) == [key.value for key in RuleKey]
    assert all(values["enabled"] is False for values in rules.values())
    assert rules["promotion"]["aliases"] == ["production"]
    assert [rule.number for rule in RULES.values()] == [1, 2, 3, 4, 5, 6, 7]


def test_an_unknown_licence_names_the_nearest_spdx_identifiers():
    with pytest.raises(InvalidPolicy) as error:
        check_changes(default_rules(), {"licences": {"allowed_licences": ["MIT", "Apache2"]}})
    message = error.value.fields["rules.licences.allowed_licences.1"][0]
    assert "'Apache2' is not an SPDX licence identifier" in message
    assert "Apache-2.0" in message


def test_licence_identifiers_are_stored_in_their_spdx_spelling():
    rules = check_changes(
        default_rules(), {"licences": {"allowed_licences": ["mit", "cc-by-4.0", "LicenseRef-Acme"]}}
    )
    assert rules["licences"]["allowed_licences"] == ["MIT", "CC-BY-4.0", "LicenseRef-Acme"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"nope": {}}, "rules.nope"),
        ({"compute": {"max_gpus_per_job": -1}}, "rules.compute.max_gpus_per_job"),
        ({"compute": {"max_gpus_per_job": 1.5}}, "rules.compute.max_gpus_per_job"),
        ({"compute": {"allowed_queues": ["tpu"]}}, "rules.compute.allowed_queues.0"),
        ({"compute": {"enabled": "yes"}}, "rules.compute.enabled"),
        ({"compute": {"colour": "red"}}, "rules.compute.colour"),
        ({"data_preparation": {"max_toxic_share": 2}}, "rules.data_preparation.max_toxic_share"),
        (
            {"data_preparation": {"required_pii_types": ["shoe_size"]}},
            "rules.data_preparation.required_pii_types.0",
        ),
        ({"residency": {"allowed_buckets": ["Not A Bucket"]}}, "rules.residency.allowed_buckets.0"),
        (
            {"promotion": {"thresholds": [{"metric": "val_loss", "op": "~", "value": 1}]}},
            "rules.promotion.thresholds.0.op",
        ),
        (
            {"serving": {"retention_min_days": 90, "retention_max_days": 30}},
            "rules.serving.retention_min_days",
        ),
    ],
)
def test_a_bad_parameter_is_named(changes, field):
    with pytest.raises(InvalidPolicy) as error:
        check_changes(default_rules(), changes)
    assert field in error.value.fields


def test_the_diff_lists_only_what_changed():
    before = default_rules()
    after = check_changes(before, {"compute": {"enabled": True, "max_gpus_per_job": 2}})
    assert diff(before, after) == {
        "compute": {
            "enabled": {"before": False, "after": True},
            "max_gpus_per_job": {"before": 8, "after": 2},
        }
    }


def test_a_stored_policy_gains_new_parameters_at_their_defaults():
    rules = normalise({"compute": {"enabled": True}, "gone": {"x": 1}})
    assert rules["compute"] == {
        "enabled": True,
        "allowed_queues": ["cpu", "gpu"],
        "max_gpus_per_job": 8,
    }
    assert "gone" not in rules


@pytest.mark.parametrize(
    ("licence", "allowed", "passes"),
    [
        ("MIT", {"MIT"}, True),
        ("mit", {"MIT"}, True),
        ("MIT OR GPL-3.0-only", {"MIT"}, True),
        ("MIT AND GPL-3.0-only", {"MIT"}, False),
        ("(MIT OR Apache-2.0) AND CC0-1.0", {"Apache-2.0", "CC0-1.0"}, True),
        ("GPL-2.0-only WITH Classpath-exception-2.0", {"GPL-2.0-only"}, False),
        ("LicenseRef-Acme", {"LicenseRef-Acme"}, True),
        ("public domain", {"CC0-1.0"}, False),
        ("", {"MIT"}, False),
    ],
)
def test_licence_expressions(licence, allowed, passes):
    assert (licence_verdict(licence, allowed) is None) is passes


def test_a_free_text_licence_is_refused_with_a_reason():
    reason = licence_verdict("public domain", {"CC0-1.0"})
    assert "not an SPDX licence expression" in reason
