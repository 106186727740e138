"""``[grpc]`` in the service config, and the token check behind the auth interceptor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unified_profile.cdc.config import read_config_file
from unified_profile.cdc.errors import ConfigError
from unified_profile.server.config import parse_service_config
from unified_profile.server.rpc.auth import Authenticator, bearer_token
from unified_profile.server.rpc.settings import GrpcConfig, TokenConfig

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "unified-profile.toml"
CRM_TOKEN = "crm-secret-0123456789abcdef"
LOYALTY_TOKEN = "loyalty-secret-0123456789abcdef"


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in ("UP_STORE_DSN", "UP_CRM_DSN", "UP_LOYALTY_DSN"):
        monkeypatch.setenv(name, "host=127.0.0.1 dbname=x")
    monkeypatch.setenv("UP_TOKEN_CRM", CRM_TOKEN)
    monkeypatch.setenv("UP_TOKEN_LOYALTY", LOYALTY_TOKEN)
    return read_config_file(DEMO)


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_service_config(data, "f.toml")
    return info.value.problems


def test_the_demo_grpc_section_parses_with_tokens_from_the_environment(demo):
    config = parse_service_config(demo, "demo").grpc
    assert (config.host, config.port) == ("127.0.0.1", 50051)
    assert [(t.name, t.scopes) for t in config.tokens] == [
        ("loyalty-backend", ["profiles.read", "profiles.subscribe"]),
        ("crm-backend", ["profiles.read", "profiles.subscribe", "profiles.steward"]),
    ]
    assert config.tokens[1].token.get_secret_value() == CRM_TOKEN
    assert CRM_TOKEN not in repr(config)          # a secret never shows in a repr or a log
    assert config.tls is None and config.max_message_bytes == 4 * 1024 * 1024


def test_without_a_grpc_section_the_defaults_apply(demo):
    del demo["grpc"]
    config = parse_service_config(demo, "demo").grpc
    assert config == GrpcConfig() and not config.tokens


def test_invalid_grpc_settings_name_their_key(demo, tmp_path):
    demo["grpc"] = {
        "listen": "localhost",
        "tokens": [
            {"name": "a", "token": "short", "scopes": ["profiles.read"]},
            {"name": "b", "token": "x" * 20, "scopes": ["profiles.write"]},
            {"name": "c", "token": "y" * 20, "scopes": []},
        ],
        "tls": {"cert_file": str(tmp_path / "missing.pem"), "key_file": str(tmp_path / "k")},
        "max_message_bytes": 10,
    }
    found = dict(problems(demo))
    assert set(found) == {
        "grpc.listen", "grpc.tokens[0].token", "grpc.tokens[1].scopes[0]", "grpc.tokens[2].scopes",
        "grpc.tls.cert_file", "grpc.tls.key_file", "grpc.max_message_bytes",
    }
    assert "16 characters" in found["grpc.tokens[0].token"]
    assert "short" not in found["grpc.tokens[0].token"]


def test_two_tokens_with_one_secret_are_refused(demo):
    demo["grpc"]["tokens"][1]["token"] = LOYALTY_TOKEN
    assert problems(demo) == [("grpc", "two tokens have the same secret")]


def test_the_authenticator_finds_the_token_and_nothing_else():
    tokens = [
        TokenConfig.model_validate({"name": "a", "token": "a" * 20, "scopes": ["admin"]}),
        TokenConfig.model_validate({"name": "b", "token": "b" * 32, "scopes": ["profiles.read"]}),
    ]
    auth = Authenticator(tokens)
    principal = auth.authenticate("b" * 32)
    assert principal is not None and principal.name == "b"
    assert principal.scopes == frozenset({"profiles.read"})
    for wrong in ("b" * 31, "b" * 33, "", "a" * 19, "A" * 20):
        assert auth.authenticate(wrong) is None


@pytest.mark.parametrize(("metadata", "token"), [
    ([("authorization", "Bearer abc")], "abc"),
    ([("x-other", "1"), ("authorization", "bearer  abc ")], "abc"),
    ([("authorization", "Basic abc")], None),
    ([("authorization", "Bearer")], None),
    ([], None),
    (None, None),
])
def test_bearer_token_is_read_from_the_authorization_metadata(metadata, token):
    assert bearer_token(metadata) == token
