"""docker-compose.yml cannot run here (no Docker engine), so check its structure."""
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CHRONOX_SERVICES = ("migrate", "worker", "beat", "flower", "stream")


def settings_variables() -> set[str]:
    source = (REPO / "chronox" / "settings.py").read_text()
    return set(re.findall(r'"((?:CHRONOX|POLYGON)_[A-Z0-9_]+)"', source))


def test_every_service_is_there():
    assert set(SERVICES) == {"postgres", "redis", "kafka", "migrate", "worker", "beat", "flower", "stream"}
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
    for name in ("worker", "beat", "flower", "stream"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for infra in ("postgres", "redis", "kafka"):
            assert deps[infra]["condition"] == "service_healthy", (name, infra)
    assert SERVICES["migrate"]["command"] == ["chronox", "db", "upgrade"]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_commands_run_the_right_processes():
    assert SERVICES["worker"]["command"][:4] == ["celery", "-A", "chronox", "worker"]
    assert SERVICES["beat"]["command"][:4] == ["celery", "-A", "chronox", "beat"]
    assert SERVICES["flower"]["command"][:4] == ["celery", "-A", "chronox", "flower"]
    assert SERVICES["stream"]["command"] == ["chronox", "stream"]
    flower = " ".join(SERVICES["flower"]["command"])
    assert "--basic-auth=${FLOWER_USER" in flower and "--persistent=True" in flower
    queues = SERVICES["worker"]["command"][SERVICES["worker"]["command"].index("-Q") + 1].split(",")
    import celeryconfig

    assert sorted(queues) == sorted(q.name for q in celeryconfig.task_queues)


def test_environment_covers_what_the_code_reads_and_secrets_come_from_env_file():
    env_example = (REPO / ".env.example").read_text()
    for name in CHRONOX_SERVICES:
        environment = SERVICES[name]["environment"]
        missing = settings_variables() - set(environment)
        assert not missing, (name, missing)
        for key, value in environment.items():
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY", "ACCESS_KEY")):
                assert str(value).startswith("${") or "${" in str(value), key  # never a literal secret
                secret = re.search(r"\$\{([A-Z0-9_]+)", str(value)).group(1)
                assert re.search(rf"^{secret}=", env_example, re.M), secret
    assert "${POSTGRES_PASSWORD" in SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert not (REPO / ".env").exists() or ".env" in (REPO / ".gitignore").read_text()


def test_every_env_example_value_is_blank_or_a_placeholder():
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY", "ACCESS_KEY")):
                assert value in ("", "change-me"), key
