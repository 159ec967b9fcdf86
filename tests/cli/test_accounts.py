"""``conveyor tenants|users|api-keys|keys|bootstrap-demo``, run as a real process on one
test's SQLite database: what each prints, exits with and leaves in the database."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from typing import Any

import orjson
import pytest
from cli_runner import Cli, Result, conveyor_command

from conveyor.accounts import Accounts
from conveyor.config import Settings
from conveyor.store.sqlite import SqliteStore

PASSWORD = "a long enough password"


def with_stdin(cli: Cli, stdin: str, *args: str) -> Result:
    """``conveyor ARGS`` with ``stdin`` on its standard input."""
    proc = subprocess.run(
        [*conveyor_command(), *args],
        env=cli.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def rows(cli: Cli, sql: str) -> list[Any]:
    db = sqlite3.connect(f"file:{cli.db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def authenticate(cli: Cli, bearer: str) -> Any:
    """What the service (as the API runs it) makes of ``bearer`` on this database."""

    async def go() -> Any:
        store = SqliteStore(cli.url)
        await store.open()
        try:
            accounts = Accounts(store, Settings(database_url=cli.url))
            await accounts.start()
            return await accounts.authenticate(bearer)
        finally:
            await store.close()

    return asyncio.run(go())


def login(cli: Cli, email: str, password: str) -> Any:
    async def go() -> Any:
        store = SqliteStore(cli.url)
        await store.open()
        try:
            accounts = Accounts(store, Settings(database_url=cli.url))
            await accounts.start()
            return await accounts.login(email, password)
        finally:
            await store.close()

    return asyncio.run(go())


# -- tenants -------------------------------------------------------------------------
def test_tenants_are_created_listed_disabled_and_limited(cli: Cli) -> None:
    made = cli.ok("tenants", "create", "Acme", "--id", "acme", "--json").json()
    assert (made["id"], made["name"], made["disabled"]) == ("acme", "Acme", False)
    other = cli.ok("tenants", "create", "Other").stdout
    assert other.startswith("tenant tnt_")

    assert cli.ok("tenants", "disable", "acme", "--json").json()["disabled"] is True
    assert cli.ok("tenants", "enable", "acme", "--json").json()["disabled"] is False
    limited = cli.ok("tenants", "set-rate-limit", "acme", "100/minute", "--json").json()
    assert limited["rate_limit"] == "100/minute"
    back = cli.ok("tenants", "set-rate-limit", "acme", "default", "--json").json()
    assert back["rate_limit"] is None

    listed = cli.ok("tenants", "list", "--json").json()
    assert [t["name"] for t in listed] == ["Acme", "Other"]
    table = cli.ok("tenants", "list").stdout
    assert "acme" in table
    assert "RATE LIMIT" in table


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["tenants", "create", "Again", "--id", "acme"], 3, "acme"),
        (["tenants", "disable", "nobody"], 1, "no tenant 'nobody'"),
        (["tenants", "set-rate-limit", "acme", "lots"], 2, "rate_limit"),
        (["tenants", "create", "Bad", "--id", "a b"], 2, "tenant_id"),
        (["tenants", "create", ""], 2, "name"),
    ],
)
def test_tenant_errors_name_the_fault(cli: Cli, args: list[str], code: int, fragment: str) -> None:
    cli.ok("tenants", "create", "Acme", "--id", "acme")

    result = cli(*args)

    assert result.code == code, result
    assert result.stderr_lines == [result.stderr_lines[0]]
    assert result.stderr.startswith("conveyor: error: ")
    assert fragment in result.stderr


# -- users ---------------------------------------------------------------------------
def test_a_user_is_created_with_the_password_from_stdin(cli: Cli) -> None:
    cli.ok("tenants", "create", "Acme", "--id", "acme")

    made = with_stdin(
        cli, PASSWORD + "\n", "users", "create", "U@Example.com", "--tenant", "acme",
        "--role", "admin", "--password-stdin", "--json",
    )  # fmt: skip

    assert made.code == 0, made
    user = made.json()
    assert (user["email"], user["operator"]) == ("u@example.com", False)
    session = login(cli, "u@example.com", PASSWORD)
    assert (session.tenant_id, session.role.value) == ("acme", "admin")
    [(stored,)] = rows(cli, "SELECT password_hash FROM conveyor_users")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    listed = cli.ok("users", "list", "--json").json()
    assert listed[0]["memberships"] == ["acme:admin"]


def test_only_users_create_operator_makes_an_operator(cli: Cli) -> None:
    made = with_stdin(
        cli, PASSWORD + "\n", "users", "create", "op@example.com", "--operator", "--password-stdin"
    )

    assert made.code == 0, made
    assert made.stdout.startswith("operator usr_")
    assert rows(cli, "SELECT email, operator FROM conveyor_users") == [("op@example.com", 1)]
    session = login(cli, "op@example.com", PASSWORD)
    assert authenticate(cli, session.access_token).operator


def test_a_password_is_never_taken_from_the_command_line(cli: Cli) -> None:
    result = cli("users", "create", "u@example.com", "--password", PASSWORD)

    assert result.code == 2
    assert "--password" in result.stderr
    # Without a terminal to prompt on and without --password-stdin: refused, not hung.
    prompted = with_stdin(cli, "", "users", "create", "u@example.com")
    assert prompted.code == 2
    assert "--password-stdin" in prompted.stderr
    assert not cli.db_path.exists()  # refused before the database was opened


def test_a_role_without_a_tenant_is_refused(cli: Cli) -> None:
    lost_role = with_stdin(
        cli, PASSWORD + "\n", "users", "create", "u@example.com", "--role", "admin",
        "--password-stdin",
    )  # fmt: skip
    assert lost_role.code == 2
    assert "--tenant" in lost_role.stderr
    assert not cli.db_path.exists()


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [("short\n", "password"), ("\n", "no password"), ("", "no password"), ("a\x00" * 8, "NUL")],
)
def test_a_bad_password_on_stdin_is_refused_before_anything_is_written(
    cli: Cli, stdin: str, fragment: str
) -> None:
    result = with_stdin(cli, stdin, "users", "create", "u@example.com", "--password-stdin")

    assert result.code == 2, result
    assert fragment in result.stderr
    assert len(result.stderr_lines) == 1
    assert not cli.db_path.exists()


def test_users_are_disabled_enabled_given_passwords_and_added(cli: Cli) -> None:
    cli.ok("tenants", "create", "Acme", "--id", "acme")
    with_stdin(cli, PASSWORD + "\n", "users", "create", "u@example.com", "--password-stdin")

    assert cli.ok("users", "disable", "u@example.com", "--json").json()["disabled"] is True
    assert cli.ok("users", "enable", "u@example.com", "--json").json()["disabled"] is False
    changed = with_stdin(
        cli, "another password\n", "users", "set-password", "u@example.com", "--password-stdin"
    )
    assert changed.code == 0, changed
    added = cli.ok("users", "add-member", "u@example.com", "acme", "--role", "viewer", "--json")
    assert added.json()["role"] == "viewer"
    session = login(cli, "u@example.com", "another password")
    assert session.role.value == "viewer"

    again = cli("users", "add-member", "u@example.com", "acme")
    assert again.code == 3
    assert "already" in again.stderr
    missing = cli("users", "disable", "nobody@example.com")
    assert missing.code == 1
    assert "no user" in missing.stderr
    bad_role = cli("users", "add-member", "u@example.com", "acme", "--role", "god")
    assert bad_role.code == 2
    assert "--role" in bad_role.stderr


# -- API keys ------------------------------------------------------------------------
def test_an_api_key_is_printed_once_and_works(cli: Cli) -> None:
    cli.ok("tenants", "create", "Acme", "--id", "acme")

    made = cli.ok("api-keys", "create", "acme", "--name", "backend", "--json").json()

    text = made["key"]
    assert text.startswith("cvk_")
    assert made["scopes"] == ["requests:read", "requests:write"]
    principal = authenticate(cli, text)
    assert (principal.tenant_id, principal.api_key_id) == ("acme", made["id"])
    # Listed by prefix, never by text; the text is in no table.
    listing = cli.ok("api-keys", "list").stdout + cli.ok("api-keys", "list", "--json").stdout
    assert made["prefix"] in listing
    assert text not in listing
    assert text.split("_", 2)[-1] not in repr(rows(cli, "SELECT * FROM conveyor_api_keys"))

    assert cli.ok("api-keys", "revoke", made["id"]).stdout.strip() == f"revoked {made['id']}"
    with pytest.raises(Exception, match="invalid or expired"):
        authenticate(cli, text)
    assert cli("api-keys", "revoke", made["id"]).code == 1


def test_an_api_key_takes_scopes_and_an_expiry(cli: Cli) -> None:
    cli.ok("tenants", "create", "Acme", "--id", "acme")

    made = cli.ok(
        "api-keys", "create", "acme", "--scope", "admin", "--scope", "requests:read",
        "--expires-in", "3600", "--json",
    ).json()  # fmt: skip

    assert made["scopes"] == ["admin", "requests:read"]
    assert made["expires_at"] != "-"
    text_out = cli.ok("api-keys", "create", "acme").stdout
    assert text_out.startswith("cvk_")
    assert "shown only now" in text_out
    for args, fragment in [
        (["--scope", "everything"], "scopes"),
        (["--expires-in", "1"], "ttl_s"),
        (["--expires-in", "nan"], "ttl_s"),
    ]:
        refused = cli("api-keys", "create", "acme", *args)
        assert refused.code == 2, refused
        assert fragment in refused.stderr
    assert cli("api-keys", "create", "nowhere").code == 1


# -- signing keys --------------------------------------------------------------------
def test_keys_rotate_makes_a_new_signing_key(cli: Cli) -> None:
    first = cli.ok("keys", "rotate", "--json").json()
    second = cli.ok("keys", "rotate", "--json").json()

    assert first["kid"] != second["kid"]
    assert first["algorithm"] == "EdDSA"
    active = rows(cli, "SELECT kid FROM conveyor_signing_keys WHERE retired_at IS NULL")
    assert active == [(second["kid"],)]


# -- the demo account ----------------------------------------------------------------
def test_bootstrap_demo_prints_the_account_once(cli: Cli) -> None:
    first = cli.ok("bootstrap-demo")

    lines = dict(
        line.strip().split(None, 1) for line in first.stdout.splitlines()[1:] if line.strip()
    )
    assert lines["email"] == "demo@conveyor.local"
    password = lines["password"]
    key = lines["API"].removeprefix("key").strip()
    assert len(password) >= 20
    assert login(cli, "demo@conveyor.local", password).role.value == "owner"
    assert authenticate(cli, key).has("requests:write")

    again = cli.ok("bootstrap-demo")
    assert password not in again.stdout
    assert key not in again.stdout
    assert "accounts exist" in again.stdout
    assert cli.ok("bootstrap-demo", "--json").stdout.strip() == "null"
    assert rows(cli, "SELECT count(*) FROM conveyor_users") == [(1,)]


def test_bootstrap_demo_json_gives_the_secrets_to_a_script(cli: Cli) -> None:
    made = cli.ok("bootstrap-demo", "--json").json()

    assert set(made) == {"tenant_id", "email", "password", "api_key"}
    assert orjson.dumps(made)  # plain JSON
    assert authenticate(cli, made["api_key"]).tenant_id == made["tenant_id"]
