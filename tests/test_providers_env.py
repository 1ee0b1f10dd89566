"""EnvSecretProvider: ``<prefix><ID>`` variables, read at each lookup."""

from __future__ import annotations

import pytest

from tokensvc.config import SecretsConfig
from tokensvc.errors import UnknownSecret
from tokensvc.providers import EnvSecretProvider, SingleFlightProvider, make_provider
from tokensvc.providers.env import variable_name
from tokensvc.redacted import Secret

PREFIX = "TOKENSVC_SECRET_"


@pytest.mark.parametrize(
    ("secret_key_id", "variable"),
    [
        ("prod", "TOKENSVC_SECRET_PROD"),
        ("prod.openai", "TOKENSVC_SECRET_PROD_OPENAI"),
        ("team-a:dev", "TOKENSVC_SECRET_TEAM_A_DEV"),
        ("Mixed_Case.9", "TOKENSVC_SECRET_MIXED_CASE_9"),
    ],
)
def test_variable_name_upper_cases_and_folds_separators(secret_key_id: str, variable: str) -> None:
    assert variable_name(PREFIX, secret_key_id) == variable


@pytest.mark.gen_test
async def test_resolves_the_mapped_variable() -> None:
    provider = EnvSecretProvider(PREFIX, {"TOKENSVC_SECRET_PROD_OPENAI": "sk-prod"})
    assert (await provider.resolve("prod.openai")).reveal() == "sk-prod"


@pytest.mark.gen_test
async def test_folded_ids_share_one_variable() -> None:
    provider = EnvSecretProvider(PREFIX, {"TOKENSVC_SECRET_A_B": "sk-ab"})
    for secret_key_id in ("a.b", "a-b", "A:B", "a_b"):
        assert (await provider.resolve(secret_key_id)).reveal() == "sk-ab"


@pytest.mark.gen_test
@pytest.mark.parametrize("environ", [{}, {"TOKENSVC_SECRET_PROD": ""}])
async def test_unset_or_empty_variable_is_unknown(environ: dict[str, str]) -> None:
    provider = EnvSecretProvider(PREFIX, environ)
    with pytest.raises(UnknownSecret):
        await provider.resolve("prod")


@pytest.mark.gen_test
@pytest.mark.parametrize("secret_key_id", ["", "a=b", "a b", "prod\n", "a/b", "\u017fecret"])
async def test_ids_outside_the_alphabet_are_unknown_without_lookup(secret_key_id: str) -> None:
    # "" would read the bare prefix; U+017F upper-cases to an ASCII "S".
    environ = {PREFIX: "sk-bare", PREFIX + "SECRET": "sk-s", PREFIX + "A=B": "sk-eq"}
    provider = EnvSecretProvider(PREFIX, environ)
    with pytest.raises(UnknownSecret):
        await provider.resolve(secret_key_id)


@pytest.mark.gen_test
async def test_reads_the_live_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENSVC_SECRET_LATE", raising=False)
    provider = EnvSecretProvider(PREFIX)
    with pytest.raises(UnknownSecret):
        await provider.resolve("late")
    monkeypatch.setenv("TOKENSVC_SECRET_LATE", "sk-late")
    assert (await provider.resolve("late")).reveal() == "sk-late"


@pytest.mark.gen_test
async def test_unknown_message_names_the_variable_never_a_value() -> None:
    provider = EnvSecretProvider(PREFIX, {"TOKENSVC_SECRET_OTHER": "sk-other-value"})
    with pytest.raises(UnknownSecret) as caught:
        await provider.resolve("prod")
    assert "TOKENSVC_SECRET_PROD" in str(caught.value)
    assert "sk-other-value" not in str(caught.value)


def test_repr_shows_no_secret() -> None:
    provider = EnvSecretProvider(PREFIX, {"TOKENSVC_SECRET_PROD": "sk-prod"})
    assert "sk-prod" not in repr(provider)


def test_rejects_an_empty_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        EnvSecretProvider("")


@pytest.mark.gen_test
async def test_make_provider_builds_the_env_provider_behind_single_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MYAPP_KEY_PROD", "sk-prod")
    provider = make_provider(SecretsConfig(provider="env", env_prefix="MYAPP_KEY_"))
    assert isinstance(provider, SingleFlightProvider)
    assert isinstance(provider.inner, EnvSecretProvider)
    assert await provider.resolve("prod") == Secret("sk-prod")
    await provider.close()
