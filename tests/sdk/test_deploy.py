"""Deployment artefacts in deploy/: the Dockerfile passes hadolint, the Kubernetes manifests
validate against the Kubernetes schemas (strict), and the configs the compose file and the
ConfigMap ship are accepted by the real binary. Each check also proves it can fail, on a
broken copy, so a silently skipped linter never passes for a clean result."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import IN_CI, Gateway, httpx, require_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
MANIFESTS = ["configmap.yaml", "secret.example.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
# Kubernetes version the manifests are validated against.
K8S_VERSION = "1.33"
# What the gateway's drain takes on SIGTERM (server::DRAIN), which the pod must allow for.
DRAIN_S = 30


def tool(name: str) -> str:
    """A console script installed in this venv (tests/sdk/requirements.txt)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (it is pinned in tests/sdk/requirements.txt)"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=env)


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(path))


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DEPLOY / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_root_image(tmp_path: Path) -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001:10001" in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("USER 10001:10001", "USER root"))
    result = hadolint(broken)
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # last USER should not be root


def test_dockerfile_runs_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM ") == 2, "multi-stage: a build stage and a runtime stage"
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0")), users
    assert 'CMD ["tollgate", "healthcheck"' in text


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, paths))


def test_kubernetes_manifests_validate() -> None:
    result = kubernetes_validate(*(K8S / name for name in MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in MANIFESTS:
        assert f"{name} passed" in result.stdout, result.stdout


def test_kubernetes_validate_rejects_a_typo(tmp_path: Path) -> None:
    text = (K8S / "deployment.yaml").read_text()
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace("readinessProbe:", "readynessProbe:"))
    result = kubernetes_validate(broken)
    assert result.returncode != 0, result.stdout


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_deployment_probes_resources_and_shutdown() -> None:
    deployment = load(K8S / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "admin": 8081}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > DRAIN_S
    # Every name the Deployment refers to exists in the other manifests.
    assert pod["volumes"][0]["configMap"]["name"] == load(K8S / "configmap.yaml")["metadata"]["name"]
    assert container["envFrom"][0]["secretRef"]["name"] == load(K8S / "secret.example.yaml")["metadata"]["name"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert load(K8S / "service.yaml")["spec"]["selector"] == selector
    assert load(K8S / "pdb.yaml")["spec"]["selector"]["matchLabels"] == selector
    assert load(K8S / "hpa.yaml")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    kustomization = load(K8S / "kustomization.yaml")
    assert set(kustomization["resources"]) == set(MANIFESTS) - {"secret.example.yaml"}


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = require_binary("TOLLGATE_BIN")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    full_env.update(env)
    return run(binary, "check-config", "--config", str(path), env=full_env)


SECRETS = {
    "TOLLGATE_DATABASE_URL": "postgres://tollgate:pw@postgres:5432/tollgate",
    "TOLLGATE_REDIS_URL": "redis://redis:6379/0",
    "TOLLGATE_ADMIN_TOKEN": "admin-token",
    "OPENAI_API_KEY": "sk-test",
}


def test_configmap_config_is_accepted_by_the_binary(tmp_path: Path) -> None:
    config = tmp_path / "tollgate.yaml"
    config.write_text(load(K8S / "configmap.yaml")["data"]["tollgate.yaml"])
    # The Secret template provides exactly the variables the config reads.
    assert set(load(K8S / "secret.example.yaml")["stringData"]) == set(SECRETS)
    result = check_config(config, SECRETS)
    assert result.returncode == 0, result.stderr
    assert "config ok: 1 model(s), store postgres" in result.stdout
    # And the check is real: without a variable the config needs, it is refused (64).
    missing = check_config(config, {k: v for k, v in SECRETS.items() if k != "OPENAI_API_KEY"})
    assert missing.returncode == 64, missing.stderr
    assert "OPENAI_API_KEY" in missing.stderr


def test_compose_wires_gateway_postgres_and_redis() -> None:
    compose = load(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"gateway", "postgres", "redis"}
    gateway = services["gateway"]
    assert gateway["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).is_file()
    assert {"postgres", "redis"} <= set(gateway["depends_on"])
    assert all("healthcheck" in services[name] for name in ("postgres", "redis"))
    mount = next(v for v in gateway["volumes"] if v.endswith(":/etc/tollgate/tollgate.yaml:ro"))
    config_file = DEPLOY / mount.split(":")[0]
    env = {k: str(v) for k, v in gateway["environment"].items() if not str(v).startswith("${")}
    env.update({k: "x" for k, v in gateway["environment"].items() if str(v).startswith("${")})
    result = check_config(config_file, env)
    assert result.returncode == 0, result.stderr
    # The admin plane is published on the host's loopback only.
    assert "127.0.0.1:8081:8081" in gateway["ports"]


def test_healthcheck_command(gateway: Gateway) -> None:
    binary = require_binary("TOLLGATE_BIN")
    ok = run(binary, "healthcheck", "--url", f"{gateway.admin_url}/healthz")
    assert ok.returncode == 0, ok.stderr
    wrong = run(binary, "healthcheck", "--url", f"{gateway.admin_url}/no-such-path")
    assert wrong.returncode == 1
    assert "answered 401" in wrong.stderr  # the admin plane guards unknown paths
    down = run(binary, "healthcheck", "--url", f"http://127.0.0.1:{gateway.dead_port}/healthz", "--timeout-s", "1")
    assert down.returncode == 1


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b(?:tollgate|gen_ai)_[a-z_]+", target["expr"]):
                names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_grafana_dashboard_uses_only_metrics_the_gateway_has() -> None:
    names = dashboard_metrics()
    assert len(names) >= 10, names
    source = "\n".join(p.read_text() for p in (ROOT / "gateway" / "src").rglob("*.rs"))
    defined = set(re.findall(r'"((?:tollgate|gen_ai)_[a-z_]+)"', source))
    assert names <= defined, f"dashboard names metrics the gateway never defines: {names - defined}"


def test_metrics_after_a_request(gateway: Gateway, client: Any) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "metrics"}])
    text = httpx.get(f"{gateway.admin_url}/metrics", timeout=10).text
    for family in ["tollgate_requests_total", "tollgate_overhead_seconds", "tollgate_request_duration_seconds",
                   "gen_ai_client_token_usage", "tollgate_cost_micro_usd_total", "tollgate_in_flight_requests"]:
        assert f"# TYPE {family} " in text, family
    # The dashboard's panels that need no special traffic have data to show.
    assert dashboard_metrics() >= {"tollgate_requests_total", "gen_ai_client_token_usage"}
