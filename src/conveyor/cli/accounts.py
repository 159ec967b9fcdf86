"""``conveyor tenants|users|api-keys|keys`` and ``conveyor bootstrap-demo``: the
operator's way in, and a server's way to its first API key.

These commands reach the database directly and act as the console
(:meth:`conveyor.accounts.Principal.console`): they may do anything in any tenant, and
they alone make operators (``users create --operator``). Passwords are read from a
prompt or, with ``--password-stdin``, from the first line of standard input; never from
the command line, which other users of the machine can read (``ps``). Secrets (an API
key's text, the demo password) are printed once, when made: only their digests are
stored.

Exit codes as for every command (:mod:`conveyor.cli.main`): 1 for a tenant, user or key
that does not exist, 3 for a conflict (an email taken, a member already), 2 for bad
input.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar, cast

import typer

from conveyor.accounts import Accounts, Conflict, Invalid, NotFound, Principal
from conveyor.accounts.errors import AccountError
from conveyor.accounts.passwords import MAX_LENGTH
from conveyor.accounts.service import Demo
from conveyor.cli import output
from conveyor.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    CliError,
    DatabaseUrlOption,
    JsonFlag,
    fail,
    load_settings,
    run,
)
from conveyor.config import Settings
from conveyor.store import make_store
from conveyor.store.accounts import READ, SCOPES, WRITE, ApiKey, Role, Tenant, User
from conveyor.store.email_preferences import EmailPreferenceStore
from conveyor.store.records import EventType

T = TypeVar("T")

tenants = typer.Typer(help="Create, list, disable and limit tenants.", no_args_is_help=True)
users = typer.Typer(
    help="Create users and operators, disable them, set passwords, add them to tenants.",
    no_args_is_help=True,
)
api_keys = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
keys = typer.Typer(help="The keys that sign access tokens.", no_args_is_help=True)

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of standard input (scripts); "
        "default: prompt for it.",
    ),
]
TenantId = Annotated[str, typer.Argument(help="The tenant's id (see `conveyor tenants list`).")]
UserRef = Annotated[str, typer.Argument(help="The user's id (usr_...) or email.")]
RoleOption = Annotated[
    Role, typer.Option(case_sensitive=False, help="owner, admin, member or viewer.")
]
DEFAULT_RATE = "default"


def _accounts(
    database_url: str | None, action: Callable[[Accounts], Awaitable[T]], *, signing: bool = False
) -> T:
    """Run ``action`` on an accounts service over the settings' database (migrated);
    ``signing``: load the signing keys first (for a command that issues tokens)."""
    settings = load_settings(database_url)

    async def go() -> T:
        store = make_store(settings)
        await store.open()
        try:
            await store.migrate()
            accounts = Accounts(store, settings)
            if signing:
                await accounts.start()
            return await action(accounts)
        finally:
            await store.close()

    try:
        return run(go())
    except NotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except Conflict as exc:
        fail(str(exc), EXIT_CONFLICT)
    except AccountError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def _password(from_stdin: bool) -> str:
    """The new password, from stdin's first line or a prompt (asked twice)."""
    if from_stdin:
        try:
            line = sys.stdin.readline(MAX_LENGTH + 2)
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--password-stdin: cannot read standard input: {exc}") from exc
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise CliError("--password-stdin: standard input held no password line")
        return password
    if not sys.stdin.isatty():
        raise CliError(
            "password: standard input is not a terminal to prompt on; pipe the password "
            "with --password-stdin"
        )
    prompted: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return prompted


def _check_password(password: str) -> str:
    """Refused before the database is opened: bad input writes nothing."""
    from conveyor.accounts.passwords import check_password

    try:
        return check_password(password)
    except Invalid as exc:
        raise CliError(str(exc)) from exc


# -- tenants --------------------------------------------------------------------------
def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "created_at": output.when(tenant.created_at),
        "disabled": tenant.disabled,
        "rate_limit": tenant.rate_limit,
    }


def _show_tenant(tenant: Tenant, json: bool) -> None:
    if json:
        output.print_json(_tenant_json(tenant))
    else:
        state = "disabled" if tenant.disabled else "enabled"
        rate = tenant.rate_limit or "the default (CONVEYOR_RATE_LIMIT_PER_CALLER)"
        output.emit(f"tenant {tenant.id}  {tenant.name}  [{state}]  rate limit {rate}")


@tenants.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="The tenant's display name.")],
    tenant_id: Annotated[
        str | None,
        typer.Option("--id", help="Its id (letters, digits, - and _); default tnt_<random>."),
    ] = None,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Create a tenant with no members (add one: `conveyor users add-member`)."""
    _show_tenant(_accounts(database_url, lambda a: a.create_tenant(name, tenant_id)), json)


@tenants.command("list")
def tenants_list(json: JsonFlag = False, database_url: DatabaseUrlOption = None) -> None:
    """List every tenant, oldest first."""
    found = _accounts(database_url, lambda a: a.tenants())
    if json:
        output.print_json([_tenant_json(t) for t in found])
    elif found:
        rows = [
            [
                t.id,
                t.name,
                "disabled" if t.disabled else "enabled",
                t.rate_limit or "default",
                output.when(t.created_at),
            ]
            for t in found
        ]
        output.emit(output.table(["ID", "NAME", "STATE", "RATE LIMIT", "CREATED"], rows))
    else:
        output.emit("no tenants yet: `conveyor tenants create NAME`")


@tenants.command("disable")
def tenants_disable(
    tenant_id: TenantId, json: JsonFlag = False, database_url: DatabaseUrlOption = None
) -> None:
    """Disable a tenant: its users and API keys are refused from the next call."""
    _show_tenant(_accounts(database_url, lambda a: a.set_tenant_disabled(tenant_id, True)), json)


@tenants.command("enable")
def tenants_enable(
    tenant_id: TenantId, json: JsonFlag = False, database_url: DatabaseUrlOption = None
) -> None:
    """Enable a disabled tenant again."""
    _show_tenant(_accounts(database_url, lambda a: a.set_tenant_disabled(tenant_id, False)), json)


@tenants.command("set-rate-limit")
def tenants_set_rate_limit(
    tenant_id: TenantId,
    rate: Annotated[
        str,
        typer.Argument(
            help="Requests each of the tenant's users and API keys may make, e.g. "
            f"1000/minute; `{DEFAULT_RATE}`: CONVEYOR_RATE_LIMIT_PER_CALLER."
        ),
    ],
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Set the per-caller rate limit of a tenant's users and API keys."""
    chosen = None if rate.strip().lower() == DEFAULT_RATE else rate
    _show_tenant(
        _accounts(database_url, lambda a: a.set_tenant_rate_limit(tenant_id, chosen)), json
    )


# -- users ----------------------------------------------------------------------------
def _user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "operator": user.operator,
        "disabled": user.disabled,
        "created_at": output.when(user.created_at),
    }


def _show_user(user: User, json: bool) -> None:
    if json:
        output.print_json(_user_json(user))
    else:
        kind = "operator" if user.operator else "user"
        state = "disabled" if user.disabled else "enabled"
        output.emit(f"{kind} {user.id}  {user.email}  [{state}]")


@users.command("create")
def users_create(
    email: Annotated[str, typer.Argument(help="The address the user logs in with.")],
    operator: Annotated[
        bool,
        typer.Option(
            "--operator",
            help="An operator: sees every tenant, pauses queues, sets limits. Only this "
            "command makes one.",
        ),
    ] = False,
    tenant: Annotated[
        str | None, typer.Option(help="Also make the user a member of this tenant.")
    ] = None,
    role: Annotated[
        Role | None,
        typer.Option(
            case_sensitive=False,
            help="With --tenant: owner, admin, member (the default) or viewer.",
        ),
    ] = None,
    password_stdin: PasswordStdin = False,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Create a user (with --tenant, a member of it with --role, default member)."""
    if role is not None and tenant is None:
        raise CliError("--role: a role is held in a tenant; name it with --tenant")
    password = _check_password(_password(password_stdin))

    async def create(accounts: Accounts) -> User:
        if tenant is not None:
            await accounts.tenant(tenant)  # before the user exists: nothing half-made
        user = await accounts.create_user(email, password, operator=operator)
        if tenant is not None:
            await accounts.add_member(tenant, user.id, role or Role.MEMBER)
        return user

    _show_user(_accounts(database_url, create), json)


@users.command("list")
def users_list(json: JsonFlag = False, database_url: DatabaseUrlOption = None) -> None:
    """List every user with the tenants it belongs to, oldest first."""

    async def listing(accounts: Accounts) -> list[tuple[User, list[str]]]:
        found = []
        for user in await accounts.users():
            roles = [f"{m.tenant_id}:{m.role.value}" for m in await accounts.memberships(user.id)]
            found.append((user, roles))
        return found

    found = _accounts(database_url, listing)
    if json:
        output.print_json([{**_user_json(u), "memberships": roles} for u, roles in found])
    elif found:
        rows = [
            [
                u.id,
                u.email,
                "operator" if u.operator else "user",
                "disabled" if u.disabled else "enabled",
                ", ".join(roles) or "-",
            ]
            for u, roles in found
        ]
        output.emit(output.table(["ID", "EMAIL", "KIND", "STATE", "TENANTS"], rows))
    else:
        output.emit("no users yet: `conveyor users create EMAIL`")


@users.command("disable")
def users_disable(
    user: UserRef, json: JsonFlag = False, database_url: DatabaseUrlOption = None
) -> None:
    """Disable a user: login and refresh refused, sessions revoked (access tokens
    already issued run out within CONVEYOR_ACCESS_TOKEN_SECONDS)."""
    _show_user(_accounts(database_url, lambda a: a.set_user_disabled(user, True)), json)


@users.command("enable")
def users_enable(
    user: UserRef, json: JsonFlag = False, database_url: DatabaseUrlOption = None
) -> None:
    """Enable a disabled user again (it logs in anew)."""
    _show_user(_accounts(database_url, lambda a: a.set_user_disabled(user, False)), json)


@users.command("set-password")
def users_set_password(
    user: UserRef,
    password_stdin: PasswordStdin = False,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Replace a user's password and end the user's sessions."""
    password = _check_password(_password(password_stdin))
    _show_user(_accounts(database_url, lambda a: a.set_password(user, password)), json)


@users.command("add-member")
def users_add_member(
    user: UserRef,
    tenant: Annotated[str, typer.Argument(help="The tenant's id.")],
    role: RoleOption = Role.MEMBER,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Make a user a member of a tenant with a role (default member)."""
    member = _accounts(database_url, lambda a: a.add_member(tenant, user, role))
    if json:
        output.print_json(
            {"tenant_id": member.tenant_id, "user_id": member.user_id, "role": member.role.value}
        )
    else:
        output.emit(f"{member.email} is {member.role.value} of {member.tenant_id}")


# -- API keys -------------------------------------------------------------------------
def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "prefix": key.prefix,
        "name": key.name,
        "scopes": list(key.scopes),
        "created_by": key.created_by,
        "created_at": output.when(key.created_at),
        "last_used_at": output.when(key.last_used_at),
        "expires_at": output.when(key.expires_at),
        "revoked_at": output.when(key.revoked_at),
    }


@api_keys.command("create")
def api_keys_create(
    tenant: Annotated[str, typer.Argument(help="The tenant the key acts for.")],
    name: Annotated[str, typer.Option(help="What the key is for, shown in listings.")] = "cli",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help=f"A scope the key holds (repeatable): {', '.join(sorted(SCOPES))}; default "
            f"{READ} and {WRITE}."
        ),
    ] = None,
    expires_in: Annotated[
        float | None, typer.Option(help="Seconds until the key expires; default never.")
    ] = None,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Create an API key and print it, once: only its digest is stored."""
    scopes = scope or [READ, WRITE]
    key, text = _accounts(
        database_url,
        lambda a: a.create_api_key(
            Principal.console(), name, scopes, ttl_s=expires_in, tenant_id=tenant
        ),
    )
    if json:
        output.print_json({**_key_json(key), "key": text})
    else:
        output.emit(
            f"{text}\n"
            f"API key {key.id} of {key.tenant_id} ({', '.join(key.scopes)}). It is shown only "
            "now: keep it; send it as Authorization: Bearer <key>."
        )


@api_keys.command("list")
def api_keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """List API keys (their prefixes, never their text), newest first."""
    found = _accounts(database_url, lambda a: a.list_api_keys(Principal.console(), tenant))
    if json:
        output.print_json([_key_json(k) for k in found])
    elif found:
        rows = [
            [
                k.id,
                k.tenant_id,
                f"cvk_{k.prefix}_...",
                k.name,
                ",".join(k.scopes),
                output.when(k.last_used_at),
                output.when(k.expires_at) if k.expires_at else "never",
                "revoked" if k.revoked_at else "active",
            ]
            for k in found
        ]
        headers = ["ID", "TENANT", "PREFIX", "NAME", "SCOPES", "LAST USED", "EXPIRES", "STATE"]
        output.emit(output.table(headers, rows))
    else:
        output.emit("no API keys: `conveyor api-keys create TENANT`")


@api_keys.command("revoke")
def api_keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    database_url: DatabaseUrlOption = None,
) -> None:
    """Revoke an API key: the next call with it is refused."""
    _accounts(database_url, lambda a: a.revoke_api_key(Principal.console(), key_id))
    output.emit(f"revoked {key_id}")


# -- signing keys ---------------------------------------------------------------------
@keys.command("rotate")
def keys_rotate(json: JsonFlag = False, database_url: DatabaseUrlOption = None) -> None:
    """A new key signs access tokens from now (every API process within a minute); the
    old one still verifies the tokens it signed until they expire: nobody is logged out."""
    key = _accounts(database_url, lambda a: a.rotate_signing_key(), signing=True)
    if json:
        output.print_json({"kid": key.kid, "algorithm": key.algorithm})
    else:
        output.emit(f"signing key {key.kid} ({key.algorithm}) signs access tokens from now")


# -- the demo account -----------------------------------------------------------------
async def _demo_with_mail(accounts: Accounts) -> Demo | None:
    """The demo account, its owner emailed when a job completes or fails (to the log
    while no SMTP server is set), so that a first run shows the mails too."""
    demo = await accounts.bootstrap_demo()
    if demo is not None:
        # _accounts opened the store with make_store: a Store, every seam of it.
        store = cast(EmailPreferenceStore, accounts.store)
        await store.set_email_preferences(
            demo.tenant.id,
            demo.user.id,
            event_types=[EventType.COMPLETED, EventType.FAILED],
            kinds=[],
            enabled=True,
        )
    return demo


def _mail_route(settings: Settings) -> str:
    if settings.smtp_host:
        return f"over {settings.smtp_host}:{settings.smtp_port}"
    return "no SMTP server set: written to the server's log instead"


def bootstrap_demo(json: JsonFlag = False, database_url: DatabaseUrlOption = None) -> None:
    """On a database without accounts: make a demo tenant, its owner with a random
    password and an API key, and print them once. With accounts already: print that
    nothing was made (exit 0)."""
    settings: Settings = load_settings(database_url)
    demo = _accounts(database_url, _demo_with_mail, signing=True)
    if json:
        output.print_json(
            None
            if demo is None
            else {
                "tenant_id": demo.tenant.id,
                "email": demo.user.email,
                "password": demo.password,
                "api_key": demo.api_key_text,
            }
        )
    elif demo is None:
        output.emit("accounts exist: no demo account made (see `conveyor users list`)")
    else:
        output.emit(
            "Demo account, shown only now (log in at POST /v1/auth/login):\n"
            f"  email     {demo.user.email}\n"
            f"  password  {demo.password}\n"
            f"  tenant    {demo.tenant.name} ({demo.tenant.id})\n"
            f"  API key   {demo.api_key_text}\n"
            f"  mail      {demo.user.email} is emailed when a job completes or fails "
            f"({_mail_route(settings)})\n"
            f"  try       curl -H 'Authorization: Bearer {demo.api_key_text}' "
            f"http://{settings.host}:{settings.port}/v1/requests"
        )
