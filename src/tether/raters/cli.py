"""`tether raters init | add-rater | deactivate | reactivate | guidelines | import | export | serve`: the command line.

A project is a folder holding the secret key, the SQLite database (unless `--db postgresql://...` is
given to every command) and `exports/`. Errors exit with status 2 and `error: <message>` via
`tether.cli.main`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from tether.errors import TetherError
from tether.raters.accounts import Accounts
from tether.raters.db import Database, database_url, migrate
from tether.raters.security import SECRET_FILE, load_or_create_secret
from tether.raters.service import EXPORT_FORMATS, RaterService

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
STARTER_GUIDELINES = """# How to rate

You see a prompt and two responses, left and right. Pick the response that is more **helpful**,
**honest** and **harmless**: the one you would rather receive.

- A correct answer beats a wrong one, however confident or polite the wrong one sounds.
- Saying "I don't know" is better than inventing an answer.
- Do not reward length, flattery or agreement for their own sake.
- Use "about the same" only when you truly cannot prefer either; skip a pair you cannot judge.

Keys: 1-5 rate from "left much better" to "right much better", S skips.
"""


class CliError(TetherError):
    """A bad `tether raters` command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tether raters", description="The rater web app: human preference collection.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("project", help="project folder (secret key, SQLite database, exports/)")
        c.add_argument("--db", help="postgresql://user:pass@host/dbname instead of SQLite in the project folder")
        return c

    c = command("init", "Create a project: database, secret key, starter guidelines and the first admin.")
    c.add_argument("--name", default="tether ratings", help="project name shown on the dashboard")
    c.add_argument("--overlap", type=int, default=3, help="distinct raters per pair (k), fixed once rating starts")
    c.add_argument("--gold-rate", type=float, default=0.0, help="share of gold (attention-check) pairs served")
    c.add_argument("--admin", default="admin", help="username of the first admin")
    c.add_argument("--password-file", help="file holding the admin's password (else an invite link is printed)")
    c.add_argument("--guidelines", help="Markdown file of the first guideline version (else a starter text)")
    c.add_argument("--base-url", default=DEFAULT_BASE_URL, help="where the app will be served, for invite links")
    c = command("add-rater", "Create a rater (or admin) and print their one-time invite link.")
    c.add_argument("username")
    c.add_argument("--admin", action="store_true", help="an admin rather than a rater")
    c.add_argument("--base-url", default=DEFAULT_BASE_URL, help="where the app is served, for the link")
    c = command("deactivate", "Revoke a user: sign them out everywhere, void their invites, release their pairs.")
    c.add_argument("username")
    c = command("reactivate", "Let a deactivated user sign in again (with their old password).")
    c.add_argument("username")
    c = command("guidelines", "Publish a new guideline version (raters must acknowledge it).")
    c.add_argument("file", help="Markdown file")
    c.add_argument("--version", required=True, help="version name, e.g. 2")
    c = command("import", "Import a comparison queue (tether JSONL from `tether collect`).")
    c.add_argument("queue", help="JSONL file of unlabelled comparisons (or of gold pairs with --gold)")
    c.add_argument("--gold", action="store_true", help="gold pairs: each row's choice is the known answer")
    c = command("export", "Export ratings to <project>/exports/NAME.")
    c.add_argument("name", help="a plain file name, e.g. ratings.jsonl")
    c.add_argument("--format", choices=EXPORT_FORMATS, default="tether", help="tether preference JSONL or TRL rows")
    c.add_argument("--overwrite", action="store_true", help="replace an existing export of that name")
    c = command("serve", "Serve the app (upgrades the database first).")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    c.add_argument("--port", type=int, default=8000)
    c.add_argument("--public-url", help="where raters reach the app (e.g. https://rate.example.org), for invite "
                                        "links; default http://HOST:PORT")
    c.add_argument("--forwarded-allow-ips", help="comma-separated addresses of reverse proxies whose "
                                                 "X-Forwarded-For/-Proto are trusted; default: none")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `tether raters` command; TetherErrors propagate to `tether.cli.main` (status 2)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    {"init": _init, "add-rater": _add_rater, "deactivate": _set_active, "reactivate": _set_active,
     "guidelines": _guidelines, "import": _import, "export": _export, "serve": _serve}[args.command](args)
    return 0


def _open(args: argparse.Namespace, create: bool = False) -> tuple[Database, RaterService, Accounts]:
    project = Path(args.project)
    if not create and not (project / SECRET_FILE).exists():
        raise CliError(f"{project}: not a rater project (no {SECRET_FILE}); run 'tether raters init {project}' first")
    secret = load_or_create_secret(project)
    db = Database(database_url(project, args.db))
    migrate(db)
    return db, RaterService(db, project), Accounts(db, secret)


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"{path}: cannot read the {what} ({err})") from None


def _init(args: argparse.Namespace) -> None:
    password = _read_text(args.password_file, "password").strip("\r\n") if args.password_file else None
    guidelines = _read_text(args.guidelines, "guidelines") if args.guidelines else STARTER_GUIDELINES
    db, service, accounts = _open(args, create=True)
    service.create_project(args.name, args.overlap, args.gold_rate)
    service.add_guideline("1", guidelines)
    print(f"project {args.name!r} created in {args.project} (k = {args.overlap}, gold rate {args.gold_rate})")
    if password is not None:
        accounts.set_password(args.admin, password, role="admin")
        print(f"admin {args.admin!r} can sign in with the password from {args.password_file}")
    else:
        token = accounts.invite(args.admin, "admin")
        print(f"admin {args.admin!r}: set a password at {args.base_url.rstrip('/')}/invite/{token} (one use, 7 days)")
    db.close()


def _add_rater(args: argparse.Namespace) -> None:
    db, _, accounts = _open(args)
    token = accounts.invite(args.username, "admin" if args.admin else "rater")
    print(f"{args.base_url.rstrip('/')}/invite/{token}")
    db.close()


def _set_active(args: argparse.Namespace) -> None:
    db, service, accounts = _open(args)
    active = args.command == "reactivate"
    released = accounts.set_active(args.username, active, service.release_rater)
    print(f"{args.username} reactivated" if active else
          f"{args.username} deactivated: signed out, invites void, {released} open pair(s) back in the queue")
    db.close()


def _guidelines(args: argparse.Namespace) -> None:
    db, service, _ = _open(args)
    service.add_guideline(args.version, _read_text(args.file, "guidelines"))
    print(f"guidelines version {args.version} published")
    db.close()


def _import(args: argparse.Namespace) -> None:
    db, service, _ = _open(args)
    done = service.import_queue(args.queue, gold=args.gold)
    kind = "gold pairs" if args.gold else "pairs"
    print(f"imported {done.added} {kind} from {args.queue} ({done.skipped} already there, skipped)")
    db.close()


def _export(args: argparse.Namespace) -> None:
    db, service, _ = _open(args)
    path, n = service.export(args.name, args.format, args.overwrite)
    print(f"{n} ratings written to {path}")
    db.close()


def uvicorn_config(app: object, host: str = "127.0.0.1", port: int = 8000,
                   forwarded_allow_ips: str | None = None, **extra: object) -> "uvicorn.Config":
    """The server settings. X-Forwarded-For/-Proto are honoured only from `forwarded_allow_ips`: trusted
    from any client (uvicorn's default trusts loopback), they let a local process pose as any address
    (past the login throttle) or as https."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                          proxy_headers=bool(forwarded_allow_ips), forwarded_allow_ips=forwarded_allow_ips or "",
                          **extra)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tether.raters.web import create_app

    if not (Path(args.project) / SECRET_FILE).exists():
        raise CliError(f"{args.project}: not a rater project (no {SECRET_FILE}); run 'tether raters init' first")
    if not args.public_url and args.host in ("0.0.0.0", "::", ""):
        raise CliError(f"--public-url is required with --host {args.host!r}: invite links must name an address "
                       "people can reach (e.g. --public-url https://rate.example.org)")
    host = f"[{args.host}]" if ":" in args.host else args.host
    public_url = args.public_url or f"http://{host}:{args.port}"
    app = create_app(args.project, args.db, public_url=public_url)
    print(f"serving {args.project} on http://{args.host}:{args.port}/ (invite links under {public_url}; Ctrl-C stops)")
    uvicorn.Server(uvicorn_config(app, args.host, args.port, args.forwarded_allow_ips)).run()
