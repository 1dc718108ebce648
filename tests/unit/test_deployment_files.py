"""docker-compose.yml, the Dockerfile and .dockerignore, checked without Docker (nothing is built or run):
the compose file against a JSON schema of the parts we rely on, plus the rules the README promises."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = {"gpu", "servers", "postgres", "s3"}

HEALTHCHECK = {
    "type": "object",
    "required": ["test"],
    "properties": {
        "test": {
            "type": "array",
            "minItems": 2,
            "items": {"type": "string"},
            "prefixItems": [{"enum": ["CMD", "CMD-SHELL"]}],
        },
        "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
        "timeout": {"type": "string", "pattern": r"^\d+[smh]$"},
        "start_period": {"type": "string", "pattern": r"^\d+[smh]$"},
        "retries": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}
SERVICE = {
    "type": "object",
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
    "required": ["profiles"],
    "properties": {
        "image": {"type": "string"},
        "build": {"type": "string"},
        "profiles": {"type": "array", "minItems": 1, "items": {"enum": sorted(PROFILES)}},
        "command": {"type": "array", "items": {"type": "string"}},
        "entrypoint": {"type": "array", "items": {"type": "string"}},
        "env_file": {"type": "string"},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "volumes": {"type": "array", "items": {"type": "string", "pattern": r"^[a-z]+:/[\w/.-]+$"}},
        "restart": {"enum": ["no", "unless-stopped", "always", "on-failure"]},
        "stop_grace_period": {"type": "string"},
        "healthcheck": HEALTHCHECK,
        "depends_on": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "condition": {
                        "enum": ["service_started", "service_healthy", "service_completed_successfully"]
                    }
                },
                "required": ["condition"],
            },
        },
        "deploy": {"type": "object"},
    },
    "additionalProperties": False,
}
COMPOSE = {
    "type": "object",
    "required": ["services", "volumes"],
    "properties": {
        "services": {"type": "object", "additionalProperties": SERVICE},
        "volumes": {"type": "object"},
    },
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_matches_the_schema_and_its_promises():
    document = compose()
    jsonschema.validate(document, COMPOSE)
    services = document["services"]
    used_profiles = {profile for service in services.values() for profile in service["profiles"]}
    assert used_profiles == PROFILES
    for name, service in services.items():
        if service.get("restart") != "no":  # one-shot helpers excepted, every service reports its health
            assert "healthcheck" in service, name
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in document["volumes"], f"{name}: {volume} is not a named volume"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert set(services[dependency]["profiles"]) <= set(service["profiles"]) | {"s3"}
    assert services["bot"]["profiles"] == ["gpu"] and "deploy" in services["bot"]
    engines = services["bot-remote"]["environment"]["ENGINE"].split(",")
    assert [re.sub(r"//.*@", "//@", e) for e in engines] == ["http://@engine-1:7861", "http://@engine-2:7861"]
    assert services["bot"]["environment"]["HTTP_PORT"] == "8080"
    assert "8080/healthz" in " ".join(services["bot"]["healthcheck"]["test"])


def test_compose_variables_have_defaults():
    """Interpolation covers every profile: a variable without a default would break the ones not in use."""
    text = (ROOT / "docker-compose.yml").read_text()
    variables = re.findall(r"(?<!\$)\$\{([^}]*)\}", text)
    assert variables and all(":-" in variable for variable in variables), variables


def test_dockerfile_runs_as_a_user_and_installs_the_extras():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines.index(f"USER {users[-1]}") < lines.index('CMD ["python", "-m", "bot"]')
    assert any("pip install" in line and "postgres" in line and "s3" in line for line in lines)
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert {"bot", "cogs", "engine", "storage"} <= copied


def test_dockerignore_keeps_secrets_and_data_out_of_the_build_context():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    assert {".env", "data/", "models/", ".venv/"} <= patterns
