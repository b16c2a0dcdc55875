"""The HTTP face of a run: /metrics (Prometheus text) and the /verdicts endpoints for rollout controllers."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pipeline.io.metrics import CanaryCollector


class _Handler(BaseHTTPRequestHandler):
    """/metrics (Prometheus text), /verdicts, /verdicts/<rollout> and /verdicts/<rollout>/check."""

    registry: CollectorRegistry
    collector: CanaryCollector

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            return
        parts = path.split("/")[1:]
        if not parts or parts[0] != "verdicts" or len(parts) > 3 or (len(parts) == 3 and parts[2] != "check"):
            self._json(404, {"error": f"no such path {path!r}; try /metrics or /verdicts"})
            return
        latest = self.collector.latest()
        if len(parts) == 1:
            self._json(200, {"verdicts": list(latest.values())})
            return
        rollout = urllib.parse.unquote(parts[1])
        record = latest.get(rollout)
        if record is None:
            known = self.collector.rollouts()
            if rollout not in known:
                self._json(404, {"error": f"unknown rollout {rollout!r}", "rollouts": sorted(known)})
            else:  # known but no window has closed yet
                self._json(200, {"rollout": rollout, "decision": None, "ok": True} if len(parts) == 3
                           else {"rollout": rollout, "decision": None})
            return
        if len(parts) == 2:
            self._json(200, record)
            return
        # A webhook check: fails (503) only on a stop, so hold and insufficient_data just wait.
        ok = record["decision"] != "stop"
        self._json(200 if ok else 503, {"rollout": rollout, "decision": record["decision"], "ok": ok,
                                        "id": record["id"], "reasons": record["reasons"]})

    def _json(self, code: int, body: Any) -> None:
        self._send(code, json.dumps(body, ensure_ascii=False).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # scrapes every few seconds would flood stderr


def serve(collector: CanaryCollector, port: int, addr: str = "0.0.0.0") -> CollectorRegistry:
    """Serve /metrics and the /verdicts endpoints on `port` from a daemon thread."""
    registry = CollectorRegistry()
    registry.register(collector)
    handler = type("Handler", (_Handler,), {"registry": registry, "collector": collector})
    server = ThreadingHTTPServer((addr, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="canary-gate-http", daemon=True).start()
    return registry
