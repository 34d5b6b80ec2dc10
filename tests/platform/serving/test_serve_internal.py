"""The serve nodes' endpoints: the node secret, bodies, sync over HTTP, authorize verdicts,
and the shared secret file."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from controlplane.accounts.models import hash_token
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    FakeNode,
    deploy_fixture,
    pipeline_dataset_fixture,
    served_version_fixture,
)
from workers.config import ConfigError
from workers.serve.protocol import AUTHORIZE_PATH, SYNC_PATH, AuthorizeAnswer, SyncAnswer
from workers.serve.secret import serve_node_secret

pytestmark = pytest.mark.django_db


def post(path: str, body, secret: str | None = None, **headers):
    secret = settings.SERVE_NODE_SECRET if secret is None else secret
    if secret:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return Client().post(path, data, content_type="application/json", **headers)


REPORT = {"node": "n1", "url": "http://n1:8100", "device": "cpu", "capacity": 2, "replicas": []}


@pytest.mark.parametrize("path", [SYNC_PATH, AUTHORIZE_PATH])
@pytest.mark.parametrize("secret", ["", "not-the-secret", "x" * 64])
def test_without_the_node_secret_it_is_a_401(path, secret):
    response = post(path, REPORT, secret=secret)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_the_api_s_bearer_tokens_do_not_open_the_internal_endpoints(team):
    from controlplane.accounts.services import api_token_create

    _token, raw = api_token_create(user=team.admin, name="t", scopes=["api:read", "api:write"])
    assert post(SYNC_PATH, REPORT, secret=raw).status_code == 401


def test_only_post_is_allowed():
    response = Client().get(SYNC_PATH, HTTP_AUTHORIZATION=f"Bearer {settings.SERVE_NODE_SECRET}")
    assert response.status_code == 405


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"node": "n1"}, "not a valid request"),
        ({**REPORT, "device": "tpu"}, "device"),
        ({**REPORT, "capacity": "two"}, "capacity"),
        ({**REPORT, "node": "two words"}, "node"),
        ({**REPORT, "replicas": [{"replica_id": "a", "state": "dancing"}]}, "replicas.0.state"),
        ({**REPORT, "replicas": ["a"]}, "replicas"),
        ({**REPORT, "replicas": [{"replica_id": "a", "state": "ready", "pid": 2**40}]}, "pid"),
        ({**REPORT, "node": "n\u0000"}, "malformed"),
    ],
)
def test_a_malformed_sync_is_a_400(body, needle):
    response = post(SYNC_PATH, body)
    assert response.status_code == 400, response.content
    assert needle in response.content.decode()


def test_sync_over_http_answers_what_to_run_and_the_routes(deploy):
    deploy(replicas=1)

    response = post(SYNC_PATH, REPORT)

    assert response.status_code == 200, response.content
    answer = SyncAnswer.from_dict(response.json())
    (spec,) = answer.replicas
    assert (spec.deployment, spec.version, spec.files[0].name) == ("alpha/chat", 1, "config.json")
    assert answer.routes == {"alpha/chat": []}
    assert [d.key for d in answer.deployments] == ["alpha/chat"]


# Authorize -------------------------------------------------------------------------------


@pytest.fixture
def token_of(team):
    from controlplane.accounts.services import api_token_create

    def make(user, scopes=("inference",), **kwargs):
        token, raw = api_token_create(user=user, name="client", scopes=list(scopes), **kwargs)
        return token, hash_token(raw)

    return make


def authorize(token_sha256: str, deployment: str = "alpha/chat") -> AuthorizeAnswer:
    response = post(AUTHORIZE_PATH, {"token_sha256": token_sha256, "deployment": deployment})
    assert response.status_code == 200, response.content
    return AuthorizeAnswer.from_dict(response.json())


@pytest.mark.parametrize("role", ["owner", "engineer"])
def test_a_member_s_inference_token_may_call(team, deploy, token_of, role):
    deploy(rate_limit_per_minute=42)
    user = getattr(team, role)
    token, digest = token_of(user)

    answer = authorize(digest)

    assert (answer.allowed, answer.rate_limit_per_minute) == (True, 42)
    assert (answer.caller.token_id, answer.caller.user_id, answer.caller.username) == (
        token.pk,
        user.pk,
        user.username,
    )
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_token_without_the_inference_scope_is_refused(team, deploy, token_of):
    deploy()
    _token, digest = token_of(team.engineer, scopes=("api:read", "api:write"))
    answer = authorize(digest)
    assert (answer.allowed, answer.status, answer.code) == (False, 403, "insufficient_scope")


def test_revoked_expired_and_unknown_tokens_are_401(team, deploy, token_of):
    from controlplane.accounts.services import api_token_revoke

    deploy()
    revoked, revoked_digest = token_of(team.engineer)
    api_token_revoke(token=revoked, actor=team.engineer)
    expired, expired_digest = token_of(team.engineer)
    type(expired).objects.filter(pk=expired.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    verdicts = [authorize(d) for d in (revoked_digest, expired_digest, "0" * 64)]

    assert [(v.allowed, v.status) for v in verdicts] == [(False, 401)] * 3
    assert [v.message for v in verdicts] == [
        "token has been revoked",
        "token has expired",
        "invalid token",
    ]


def test_an_inactive_user_s_token_is_401(team, deploy, token_of):
    deploy()
    _token, digest = token_of(team.engineer)
    team.engineer.is_active = False
    team.engineer.save()
    assert authorize(digest).status == 401


def test_another_project_s_user_cannot_tell_the_deployment_exists(team, deploy, token_of):
    deploy()
    _token, digest = token_of(team.outsider)

    hidden, missing = authorize(digest), authorize(digest, "alpha/nope")

    assert (hidden.allowed, hidden.status, hidden.code) == (False, 404, "deployment_not_found")
    assert (missing.status, missing.code) == (404, "deployment_not_found")


def test_a_platform_admin_may_call_like_everywhere_else(team, deploy, token_of):
    # Staff may do everything in every project (projects.selectors.project_for).
    deploy()
    _token, digest = token_of(team.admin)
    assert authorize(digest).allowed


@pytest.mark.parametrize("role", ["viewer", "compliance"])
def test_members_who_only_read_may_not_call(team, deploy, token_of, role):
    deploy()
    _token, digest = token_of(getattr(team, role))
    answer = authorize(digest)
    assert (answer.allowed, answer.status, answer.code) == (False, 403, "permission_denied")


def test_a_stopped_deployment_is_still_authorized(team, deploy, token_of):
    # The front answers 503 deployment_stopped from the sync's DeploymentInfo.
    from controlplane.serving.services import deployment_stop

    deployment = deploy()
    deployment_stop(deployment=deployment, actor=team.owner)
    _token, digest = token_of(team.engineer)
    assert authorize(digest).allowed


@pytest.mark.parametrize(
    "body",
    [
        {"token_sha256": "xyz", "deployment": "alpha/chat"},
        {"token_sha256": "0" * 64},
        {"token_sha256": "0" * 64, "deployment": 5},
    ],
)
def test_a_malformed_authorize_is_a_400(body):
    assert post(AUTHORIZE_PATH, body).status_code == 400


# The shared secret -----------------------------------------------------------------------


def test_the_secret_is_made_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("SERVE_NODE_SECRET", raising=False)

    first = serve_node_secret(tmp_path)
    second = serve_node_secret(tmp_path)

    assert first == second and len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "serve-node-secret").st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["serve-node-secret"]


def test_the_environment_s_secret_wins_and_must_be_long(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_NODE_SECRET", "s" * 40)
    assert serve_node_secret(tmp_path) == "s" * 40
    assert not (tmp_path / "serve-node-secret").exists()
    monkeypatch.setenv("SERVE_NODE_SECRET", "short")
    with pytest.raises(ConfigError, match="at least 32"):
        serve_node_secret(tmp_path)
