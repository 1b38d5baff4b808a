"""The ``stowage`` command: serve the function app locally, manage keys and poison messages, verify audit logs."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared.apikeys import DOMAINS, SCOPES, ApiKeyInfo, ApiKeyService
from shared.commands import PoisonQueue, envelope_json_schema
from shared.config import Settings, apply_local_settings
from shared.errors import StowageError
from shared.request_context import Actor, RequestContext, acting_as
from shared.stores import Stores

console = Console()
DEV_TENANT = "dev"
DEV_KEY_FILE = "dev-api-key"


def _stores() -> Stores:
    stores = Stores.from_settings(Settings.from_env())
    stores.ensure()
    return stores


def ensure_dev_key(stores: Stores) -> tuple[str, bool]:
    """The dev tenant's key for the local backend, made on first start; (key, made_now)."""
    key_file = stores.settings.data_dir / DEV_KEY_FILE
    if key_file.is_file():
        return key_file.read_text().strip(), False
    service = ApiKeyService(stores)
    with acting_as(CLI_CONTEXT):
        made, key = service.create(DEV_TENANT, label="made by stowage serve on first start",
                                   scopes=SCOPES)
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:  # 0600 from the start: the key is never readable by others, not even for an instant
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made the dev key meanwhile: use theirs, drop ours
        with acting_as(CLI_CONTEXT):
            service.revoke(made.key_id)
        return key_file.read_text().strip(), False
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key, True


def default_workers() -> int:
    """HTTP worker processes when ``--workers`` is not given: one per CPU."""
    return os.cpu_count() or 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve HTTP with ``--workers`` uvicorn processes on one listening socket, and run the queue pollers
    and timers in exactly one process: the only one with one worker, else this supervising process,
    which serves no HTTP itself. SIGINT or SIGTERM stops every process."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from cli.host import APP_ENVIRONMENT, LocalHost

    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    sys.path.insert(0, str(Path.cwd()))  # also the workers' path: spawned processes inherit sys.path
    module_name, _, attribute = args.app.partition(":")
    function_app = importlib.import_module(module_name)
    app = getattr(function_app, attribute or "app")
    os.environ[APP_ENVIRONMENT] = f"{module_name}:{attribute or 'app'}"  # what the workers serve
    context = function_app.context
    port = args.port or int(os.environ.get("PORT", "7071"))
    if context.settings.backend == "local":
        key, made = ensure_dev_key(context.stores)
        where = context.settings.data_dir / DEV_KEY_FILE
        console.print(f"[bold]{'Created' if made else 'Using'} dev tenant '{DEV_TENANT}' key[/bold] (kept in {where}):")
        console.print(f"  {key}", highlight=False, soft_wrap=True)
    host = LocalHost(app.get_functions(), context.stores.backend, Path(args.host_json))
    if args.no_timers:
        host.timers.clear()
    if not args.http_only:
        host.start()
        for trigger in host.queues:
            console.print(f"queue trigger [cyan]{trigger.name}[/cyan] polls '{trigger.queue_name}'")
        for timer in host.timers:
            console.print(f"timer trigger [cyan]{timer.name}[/cyan] on '{timer.schedule}'")
    console.print(f"Stowage on http://{args.host}:{port} (backend: {context.settings.backend}, "
                  f"{args.workers} HTTP worker process{'es' if args.workers > 1 else ''}); docs at /docs")
    sys.stdout.flush()
    config = uvicorn.Config("cli.host:served_app", factory=True, host=args.host, port=port, workers=args.workers,
                            http=args.http, loop=args.loop, access_log=args.access_log,
                            log_level=args.log_level, lifespan="on")
    try:
        if args.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            uvicorn.Server(config).run()
    finally:
        host.stop()
        context.close()
    return 0


def _listed(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated option values, as one list (None when the option was not given)."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _key_json(info: ApiKeyInfo) -> dict[str, object]:
    return {"key_id": info.key_id, "tenant": info.tenant, "label": info.label, "scopes": list(info.scopes),
            "domains": list(info.domains) if info.domains is not None else None, "actor": info.actor,
            "actor_type": info.actor_type, "actor_id": info.actor_id,
            "roles": list(info.roles), "created_at": info.created_at, "revoked_at": info.revoked_at}


#: Who key changes made from the command line are attributed to.
CLI_CONTEXT = RequestContext(actor=Actor("system", "cli"), source="cli")


def cmd_keys_create(args: argparse.Namespace) -> int:
    scopes = _listed(args.scope) or ["read", "write"]
    with acting_as(CLI_CONTEXT):
        info, key = ApiKeyService(_stores()).create(args.tenant, label=args.label, scopes=scopes,
                                                    domains=_listed(args.domain), actor_name=args.actor,
                                                    actor_type=args.actor_type, actor_id=args.actor_id,
                                                    roles=_listed(args.role) or ())
    if args.json:
        print(json.dumps({**_key_json(info), "api_key": key}))
    else:
        where = ", ".join(info.domains) if info.domains is not None else "every domain"
        console.print(f"API key for tenant '{info.tenant}' (id {info.key_id}), scopes {', '.join(info.scopes)} "
                      f"in {where}; it is shown only now:", highlight=False)
        print(key)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with acting_as(CLI_CONTEXT):
        info = ApiKeyService(_stores()).revoke(args.key_id)
    console.print(f"revoked key {info.key_id} of tenant '{info.tenant}' at {info.revoked_at}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    infos = ApiKeyService(_stores()).list(args.tenant)
    if args.json:
        print(json.dumps([_key_json(info) for info in infos], indent=2))
        return 0
    table = Table("key id", "tenant", "label", "scopes", "domains", "actor", "roles", "created", "revoked")
    for info in infos:
        table.add_row(info.key_id, info.tenant, info.label, ",".join(info.scopes),
                      ",".join(info.domains) if info.domains is not None else "all", info.actor or "",
                      ",".join(info.roles), info.created_at, info.revoked_at or "")
    console.print(table)
    return 0


def cmd_poison_list(args: argparse.Namespace) -> int:
    entries = PoisonQueue(_stores()).list(args.limit)
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return 0
    table = Table("message id", "reason", "attempts", "poisoned at", "message")
    for entry in entries:
        # Text, not markup: a message or reason may hold anything, '[' included.
        table.add_row(Text(entry.message_id), Text(entry.reason), str(entry.dequeue_count), Text(entry.poisoned_at),
                      Text(entry.body[:80] if entry.replayable else f"(raw) {entry.body[:74]}"))
    console.print(table)
    console.print(f"{len(entries)} message(s)")
    return 0


def cmd_poison_replay(args: argparse.Namespace) -> int:
    """Exit 0 when everything asked for was moved; 1 when a given id was not found or had to be skipped."""
    report = PoisonQueue(_stores()).replay(set(args.id) if args.id else None)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        console.print(f"moved {len(report.moved)} message(s) back to the commands queue")
        for entry in report.skipped:
            console.print(Text(f"skipped {entry.message_id}: {entry.reason}"))
        for message_id in report.not_found:
            console.print(Text(f"not in the poison queue: {message_id}"))
    return 1 if args.id and (report.skipped or report.not_found) else 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Recompute a tenant's audit log from its tiles and bundles; exit 0 when it verifies, 1 otherwise."""
    from shared.domains.audit import AuditService
    from shared.storage.tlog import NoteVerifier

    trusted = Path(args.trusted_checkpoint).read_text(encoding="utf-8") if args.trusted_checkpoint else None
    verifiers = [NoteVerifier.from_vkey(vkey) for vkey in args.vkey] if args.vkey else None
    service = AuditService(_stores())
    report = service.verify(args.tenant, trusted=trusted, verifiers=verifiers)
    if args.json:
        print(json.dumps({"ok": report.ok, **dataclasses.asdict(report)}, indent=2))
    else:
        for problem in report.problems:
            console.print(f"[red]FAIL[/red] {problem.kind}: {problem.key}: {problem.detail}", highlight=False)
        if report.ok:
            against = " and extends the trusted checkpoint" if trusted else ""
            if report.anchored is not None:
                against += (f", extends all {report.anchored} anchored checkpoints (newest: size "
                            f"{report.anchored_size})")
            console.print(f"[green]OK[/green] audit log of tenant '{args.tenant}': {report.size} entries, root "
                          f"{report.root}, signature valid{against}", highlight=False)
        else:
            console.print(f"[red]FAILED[/red] audit log of tenant '{args.tenant}': {len(report.problems)} "
                          "problem(s); do not trust it", highlight=False)
    if report.ok and args.save_checkpoint and report.checkpoint:
        Path(args.save_checkpoint).write_text(report.checkpoint, encoding="utf-8")
    return 0 if report.ok else 1


def cmd_audit_vkey(args: argparse.Namespace) -> int:
    """Print the verifier key of the audit signing key (public), for `audit verify --vkey`."""
    from shared.domains.audit import AuditService

    print(AuditService(_stores()).verifier().vkey)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(envelope_json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stowage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the function app locally: HTTP, queue triggers and timers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: $PORT, else 7071")
    serve.add_argument("--host-json", default="host.json")
    serve.add_argument("--app", default="function_app:app",
                       help="module:attribute of the FunctionApp (the module must also define `context`)")
    serve.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                       help="HTTP worker processes on one socket (default: the CPU count, here %(default)s); "
                            "queue pollers and timers run once, in the supervising process")
    serve.add_argument("--http-only", "--no-workers", dest="http_only", action="store_true",
                       help="no queue pollers or timers (--no-workers is the old name)")
    serve.add_argument("--no-timers", action="store_true", help="no timer triggers (queue pollers still run)")
    serve.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                       help="uvicorn's HTTP parser (auto: httptools when installed)")
    serve.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                       help="the event loop (auto: uvloop when installed)")
    serve.add_argument("--access-log", action="store_true", help="log every request (off: it costs CPU per request)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=cmd_serve)

    keys = sub.add_parser("keys", help="tenant API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key for a tenant and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--label", default="")
    create.add_argument("--scope", "--scopes", dest="scope", action="append", metavar="SCOPE",
                        help=f"what the key may do: {', '.join(SCOPES)} (repeatable or comma-separated; "
                             "default: read,write)")
    create.add_argument("--domain", "--domains", dest="domain", action="append", metavar="DOMAIN",
                        help=f"limit the key to these domains: {', '.join(DOMAINS)} (repeatable or "
                             "comma-separated; default: every domain)")
    create.add_argument("--actor-name", "--actor", dest="actor", metavar="NAME",
                        help="the name of who the key acts for (a person or an agent), recorded by the audit log")
    create.add_argument("--actor-type", choices=("user", "agent"), default=None,
                        help="whether the key acts for a person (user) or a program (agent; the default)")
    create.add_argument("--actor-id", metavar="ID",
                        help="the actor's own id (default: the key id), so that a person's successive keys "
                             "are one actor in the audit log")
    create.add_argument("--role", "--roles", dest="role", action="append", metavar="ROLE",
                        help="a role of the actor (repeatable or comma-separated)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=cmd_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=cmd_keys_revoke)
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_keys_list)

    poison = sub.add_parser("poison", help="the commands poison queue").add_subparsers(dest="poison_command",
                                                                                        required=True)
    plist = poison.add_parser("list", help="messages that could not be applied, with their reasons")
    plist.add_argument("--limit", type=int, default=None, help="show at most this many (default: all)")
    plist.add_argument("--json", action="store_true")
    plist.set_defaults(run=cmd_poison_list)
    replay = poison.add_parser("replay", help="move poison messages back to the commands queue "
                                              "(undecodable ones stay, and are reported)")
    replay.add_argument("--id", action="append", help="only this message id (repeatable)")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(run=cmd_poison_replay)

    audit = sub.add_parser("audit", help="the tenants' audit logs").add_subparsers(dest="audit_command",
                                                                                    required=True)
    verify = audit.add_parser("verify", help="recompute a tenant's audit log from its tiles: every entry hash, "
                                             "the checkpoint signature, consistency with a trusted checkpoint "
                                             "and, when STOWAGE_AUDIT_ANCHOR is set, with every anchored one")
    verify.add_argument("--tenant", required=True)
    verify.add_argument("--trusted-checkpoint", metavar="FILE",
                        help="a checkpoint saved earlier (e.g. with --save-checkpoint): the log must extend it")
    verify.add_argument("--save-checkpoint", metavar="FILE",
                        help="write the verified current checkpoint here, to pass as --trusted-checkpoint later")
    verify.add_argument("--vkey", action="append", metavar="VKEY",
                        help="trust signatures of this verifier key (name+id+key; repeatable) instead of the "
                             "key the configured storage or setting holds")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_audit_verify)
    vkey = audit.add_parser("vkey", help="print the audit checkpoints' verifier key (public) for --vkey")
    vkey.set_defaults(run=cmd_audit_vkey)

    schema = sub.add_parser("command-schema", help="print the JSON Schema of queue command envelopes")
    schema.set_defaults(run=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_local_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.run(args)
        return code
    except StowageError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
