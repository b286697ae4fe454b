"""`tether serve` (the web app) and `tether user ...` (accounts)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tether.errors import TetherError

user_app = typer.Typer(help="Web app accounts: add users, change passwords and roles, issue and revoke API tokens.", no_args_is_help=True)
SECRET_FILE = "secret_key"
# Annotators think for a while between calls: keep their connections open longer than uvicorn's default 5 s.
KEEP_ALIVE_S = 75


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.command("serve")(serve)


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Server processes (PostgreSQL recommended above 1).")] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level: warning, info, debug.")] = "info",
) -> None:
    """Run the feedback web app (annotation, review, admin) and the JSON API on the workspace's database.

    There is no default account: make the first admin with `tether user add NAME --role admin`. Sessions and the
    sign-in throttle live in the database, so every worker and host on it agrees; CSRF tokens are signed with
    TETHER_SECRET_KEY, or a key kept in the workspace (secret_key, readable by you only). Behind HTTPS set
    TETHER_SECURE_COOKIES=1; behind a reverse proxy set FORWARDED_ALLOW_IPS to its address, so the throttle sees
    each client's address (X-Forwarded-For) instead of the proxy's.

    Example:  tether serve --host 127.0.0.1 --port 8000
    """
    import os

    import uvicorn
    from sqlalchemy import func, select

    from tether.app.settings import AppSettings
    from tether.cli.common import workspace_url
    from tether.store.db import session_scope
    from tether.store.tables import User

    ws, url = workspace_url()
    if workers < 1:
        raise TetherError(f"--workers must be at least 1, got {workers}", fix="use --workers 1")
    settings = AppSettings.from_env(url, secret_file=ws.root / SECRET_FILE)
    with session_scope(url) as session:
        admins = session.scalar(select(func.count()).select_from(User).where(User.role == "admin", User.active.is_(True)))
    if not admins:
        typer.echo("note: no admin account yet; make one with `tether user add NAME --role admin`", err=True)
    typer.echo(f"Tether web app on http://{host}:{port}  (database: {url.split('@')[-1]})", err=True)
    if workers == 1:
        from tether.app.main import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                    timeout_keep_alive=KEEP_ALIVE_S)
        return
    # Several processes: each builds the app from the environment (same database, same secret).
    os.environ["TETHER_SERVE_DATABASE_URL"] = url
    os.environ["TETHER_SECRET_KEY"] = settings.secret_key
    uvicorn.run("tether.app.main:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=log_level == "debug", timeout_keep_alive=KEEP_ALIVE_S)


def _read_password() -> str:
    """The password from a hidden prompt (typed twice), or the first line of stdin when it is not a terminal."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise TetherError("the two passwords differ", fix="run the command again")
        return first
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise TetherError("no password on stdin", fix="pipe it in: printf '%s\\n' \"$PW\" | tether user add NAME --role ROLE")
    return line


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="Login name (no spaces; compared without case).")],
    role: Annotated[str, typer.Option("--role", help="admin, reviewer or annotator.")],
) -> None:
    """Add a login account; the password is read from a prompt, or from stdin when piped (never from an option).

    Passwords: 8+ characters for annotators, 12+ for admins and reviewers; never the user name, nor a common
    password (a packaged list), nor a run like 12345678.

    Example:  tether user add alice --role annotator
    """
    from tether.cli.common import workspace_url
    from tether.store.accounts import create_user
    from tether.store.db import session_scope

    _ws, url = workspace_url()
    password = _read_password()
    profile = _password_profile()
    with session_scope(url) as session:
        user = create_user(session, name=name, role=role, password=password, password_profile=profile)
        typer.echo(f"user {user.name} added ({user.role})")


@user_app.command("token")
def user_token(
    name: Annotated[str, typer.Argument(help="The user the token acts as.")],
    label: Annotated[str, typer.Option("--label", help="A note to recognize the token by.")] = "cli",
    scope: Annotated[str, typer.Option("--scope", help="full: acts with the user's role; annotate: only takes items and answers them.")] = "full",
    days: Annotated[int, typer.Option("--days", help="Days until the token expires (1..3650).")] = 90,
) -> None:
    """Issue an API token for a user and print it once (only its sha256 is stored); its expiry goes to stderr.

    Example:  TOKEN=$(tether user token pipeline-bot --scope annotate --days 30)
    """
    from tether.cli.common import workspace_url
    from tether.store.accounts import get_user_by_name, issue_token
    from tether.store.db import session_scope

    _ws, url = workspace_url()
    with session_scope(url) as session:
        user = get_user_by_name(session, name)
        token = issue_token(session, user=user, label=label, scope=scope, days=days)
    typer.echo(token)
    typer.echo(f"token for {user.name}: scope {scope}, expires in {days} days", err=True)


@user_app.command("tokens")
def user_tokens(name: Annotated[str, typer.Argument(help="Whose tokens to list.")]) -> None:
    """List a user's API tokens: id, state (live, expired, revoked), scope, expiry, last use, who issued it.

    Example:  tether user tokens pipeline-bot
    """
    from tether.cli.common import workspace_url
    from tether.store.accounts import get_user_by_name, list_tokens
    from tether.store.db import session_scope

    _ws, url = workspace_url()
    with session_scope(url, readonly=True) as session:
        rows = list_tokens(session, user=get_user_by_name(session, name))
    if not rows:
        typer.echo(f"{name} has no tokens")
    for row in rows:
        expires = row.expires_at.strftime("%Y-%m-%d") if row.expires_at else "-"
        used = row.last_used_at.strftime("%Y-%m-%d %H:%M") if row.last_used_at else "never"
        typer.echo(f"{row.id:>6}  {row.state:<8} {row.scope:<9} expires {expires}  last used {used:<16}  by {row.issued_by or '-'}  {row.label}")


@user_app.command("revoke-tokens")
def user_revoke_tokens(
    name: Annotated[str, typer.Argument(help="Whose tokens to revoke.")],
    token_id: Annotated[int | None, typer.Option("--id", help="Revoke only this token (see `tether user tokens NAME`).")] = None,
) -> None:
    """Revoke a user's API tokens (all of them, or one with --id); every worker refuses them at once.

    Example:  tether user revoke-tokens pipeline-bot
    """
    from tether.cli.common import workspace_url
    from tether.store.accounts import get_user_by_name, revoke_tokens
    from tether.store.db import session_scope

    _ws, url = workspace_url()
    with session_scope(url) as session:
        user = get_user_by_name(session, name)
        count = revoke_tokens(session, user=user, token_id=token_id)
    typer.echo(f"{count} token{'s' if count != 1 else ''} of {user.name} revoked")


@user_app.command("passwd")
def user_passwd(name: Annotated[str, typer.Argument(help="Whose password to set.")]) -> None:
    """Set a user's password (from a prompt, or stdin when piped); every session of the user ends. API tokens stay:
    revoke them with `tether user revoke-tokens NAME`.

    Example:  tether user passwd alice
    """
    from tether.cli.common import workspace_url
    from tether.store.accounts import get_user_by_name, set_password
    from tether.store.db import session_scope

    _ws, url = workspace_url()
    password = _read_password()
    profile = _password_profile()
    with session_scope(url) as session:
        user = get_user_by_name(session, name)
        set_password(session, user=user, password=password, password_profile=profile)
    typer.echo(f"password of {user.name} changed; their sessions ended")


@user_app.command("set")
def user_set(
    name: Annotated[str, typer.Argument(help="The user to change.")],
    role: Annotated[str | None, typer.Option("--role", help="admin, reviewer or annotator.")] = None,
    active: Annotated[bool | None, typer.Option("--active/--inactive", help="Let the user sign in, or not.")] = None,
) -> None:
    """Change a user's role or deactivate them. Either ends their sessions; deactivation revokes all their tokens, a
    role change the full-role ones (reactivating later revives none).

    Example:  tether user set mallory --inactive
    """
    from tether.cli.common import workspace_url
    from tether.store.accounts import get_user_by_name, set_role
    from tether.store.db import session_scope

    if role is None and active is None:
        raise TetherError("nothing to change", fix="give --role ROLE, --active or --inactive")
    _ws, url = workspace_url()
    with session_scope(url) as session:
        user = set_role(session, user=get_user_by_name(session, name), role=role, active=active)
        typer.echo(f"user {user.name}: {user.role}, {'active' if user.active else 'inactive'}")


@user_app.command("list")
def user_list() -> None:
    """List the login accounts with their role and state.

    Example:  tether user list
    """
    from tether.cli.common import workspace_url
    from tether.store.accounts import login_users
    from tether.store.db import session_scope

    _ws, url = workspace_url()
    with session_scope(url) as session:
        users = login_users(session)
        for user in users:
            typer.echo(f"{user.name:<24} {user.role:<10} {'active' if user.active else 'inactive'}")
    if not users:
        typer.echo("no users yet: tether user add NAME --role admin")


def _password_profile() -> str:
    import os

    from tether.store.accounts import PASSWORD_PROFILES

    profile = os.environ.get("TETHER_PASSWORD_PROFILE", "default")
    if profile not in PASSWORD_PROFILES:
        raise TetherError(f"TETHER_PASSWORD_PROFILE must be one of {PASSWORD_PROFILES}, got {profile!r}", fix="unset it")
    return profile
