"""After the database drops a web process's connection (a PostgreSQL restart), the next
request reconnects instead of failing (issue 12, item 7: CONN_MAX_AGE without health checks)."""

import io
from wsgiref.util import setup_testing_defaults

import psycopg
import pytest
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def _get(app, path: str, token: str) -> int:
    environ = {"PATH_INFO": path, "HTTP_AUTHORIZATION": f"Bearer {token}"}
    setup_testing_defaults(environ)
    environ.update(SERVER_NAME="testserver", HTTP_HOST="testserver", wsgi_input=io.BytesIO())
    statuses = []
    body = app(environ, lambda status, headers: statuses.append(status))
    b"".join(body)
    body.close()  # request_finished: what a WSGI server does after each response
    return int(statuses[0].split()[0])


def test_first_request_after_the_connection_is_killed_succeeds(make_user):
    from django.core.wsgi import get_wsgi_application

    from controlplane.accounts.services import api_token_create

    app = get_wsgi_application()  # a bare WSGI app: Django's request signals stay connected
    _token, raw = api_token_create(user=make_user(), name="reconnect")
    assert connection.settings_dict["CONN_MAX_AGE"] > 0
    assert _get(app, "/api/v1/projects/", raw) == 200  # the connection is now persistent
    pid = connection.connection.info.backend_pid
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname="postgres"
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert _get(app, "/api/v1/projects/", raw) == 200
    assert connection.connection.info.backend_pid != pid
