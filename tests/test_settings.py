"""Settings: defaults, validation, and reading the environment (the CLI's job)."""

from __future__ import annotations

import pytest

from axon.errors import ConfigError
from axon.settings import Settings


def test_defaults_work_on_a_laptop() -> None:
    """With nothing set, Axon uses the embedded Valkey and fast durability."""
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.key_prefix == "axon"
    assert settings.durability == "fast"
    assert not settings.redis_cluster


def test_environment_is_read() -> None:
    """REDIS_URL and AXON_* variables land in the matching fields."""
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://h:1/0",
            "AXON_REDIS_CLUSTER": "true",
            "AXON_KEY_PREFIX": "prod",
            "AXON_MAX_EVENT_BYTES": "2048",
            "AXON_DURABILITY": "strict",
            "AXON_DURABILITY_REPLICAS": "1",
            "AXON_WORKER_CLAIM_GROUPS": "3",
        }
    )
    assert settings.redis_url == "redis://h:1/0"
    assert settings.redis_cluster
    assert (settings.key_prefix, settings.max_event_bytes) == ("prod", 2048)
    assert (settings.durability, settings.durability_replicas) == ("strict", 1)
    assert settings.worker_claim_groups == 3


@pytest.mark.parametrize(
    "env",
    [
        {"AXON_MAX_EVENT_BYTES": "big"},
        {"AXON_MAX_EVENT_BYTES": "10"},
        {"AXON_DURABILITY": "paranoid"},
        {"AXON_REDIS_CLUSTER": "maybe"},
        {"AXON_KEY_PREFIX": "has{brace}"},
        {"AXON_MAX_BATCH_BYTES": "300", "AXON_MAX_EVENT_BYTES": "1024"},
        {"AXON_WORKER_CLAIM_GROUPS": "0"},
        {"AXON_WORKER_CLAIM_GROUPS": "9"},
    ],
)
def test_bad_environment_is_a_config_error(env: dict[str, str]) -> None:
    """Malformed variables raise ConfigError with the variable's story, not a traceback."""
    with pytest.raises(ConfigError):
        Settings.from_env(env)
