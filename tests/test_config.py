"""Configuration: contract defaults, TOML file, TOKENSVC_* env vars, flags, validation."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from tokensvc.config import ClientConfig, Config, load_config
from tokensvc.config_env import BOOLEAN_FALSE, BOOLEAN_TRUE
from tokensvc.errors import ConfigError

GOOD_SHA256 = hashlib.sha256(b"a-client-secret-of-some-length").hexdigest()

# The TOML block of the contract (section 1), verbatim but for a real digest.
CONTRACT_TOML = f"""
[server]
host = "127.0.0.1"
port = 8765
workers = 1
cors_origins = ["vscode-webview://*"]

[tokens]
issuer = "tokensvc"
audience = "chatkit"
algorithm = "ES256"
ttl = 3600
max_ttl = 3600
session_max_lifetime = 86400
leeway = 5
ticket_ttl = 60
allow_session_token_in_query = false

[keys]
dir = "keys"
reload_interval = 5

[revocation]
backend = "memory"
path = ""
redis_url = "redis://127.0.0.1:6379/0"
max_staleness = 30

[secrets]
provider = "file"
path = "secrets.toml"
env_prefix = "TOKENSVC_SECRET_"
url = ""
auth = ""
timeout = 2.0

[clients.extension]
secret_sha256 = "{GOOD_SHA256}"
secret_key_ids = ["*"]
rate_limit = 60

[chatkit]
upstream_url = ""
model = "gpt-4o-mini"
workflow_id = ""
max_streams_per_subject = 8
heartbeat = 15
history = 500
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokensvc.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write_config(tmp_path, text), env=env or {})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, env)
    return str(caught.value)


# -- defaults ------------------------------------------------------------------------


def test_defaults_equal_the_contract() -> None:
    config = load_config(None, env={})
    s, t, k, r, sec, c = (
        config.server,
        config.tokens,
        config.keys,
        config.revocation,
        config.secrets,
        config.chatkit,
    )
    assert (s.host, s.port, s.workers, s.cors_origins) == (
        "127.0.0.1", 8765, 1, ("vscode-webview://*",)
    )
    assert (t.issuer, t.audience, t.algorithm) == ("tokensvc", "chatkit", "ES256")
    assert (t.ttl, t.max_ttl, t.session_max_lifetime) == (3600, 3600, 86400)
    assert (t.leeway, t.ticket_ttl, t.allow_session_token_in_query) == (5, 60, False)
    assert (k.dir, k.reload_interval) == (Path("keys"), 5)
    assert (r.backend, r.path, r.redis_url, r.max_staleness) == (
        "memory", None, "redis://127.0.0.1:6379/0", 30
    )
    assert (sec.provider, sec.path, sec.env_prefix) == (
        "file", Path("secrets.toml"), "TOKENSVC_SECRET_"
    )
    assert (sec.url, sec.auth, sec.timeout) == ("", "", 2.0)
    assert (c.upstream_url, c.model, c.workflow_id) == ("", "gpt-4o-mini", "")
    assert (c.max_streams_per_subject, c.heartbeat, c.history) == (8, 15, 500)
    assert config.clients == ()
    assert config == Config()


def test_contract_example_file_loads_to_the_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, CONTRACT_TOML)
    defaults = Config()
    assert config.server == defaults.server
    assert config.tokens == defaults.tokens
    assert config.revocation == defaults.revocation
    assert config.chatkit == defaults.chatkit
    assert config.keys.dir == tmp_path / "keys"
    assert config.keys.reload_interval == 5.0
    assert config.secrets.path == tmp_path / "secrets.toml"
    (extension,) = config.clients
    assert extension.client_id == "extension"
    assert extension.secret_sha256 == GOOD_SHA256
    assert extension.secret_key_ids == ("*",)
    assert extension.rate_limit == 60
    assert extension.plain_secret is False


def test_client_table_defaults_patterns_and_rate_limit(tmp_path: Path) -> None:
    config = load_text(tmp_path, f'[clients.ext]\nsecret_sha256 = "{GOOD_SHA256.upper()}"\n')
    (ext,) = config.clients
    assert ext.secret_key_ids == ("*",)
    assert ext.rate_limit == 60
    assert ext.secret_sha256 == GOOD_SHA256  # stored lower-case, compared as hex text


# -- sources and precedence ----------------------------------------------------------


def test_file_values_are_used(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [server]
        host = "10.1.2.3"
        port = 9000
        cors_origins = ["https://app.example.com", "vscode-webview://*"]
        [tokens]
        algorithm = "EdDSA"
        ttl = 600
        max_ttl = 1200
        leeway = 60
        ticket_ttl = 300
        allow_session_token_in_query = true
        [revocation]
        backend = "redis"
        redis_url = "rediss://cache.example.com:6380/2"
        max_staleness = 12.5
        [secrets]
        provider = "http"
        url = "https://vault.example.com/lookup"
        timeout = 0.5
        [chatkit]
        upstream_url = "https://api.openai.com/v1"
        heartbeat = 2.5
        """,
    )
    assert config.server.host == "10.1.2.3"
    assert config.server.port == 9000
    assert config.server.cors_origins == ("https://app.example.com", "vscode-webview://*")
    assert config.tokens.algorithm == "EdDSA"
    assert (config.tokens.ttl, config.tokens.max_ttl) == (600, 1200)
    assert (config.tokens.leeway, config.tokens.ticket_ttl) == (60, 300)
    assert config.tokens.allow_session_token_in_query is True
    assert config.revocation.backend == "redis"
    assert config.revocation.max_staleness == 12.5
    assert config.secrets.provider == "http"
    assert config.secrets.timeout == 0.5
    assert config.chatkit.upstream_url == "https://api.openai.com/v1"
    assert config.chatkit.heartbeat == 2.5


def test_env_vars_override_the_file_with_types(tmp_path: Path) -> None:
    env = {
        "TOKENSVC_SERVER_PORT": "9100",
        "TOKENSVC_SERVER_CORS_ORIGINS": "https://a.example.com, vscode-webview://*",
        "TOKENSVC_TOKENS_MAX_TTL": "1800",
        "TOKENSVC_TOKENS_TTL": "900",
        "TOKENSVC_TOKENS_ALLOW_SESSION_TOKEN_IN_QUERY": "true",
        "TOKENSVC_SECRETS_TIMEOUT": "0.25",
        "TOKENSVC_KEYS_RELOAD_INTERVAL": "7",
        "TOKENSVC_CHATKIT_MODEL": "gpt-test",
    }
    config = load_text(
        tmp_path,
        """
        [server]
        port = 9000
        [tokens]
        ttl = 60
        allow_session_token_in_query = false
        [secrets]
        timeout = 3
        """,
        env,
    )
    assert config.server.port == 9100
    assert isinstance(config.server.port, int)
    assert config.server.cors_origins == ("https://a.example.com", "vscode-webview://*")
    assert (config.tokens.ttl, config.tokens.max_ttl) == (900, 1800)
    assert config.tokens.allow_session_token_in_query is True
    assert config.secrets.timeout == 0.25
    assert config.keys.reload_interval == 7.0
    assert config.chatkit.model == "gpt-test"


@pytest.mark.parametrize(
    ("text", "expected"),
    [(t, True) for t in ("true", "TRUE", "1", "yes", "On")]
    + [(f, False) for f in ("false", "False", "0", "no", "OFF")],
)
def test_env_bool_spellings(text: str, expected: bool) -> None:
    env = {"TOKENSVC_TOKENS_ALLOW_SESSION_TOKEN_IN_QUERY": text}
    assert load_config(None, env=env).tokens.allow_session_token_in_query is expected


def test_readme_lists_the_boolean_spellings_the_code_accepts() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    pairs = ", ".join(f"`{t}`/`{f}`" for t, f in zip(BOOLEAN_TRUE, BOOLEAN_FALSE, strict=True))
    assert f"booleans ({pairs}, in any case)" in readme


def test_flags_beat_env_and_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nport = 9000\nhost = \"10.0.0.1\"\n")
    config = load_config(
        path,
        env={"TOKENSVC_SERVER_PORT": "9100", "TOKENSVC_SERVER_HOST": "10.0.0.2"},
        overrides={"server": {"port": 9200, "host": None}, "keys": {"dir": Path("/srv/k")}},
    )
    assert config.server.port == 9200
    assert config.server.host == "10.0.0.2"  # a flag left unset (None) does not override
    assert config.keys.dir == Path("/srv/k")


def test_a_broken_file_value_is_refused_even_when_overridden(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[server]\nport = "8765"\n')
    with pytest.raises(ConfigError, match="port"):
        load_config(path, env={}, overrides={"server": {"port": 0}})
    path = write_config(tmp_path, '[tokens]\nleeway = "5"\n')
    with pytest.raises(ConfigError, match="leeway"):
        load_config(path, env={"TOKENSVC_TOKENS_LEEWAY": "5"})
    with pytest.raises(ConfigError, match="TOKENSVC_SERVER_PORT"):
        load_config(None, env={"TOKENSVC_SERVER_PORT": "x"}, overrides={"server": {"port": 0}})


def test_relative_paths_in_the_file_resolve_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_text(
        folder,
        """
        [secrets]
        path = "sub/secrets.toml"
        [keys]
        dir = "ring"
        [revocation]
        path = "/var/lib/tokensvc/revocations.jsonl"
        """,
    )
    assert config.secrets.path == folder / "sub" / "secrets.toml"
    assert config.keys.dir == folder / "ring"
    assert config.revocation.path == Path("/var/lib/tokensvc/revocations.jsonl")
    assert config.config_path == folder / "tokensvc.toml"


def test_default_secrets_path_is_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "etc"
    folder.mkdir()
    assert load_text(folder, "[server]\nport = 1\n").secrets.path == folder / "secrets.toml"
    # Without a config file it is read from the working directory.
    assert load_config(None, env={}).secrets.path == Path("secrets.toml")


def test_relative_paths_from_env_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "etc"
    folder.mkdir()
    config = load_text(folder, "", {"TOKENSVC_SECRETS_PATH": "mine.toml"})
    assert config.secrets.path == tmp_path / "mine.toml"


def test_tokensvc_env_vars_that_are_not_configuration_are_ignored() -> None:
    env = {
        "TOKENSVC_SECRET_FOO": "sk-not-config",
        "TOKENSVC_SECRET_TEAM_ALPHA": "sk-not-config",
        "TOKENSVC_KEYS_PASSPHRASE": "hunter2-passphrase",
        "TOKENSVC_TEST_REDIS_URL": "redis://127.0.0.1:1/0",
        "TOKENSVC_TEST_ANYTHING_ELSE": "1",
        "OTHER_SERVER_PORT": "1",
        "tokensvc_sever_port": "1",  # not the prefix: variable names are case-sensitive
    }
    assert load_config(None, env=env) == Config()


@pytest.mark.parametrize(
    "variable", ["TOKENSVC_SEVER_PORT", "TOKENSVC_TOKEN_TTL", "TOKENSVC_SECRETPROVIDER",
                 "TOKENSVC_", "TOKENSVC_PORT"],
)
def test_unknown_section_in_an_env_var_is_an_error_naming_it(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={variable: "8766", "TOKENSVC_SERVER_PORT": "8767"})
    message = str(caught.value)
    assert message.startswith(f"unknown config variable {variable}:")
    assert "\n" not in message
    assert "8766" not in message


def test_env_var_naming_a_section_but_no_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="TOKENSVC_SERVER names no key"):
        load_config(None, env={"TOKENSVC_SERVER": "1"})


def test_secrets_under_a_configured_env_prefix_are_not_strays(tmp_path: Path) -> None:
    # The prefix may come from the file or from the environment itself.
    from_file = load_text(
        tmp_path, '[secrets]\nprovider = "env"\nenv_prefix = "TOKENSVC_KEYRING_"\n',
        {"TOKENSVC_KEYRING_DEMO": "sk-a"},
    )
    assert from_file.secrets.env_prefix == "TOKENSVC_KEYRING_"
    from_env = load_config(None, env={"TOKENSVC_SECRETS_ENV_PREFIX": "TOKENSVC_VAULT_",
                                      "TOKENSVC_VAULT_DEMO": "sk-b"})
    assert from_env.secrets.env_prefix == "TOKENSVC_VAULT_"
    # With another prefix, a TOKENSVC_SECRET_* variable is a leftover that does nothing.
    with pytest.raises(ConfigError, match="unknown config variable TOKENSVC_SECRET_DEMO"):
        load_config(None, env={"TOKENSVC_SECRETS_ENV_PREFIX": "TOKENSVC_VAULT_",
                               "TOKENSVC_SECRET_DEMO": "sk-c"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOKENSVC_SERVER_PORT": "eighty"}, "TOKENSVC_SERVER_PORT must be an integer"),
        ({"TOKENSVC_SECRETS_TIMEOUT": "soon"}, "TOKENSVC_SECRETS_TIMEOUT must be a number"),
        ({"TOKENSVC_TOKENS_ALLOW_SESSION_TOKEN_IN_QUERY": "maybe"},
         "TOKENSVC_TOKENS_ALLOW_SESSION_TOKEN_IN_QUERY must be a boolean: true or false "
         "(or 1/0, yes/no, on/off)"),
        ({"TOKENSVC_SERVER_LOG_FORMAT": "xml"},
         "TOKENSVC_SERVER_LOG_FORMAT must be one of text | json"),
        ({"TOKENSVC_SECRETS_TIMEOUT": "inf"},
         "TOKENSVC_SECRETS_TIMEOUT must be a finite number"),
    ],
)
def test_wrong_type_in_an_env_var_says_which_type_was_expected(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env=env)
    assert str(caught.value) == message


# -- invalid configurations ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[sever]\nport = 1\n", "sever"),
        ("[server]\nprot = 1\n", "prot"),
        ("[tokens]\nttl_seconds = 60\n", "ttl_seconds"),
        ("[server]\ndemo = true\n", "demo"),  # internal field, not a setting
        ("[server]\nport = \"8080\"\n", "port"),
        ("[server]\nport = true\n", "port"),
        ("[server]\nworkers = 1.0\n", "workers"),
        ("[tokens]\nttl = 60.5\n", "ttl"),
        ("[tokens]\nallow_session_token_in_query = 1\n", "allow_session_token_in_query"),
        ("[server]\ncors_origins = \"vscode-webview://*\"\n", "cors_origins"),
        ("[keys]\nreload_interval = \"5\"\n", "reload_interval"),
        ("[secrets]\ntimeout = inf\n", "timeout"),
        ("[tokens]\nleeway = 61\n", "leeway"),
        ("[tokens]\nleeway = -1\n", "leeway"),
        ("[tokens]\nttl = 3601\n", "max_ttl"),
        ("[tokens]\nttl = 600\nmax_ttl = 300\n", "max_ttl"),
        ("[tokens]\nticket_ttl = 301\n", "ticket_ttl"),
        ("[tokens]\nticket_ttl = 0\n", "ticket_ttl"),
        ("[tokens]\nalgorithm = \"HS256\"\n", "algorithm"),
        ("[tokens]\nalgorithm = \"none\"\n", "algorithm"),
        ("[tokens]\nalgorithm = \"es256\"\n", "algorithm"),
        ("[server]\nworkers = 2\n", "workers"),
        ("[server]\nport = 70000\n", "port"),
        ("[server]\ncors_origins = [\"*\"]\n", "cors_origins"),
        ("[server]\ncors_origins = [\"null\"]\n", "cors_origins"),
        ("[server]\ncors_origins = [\"https://*.example.com\"]\n", "cors_origins"),
        ("[server]\ncors_origins = [\"https://example.com/\"]\n", "cors_origins"),
        ("[server]\ncors_origins = [\"https://example.com\\n\"]\n", "cors_origins"),
        ("[revocation]\nbackend = \"sqlite\"\n", "backend"),
        ("[secrets]\nprovider = \"vault\"\n", "provider"),
        ("[secrets]\nprovider = \"http\"\n", "url"),
        ("[chatkit]\nupstream_url = \"ftp://example.com\"\n", "upstream_url"),
        ("[chatkit]\nupstream_url = \"api.openai.com/v1\"\n", "upstream_url"),
        ("[chatkit]\nupstream_url = \"https://\"\n", "upstream_url"),
        ("servers = 1\n", "servers"),
    ],
)
def test_invalid_file_value_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    assert named in config_error(tmp_path, text)


def test_workers_above_one_are_fine_with_redis(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[server]\nworkers = 2\n[revocation]\nbackend = \"redis\"\n")
    assert config.server.workers == 2


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TOKENSVC_SERVER_PROT": "1"}, "TOKENSVC_SERVER_PROT"),
        ({"TOKENSVC_TOKENS_LEEWAYS": "1"}, "TOKENSVC_TOKENS_LEEWAYS"),
        ({"TOKENSVC_SERVER_PORT": "eighty"}, "TOKENSVC_SERVER_PORT"),
        ({"TOKENSVC_SERVER_PORT": "80.5"}, "TOKENSVC_SERVER_PORT"),
        ({"TOKENSVC_TOKENS_ALLOW_SESSION_TOKEN_IN_QUERY": "maybe"}, "ALLOW_SESSION_TOKEN"),
        ({"TOKENSVC_SECRETS_TIMEOUT": "soon"}, "TOKENSVC_SECRETS_TIMEOUT"),
        ({"TOKENSVC_TOKENS_LEEWAY": "61"}, "leeway"),
        ({"TOKENSVC_SERVER_CORS_ORIGINS": "*"}, "cors_origins"),
    ],
)
def test_invalid_env_var_names_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(None, env=env)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        (f'secret = "a-long-enough-plain-secret"\nsecret_sha256 = "{GOOD_SHA256}"', "secret"),
        ("rate_limit = 5", "secret"),
        ('secret = "short"', "secret"),
        ('secret_sha256 = "abc123"', "secret_sha256"),
        (f'secret_sha256 = "{GOOD_SHA256[:-1]}g"', "secret_sha256"),
        (f'secret_sha256 = "{GOOD_SHA256}\\n"', "secret_sha256"),
        (f'secret_sha256 = "{GOOD_SHA256}"\nsecret_key_ids = "*"', "secret_key_ids"),
        (f'secret_sha256 = "{GOOD_SHA256}"\nrate_limit = 0', "rate_limit"),
        (f'secret_sha256 = "{GOOD_SHA256}"\nrate_limit = true', "rate_limit"),
        (f'secret_sha256 = "{GOOD_SHA256}"\nsecret_ids = ["*"]', "secret_ids"),
    ],
)
def test_invalid_client_names_the_key(tmp_path: Path, table: str, named: str) -> None:
    message = config_error(tmp_path, f"[clients.ext]\n{table}\n")
    assert "clients.ext" in message
    assert named in message


@pytest.mark.parametrize("client_id", ["has space", "slash/id", "x" * 65, "", "ext\n"])
def test_bad_client_id_is_refused(tmp_path: Path, client_id: str) -> None:
    quoted = client_id.replace("\n", "\\n")
    message = config_error(tmp_path, f'[clients."{quoted}"]\nsecret_sha256 = "{GOOD_SHA256}"\n')
    assert "client id" in message


def test_plain_secret_is_hashed_and_flagged(tmp_path: Path) -> None:
    plain = "a-long-enough-plain-secret"
    (ext,) = load_text(tmp_path, f'[clients.ext]\nsecret = "{plain}"\n').clients
    assert ext.secret_sha256 == hashlib.sha256(plain.encode()).hexdigest()
    assert ext.plain_secret is True
    assert plain not in repr(ext)


def test_config_error_for_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid TOML" in config_error(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", env={})


# -- client patterns -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "secret_key_id", "allowed"),
    [
        (("*",), "anything.at:all-1", True),
        (("demo",), "demo", True),
        (("demo",), "demo2", False),
        (("demo",), "Demo", False),
        (("team-*",), "team-alpha", True),
        (("team-*",), "TEAM-alpha", False),
        (("team-*",), "other-team-alpha", False),
        (("team-?",), "team-a", True),
        (("team-?",), "team-ab", False),
        (("prod:[ab]",), "prod:b", True),
        (("prod:[ab]",), "prod:c", False),
        ((), "demo", False),
        (("a", "b.*"), "b.x", True),
    ],
)
def test_may_use_matches_fnmatch_patterns_case_sensitively(
    patterns: tuple[str, ...], secret_key_id: str, allowed: bool
) -> None:
    client = ClientConfig(client_id="c", secret_sha256=GOOD_SHA256, secret_key_ids=patterns)
    assert client.may_use(secret_key_id) is allowed


def test_env_prefix_that_clashes_with_configuration_variables_is_refused() -> None:
    with pytest.raises(ConfigError, match="env_prefix"):
        load_config(env={"TOKENSVC_SECRETS_ENV_PREFIX": "TOKENSVC_SECRETS_"})


@pytest.mark.parametrize("key", ["writes_per_minute", "max_replies_per_subject",
                                 "max_thread_messages"])
def test_chatkit_limits_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError, match=f"\\[chatkit\\] {key}"):
        load_config(env={f"TOKENSVC_CHATKIT_{key.upper()}": "0"})


def test_chatkit_limits_have_defaults() -> None:
    chatkit = load_config(env={}).chatkit
    assert (chatkit.writes_per_minute, chatkit.max_replies_per_subject,
            chatkit.max_thread_messages) == (60, 4, 1000)
