"""The serve node's client of the platform's internal endpoints (sync, authorize).

Plain JSON over HTTP with `Authorization: Bearer <node secret>`; one keep-alive
connection per thread. Anything but a 200 with a JSON object raises `PlatformUnavailable`
(the node keeps serving with what it knows and asks again).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any

from workers.serve.protocol import (
    AUTHORIZE_PATH,
    SYNC_PATH,
    AuthorizeAnswer,
    AuthorizeRequest,
    NodeReport,
    SyncAnswer,
    to_dict,
)


class PlatformUnavailable(Exception):
    """The platform did not answer, or answered something we cannot use."""


class PlatformClient:
    def __init__(self, base_url: str, secret: str, *, timeout: float = 5.0):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"platform URL {base_url!r} must be http(s)://host[:port]")
        self.base_url = base_url.rstrip("/")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._secret = secret
        self._timeout = timeout
        self._local = threading.local()

    def sync(self, report: NodeReport) -> SyncAnswer:
        return SyncAnswer.from_dict(self._post(SYNC_PATH, to_dict(report)))

    def authorize(self, token_sha256: str, deployment: str) -> AuthorizeAnswer:
        request = AuthorizeRequest(token_sha256=token_sha256, deployment=deployment)
        return AuthorizeAnswer.from_dict(self._post(AUTHORIZE_PATH, to_dict(request)))

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            connection = cls(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        headers = {
            "Authorization": f"Bearer {self._secret}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        while True:
            connection = self._connection()
            reused = connection.sock is not None
            try:
                connection.request("POST", self._prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                # A kept-alive connection the server has closed meanwhile fails harmlessly:
                # once more on a new one. A new one failing means the platform is away.
                if reused and not isinstance(exc, TimeoutError):
                    continue
                raise PlatformUnavailable(f"{self.base_url}{path}: {exc}") from exc
            if response.will_close:
                self._drop_connection()
            break
        if response.status != 200:
            raise PlatformUnavailable(
                f"{self.base_url}{path} answered {response.status}: {data[:200]!r}"
            )
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise PlatformUnavailable(f"{self.base_url}{path}: not JSON") from exc
        if not isinstance(answer, dict):
            raise PlatformUnavailable(f"{self.base_url}{path}: not a JSON object")
        return answer
