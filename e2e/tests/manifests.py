"""Small manifest builders shared by the harness tests."""

from __future__ import annotations

import json
from typing import Any

# A tiny HTTP server for pods: answers GET / with facts about its pod, GET /ready with 200 until
# POST /unready flips it to 503. Binds the pod IP from the downward API.
SERVER = r"""
import json, os, http.server
state = {"ready": True}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/ready":
            return self._send(200 if state["ready"] else 503, state)
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        self._send(200, {
            "pod": os.environ.get("POD_NAME"), "ip": os.environ.get("POD_IP"),
            "greeting": os.environ.get("GREETING"), "secret": os.environ.get("SECRET"),
            "namespace_file": open(sa + "/namespace").read() if os.path.exists(sa) else None,
            "token_len": len(open(sa + "/token").read()) if os.path.exists(sa) else 0,
            "hostname": os.uname().nodename, "cwd": os.getcwd(),
        })
    def do_POST(self):
        state["ready"] = False
        self._send(200, state)
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
"""


def downward_env() -> list[dict[str, Any]]:
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def server_container(**extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "image": "python:3.11-slim",
        "command": ["python", "-c", SERVER],
        "env": downward_env(),
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        **extra,
    }


def deployment(name: str, replicas: int, container: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]},
                },
            },
        }
    )


def service(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": containers, **spec},
        }
    )
