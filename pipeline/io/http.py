"""The HTTP face of a run: /metrics (Prometheus text) and the /verdicts endpoints for rollout controllers.

A rollout controller asks about one stage, the *wanted* stage: `?stage=` in the
URL, else `metadata.stage` in a Flagger webhook's JSON body, else the stage the
run judges now (the config's, changed on SIGHUP).  The latest verdict answers
for that stage only: a `promote` or a `stop` made at another stage says nothing
about this one (docs/rollout-controllers.md has the semantics per controller).

    /verdicts/<rollout>/check   rollback check: 409 only on a stop at the wanted stage, else 200
    /verdicts/<rollout>/gate    gate: 200 only on a promote at the wanted stage, else 409 (wait)
    /verdicts/<rollout>/status  the same assessment, always 200 (Argo's web provider takes a
                                non-2xx answer as a measurement error, not as a verdict)

All three answer GET, HEAD and POST; POST's body is Flagger's webhook payload,
of which only `metadata.stage` is read.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pipeline.io.metrics import CanaryCollector
from pipeline.model import LADDER

CONTROLLER_PATHS = ("check", "gate", "status")
MAX_BODY_BYTES = 64 * 1024  # Flagger's payload is a few hundred bytes; anything larger is not one
DRAIN_BYTES = 1024 * 1024  # a larger body is refused unread, and its connection closed
_Reply = tuple[int, bytes, str, dict[str, str]]  # status, body, content type, extra headers
NOT_YET = 409  # "conflicts with the current state": not a server fault, so HTTP clients do not retry it


class BadRequest(Exception):
    """A request the controller endpoints do not understand; answered with `code` and the message."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


def wanted_stage(query: str, body: bytes, current: str | None) -> str:
    """The stage a controller asks about: `?stage=`, else the body's `metadata.stage`, else `current`."""
    asked = urllib.parse.parse_qsl(query, keep_blank_values=True)
    unknown = sorted({k for k, _ in asked if k != "stage"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; the only one is 'stage'")
    in_query = [v for _, v in asked]
    if len(in_query) > 1:
        raise BadRequest(f"stage given {len(in_query)} times: {in_query}")
    in_body = _body_stage(body)
    for where, stage in (("?stage=", in_query[0] if in_query else None), ("metadata.stage", in_body)):
        if stage is not None and stage not in LADDER:
            hint = " (write % as %25 in a URL)" if where == "?stage=" else ""
            raise BadRequest(f"{where} must be one of {list(LADDER)}, got {stage!r}{hint}")
    if in_query and in_body is not None and in_query[0] != in_body:
        raise BadRequest(f"?stage={in_query[0]!r} and metadata.stage={in_body!r} disagree")
    stage = in_query[0] if in_query else in_body if in_body is not None else current
    if stage is None:
        raise BadRequest("no stage: pass ?stage= (this server does not know the run's stage)")
    return stage


def _body_stage(body: bytes) -> str | None:
    """`metadata.stage` of a Flagger webhook payload ({name, namespace, phase, checksum, metadata})."""
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"body must be a JSON object (Flagger's webhook payload), "
                         f"got {type(payload).__name__}")
    metadata = payload.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadRequest(f"metadata must be an object, got {metadata!r}")
    stage = metadata.get("stage")
    if stage is not None and not isinstance(stage, str):
        raise BadRequest(f"metadata.stage must be a string, got {stage!r}")
    return stage


def assess(rollout: str, record: dict[str, Any] | None, wanted: str) -> dict[str, Any]:
    """What the latest verdict (None: no window closed yet) means for a controller at stage `wanted`."""
    decision = record["decision"] if record else None
    stage = record["stage"] if record else None
    here = stage == wanted
    if decision is None:
        why = f"no window has closed yet: nothing to roll back; wait for a promote at {wanted}"
    elif here and decision == "stop":
        why = f"stop at {wanted}: roll back"
    elif here and decision == "promote":
        why = f"promote at {wanted}: advance"
    elif here:
        why = f"{decision} at {wanted}: wait"
    else:
        why = f"{decision} at {stage}, not at the wanted stage {wanted}: wait for a verdict at {wanted}"
    return {
        "rollout": rollout,
        "decision": decision,
        "stage": stage,
        "wanted_stage": wanted,
        "rollback": here and decision == "stop",
        "advance": here and decision == "promote",
        "why": why,
        "id": record["id"] if record else None,
        "window_end": record["window_end"] if record else None,
        "reasons": record["reasons"] if record else [],
    }


def controller_answer(kind: str, assessment: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """HTTP status and body of endpoint `kind` (check, gate or status) for an assessment."""
    if kind not in CONTROLLER_PATHS:
        raise ValueError(f"kind must be one of {CONTROLLER_PATHS}, got {kind!r}")
    if kind == "status":
        return 200, assessment
    passed = not assessment["rollback"] if kind == "check" else assessment["advance"]
    return (200 if passed else NOT_YET), {"pass": passed, **assessment}


class _Handler(BaseHTTPRequestHandler):
    """/metrics, /verdicts, /verdicts/<rollout> and /verdicts/<rollout>/{check,gate,status}."""

    registry: CollectorRegistry
    collector: CanaryCollector
    stage: Callable[[str], str | None] | None

    def do_GET(self) -> None:
        self._answer(*self._route("GET"))

    def do_HEAD(self) -> None:
        self._answer(*self._route("HEAD"), head=True)

    def do_POST(self) -> None:
        self._answer(*self._route("POST"))

    def _route(self, method: str) -> _Reply:
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/")
        parts = path.split("/")[1:]
        controller = len(parts) == 3 and parts[0] == "verdicts" and parts[2] in CONTROLLER_PATHS
        if path != "/metrics" and (not parts or parts[0] != "verdicts" or len(parts) > 3
                                   or (len(parts) == 3 and not controller)):
            return self._json(404, {"error": f"no such path {path!r}; try /metrics or /verdicts"})
        if method == "POST" and not controller:
            return self._json(405, {"error": f"{path} answers GET and HEAD; POST is for "
                                    f"/verdicts/<rollout>/{{{','.join(CONTROLLER_PATHS)}}}"},
                              {"Allow": "GET, HEAD"})
        try:
            body = self._body() if method == "POST" else b""
        except BadRequest as exc:
            return self._json(exc.code, {"error": str(exc)})
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST, {}
        return self._verdicts(parts, url.query, body)

    def _verdicts(self, parts: list[str], query: str, body: bytes) -> _Reply:
        """/verdicts, /verdicts/<rollout> and its controller paths (GET, HEAD; POST for the latter)."""
        latest = self.collector.latest()
        if len(parts) == 1:
            return self._json(200, {"verdicts": list(latest.values())})
        rollout = urllib.parse.unquote(parts[1])
        record = latest.get(rollout)
        if record is None:
            known = self.collector.rollouts()
            if rollout not in known:
                return self._json(404, {"error": f"unknown rollout {rollout!r}", "rollouts": sorted(known)})
            if len(parts) == 2:  # known, but no window has closed yet
                return self._json(200, {"rollout": rollout, "decision": None})
        if len(parts) == 2:
            return self._json(200, record)
        try:
            wanted = wanted_stage(query, body, self.stage(rollout) if self.stage is not None else None)
        except BadRequest as exc:
            return self._json(exc.code, {"error": str(exc)})
        return self._json(*controller_answer(parts[2], assess(rollout, record, wanted)))

    def _body(self) -> bytes:
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:
            if coding.strip().lower() != "chunked":
                raise BadRequest(f"Transfer-Encoding {coding!r} is not read; send a Content-Length", 501)
            return self._chunked()
        raw = self.headers.get("Content-Length", "0")
        try:
            length = int(raw)
        except ValueError:
            raise BadRequest(f"Content-Length must be a number of bytes, got {raw!r}") from None
        if length < 0 or length > MAX_BODY_BYTES:
            # Read what was sent (up to a bound) so the client gets the answer, not a reset connection.
            left = min(max(length, 0), DRAIN_BYTES)
            while left > 0 and (chunk := self.rfile.read(min(left, 65536))):
                left -= len(chunk)
            raise BadRequest(f"body of {length} bytes; at most {MAX_BODY_BYTES} are read", 413)
        return self.rfile.read(length)

    def _chunked(self) -> bytes:
        """A chunked body (Go's HTTP client sends one when it does not know the length in advance)."""
        body = b""
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise BadRequest(f"bad chunk size {size_line!r}") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailer fields: none is used
                return body
            if len(body) + size > MAX_BODY_BYTES:
                raise BadRequest(f"chunked body over {MAX_BODY_BYTES} bytes", 413)
            body += self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF after the chunk

    @staticmethod
    def _json(code: int, body: Any, headers: dict[str, str] | None = None) -> _Reply:
        return code, json.dumps(body, ensure_ascii=False).encode(), "application/json", headers or {}

    def _answer(self, code: int, body: bytes, content_type: str, headers: dict[str, str],
                head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # scrapes and controller polls every few seconds would flood stderr


def serve(collector: CanaryCollector, port: int, addr: str = "0.0.0.0",
          stage: Callable[[str], str | None] | None = None) -> CollectorRegistry:
    """Serve /metrics and the /verdicts endpoints on `port` from a daemon thread.

    `stage(rollout)` returns the stage the run judges that rollout at now (None: not known);
    without it, controller endpoints need `?stage=`.
    """
    registry = CollectorRegistry()
    registry.register(collector)
    handler = type("Handler", (_Handler,), {"registry": registry, "collector": collector,
                                            "stage": staticmethod(stage) if stage else None})
    server = ThreadingHTTPServer((addr, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="canary-gate-http", daemon=True).start()
    return registry
