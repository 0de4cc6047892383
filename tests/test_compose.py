"""docker-compose.yml cannot run here (no Docker engine), so check its structure."""
import re
from pathlib import Path

import yaml

from chronox.settings import ENVIRONMENT

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CHRONOX_SERVICES = ("migrate", "worker", "worker-realtime", "beat", "flower", "stream")


def settings_variables() -> set[str]:
    return {variable.name for variable in ENVIRONMENT}


def test_every_service_is_there():
    assert set(SERVICES) == {"postgres", "redis", "kafka", "migrate", "worker", "worker-realtime", "beat", "flower",
                             "stream", "prometheus", "grafana", "redis-exporter"}
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    assert SERVICES["kafka"]["image"].startswith("apache/kafka")
    assert "KAFKA_PROCESS_ROLES" in SERVICES["kafka"]["environment"]  # KRaft, no ZooKeeper


def test_redis_persists_the_broker_queue():
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])


def test_infrastructure_has_health_checks_and_services_wait_for_them():
    for name in ("postgres", "redis", "kafka"):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name in ("worker", "worker-realtime", "beat", "flower", "stream"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for infra in ("postgres", "redis", "kafka"):
            assert deps[infra]["condition"] == "service_healthy", (name, infra)
    assert SERVICES["migrate"]["command"] == ["chronox", "db", "upgrade"]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_chronox_processes_are_healthy_while_ready_and_monitoring_mounts_its_files():
    for name in ("worker", "beat", "stream"):
        assert "/readyz" in " ".join(SERVICES[name]["healthcheck"]["test"]), name
        assert SERVICES[name]["environment"]["CHRONOX_METRICS_PORT"] == "8000", name
    assert "/healthcheck" in " ".join(SERVICES["flower"]["healthcheck"]["test"])
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}
    for name in ("prometheus", "grafana"):
        for volume in SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), (name, source)
    assert SERVICES["redis-exporter"]["environment"]["REDIS_ADDR"] == "redis://redis:6379"
    provider = yaml.safe_load((REPO / "monitoring/grafana/provisioning/dashboards/chronox.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert f"./monitoring/grafana/dashboards:{dashboards}:ro" in SERVICES["grafana"]["volumes"]


def test_commands_run_the_right_processes():
    assert SERVICES["worker"]["command"][:4] == ["celery", "-A", "chronox", "worker"]
    assert SERVICES["beat"]["command"][:4] == ["celery", "-A", "chronox", "beat"]
    assert SERVICES["flower"]["command"][:4] == ["celery", "-A", "chronox", "flower"]
    assert SERVICES["stream"]["command"] == ["chronox", "stream"]
    flower = " ".join(SERVICES["flower"]["command"])
    assert "--basic-auth=${FLOWER_USER" in flower and "--persistent=True" in flower
    def queues(service: str) -> list[str]:
        command = SERVICES[service]["command"]
        return command[command.index("-Q") + 1].split(",")

    import celeryconfig

    # Every queue has a consumer; the real-time one has a service of its own, and only it.
    assert SERVICES["worker-realtime"]["command"][:4] == ["celery", "-A", "chronox", "worker"]
    assert queues("worker-realtime") == ["chronox.realtime"] and "chronox.realtime" not in queues("worker")
    assert sorted(queues("worker") + queues("worker-realtime")) == sorted(q.name for q in celeryconfig.task_queues)


def test_environment_covers_what_the_code_reads_and_secrets_come_from_env_file():
    env_example = (REPO / ".env.example").read_text()
    for name in CHRONOX_SERVICES:
        environment = SERVICES[name]["environment"]
        missing = settings_variables() - set(environment)
        assert not missing, (name, missing)
        for key, value in environment.items():
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY", "ACCESS_KEY")):
                # never a literal secret: exactly ${NAME}, ${NAME:-default} or ${NAME:?error}
                reference = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[-?][^}]*)?\}", str(value))
                assert reference, (key, value)
                secret = reference.group(1)
                assert re.search(rf"^{re.escape(secret)}=", env_example, re.M), (key, secret)
    assert "${POSTGRES_PASSWORD" in SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert not (REPO / ".env").exists() or ".env" in (REPO / ".gitignore").read_text()


def test_every_env_example_value_is_blank_or_a_placeholder():
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY", "ACCESS_KEY")):
                assert value in ("", "change-me"), key


def test_the_readme_documents_every_variable():
    readme = (REPO / "README.md").read_text()
    configuration = readme[readme.index("## Configuration"):readme.index("## Coming from the registry service")]
    assert {name for name in settings_variables() if f"`{name}`" not in configuration} == set()
