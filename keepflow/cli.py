"""`keepflow`: validate sequences, run the engine, play the demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from keepflow.settings import get_settings

if TYPE_CHECKING:
    from keepflow.store import Database

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
customers_app = typer.Typer(no_args_is_help=True, help="Customers: erasure on request.")
app.add_typer(customers_app, name="customers")
config_app = typer.Typer(no_args_is_help=True, help="Configuration: what a process would run with.")
app.add_typer(config_app, name="config")
schedules_app = typer.Typer(no_args_is_help=True, help="Temporal Schedules: the inactivity scan and the RFM refresh.")
app.add_typer(schedules_app, name="schedules")
keys_app = typer.Typer(no_args_is_help=True, help="Keys of the Temporal payload codec (KEEPFLOW_PAYLOAD_KEYS).")
app.add_typer(keys_app, name="keys")
users_app = typer.Typer(no_args_is_help=True, help="Who may sign in to the dashboard with a name and password.")
app.add_typer(users_app, name="users")
messages_app = typer.Typer(no_args_is_help=True, help="Messages whose outcome is unknown: list them, settle each.")
app.add_typer(messages_app, name="messages")

SequencesArg = Annotated[Optional[Path], typer.Argument(help="sequences file (default: $KEEPFLOW_SEQUENCES or ./sequences.yaml)")]
TemplatesOpt = Annotated[Optional[Path], typer.Option("--templates", help="templates folder (default: templates/ beside the sequences file)")]


def _observed(process: str, *, dev: bool = False) -> None:
    """Logs in the process' style (keepflow/logs.py), and traces if OTEL_* asks (keepflow/tracing.py)."""
    from keepflow import logs, tracing

    logs.configure(get_settings().log_style(dev))
    tracing.setup(f"keepflow-{process}")


def _refuse_half_configured(settings, process) -> None:
    """Exit with every problem, one line each, before a production process touches anything."""
    from keepflow.language.problems import InvalidSequences
    from keepflow.production import refuse_if_half_configured
    from keepflow.runtime.registry import load_catalog

    try:
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
    except InvalidSequences as invalid:
        print(invalid, file=sys.stderr)
        print("refusing to start: fix the problems above (`keepflow validate` checks again)", file=sys.stderr)
        raise typer.Exit(1) from None
    refuse_if_half_configured(settings, process, catalog)


def _run_sync(call: Callable[[], object]) -> None:
    """`call`, with a busy port ended in one line, as `_run` does."""
    from keepflow.http.serving import CannotListen

    try:
        call()
    except CannotListen as busy:
        print(f"refusing to start: {busy}", file=sys.stderr)
        raise typer.Exit(1) from None


def _run(coroutine) -> None:
    """Run an engine command; an invalid sequences file or a busy port ends it in words, not a traceback."""
    from keepflow.http.serving import CannotListen
    from keepflow.language.problems import InvalidSequences

    try:
        asyncio.run(coroutine)
    except CannotListen as busy:
        print(f"refusing to start: {busy}", file=sys.stderr)
        raise typer.Exit(1) from None
    except BaseExceptionGroup as group:  # a listener of `keepflow dev`, failed inside its task group
        failed = group.subgroup(CannotListen)
        if failed is None:
            raise
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"refusing to start: {first}", file=sys.stderr)
        raise typer.Exit(1) from None
    except InvalidSequences as invalid:
        print(invalid, file=sys.stderr)
        print("refusing to start: fix the problems above (`keepflow validate` checks again)", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def validate(path: SequencesArg = None, templates: TemplatesOpt = None) -> None:
    """Check sequences.yaml and its templates; print every problem as PATH:LINE:COL: message."""
    from keepflow.tools.validate import run_validate

    settings = get_settings()
    raise typer.Exit(run_validate(path or settings.sequences_path, templates or settings.templates_dir))


@app.command()
def schema(output: Annotated[Optional[Path], typer.Option("--output", "-o", help="write here, not to stdout")] = None,
           ) -> None:
    """Print the JSON Schema of sequences.yaml (editors use it to check the file as you type)."""
    from keepflow.language.json_schema import schema_text

    if output is None:
        sys.stdout.write(schema_text())
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(schema_text(), encoding="utf-8")


@app.command()
def dev(
    http_port: Annotated[int, typer.Option(help="port of the webhook endpoints")] = 8000,
    admin_port: Annotated[Optional[int], typer.Option(help="port of the dashboard (default: $KEEPFLOW_ADMIN_PORT or 8001)")] = None,
    temporal_port: Annotated[int, typer.Option(help="gRPC port of the embedded Temporal dev server")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal web UI port (0: no UI)")] = 8233,
    data_dir: Annotated[Optional[Path], typer.Option(help="where the databases live (default: var/)")] = None,
) -> None:
    """Run everything locally: Temporal's dev server (unless TEMPORAL_ADDRESS is set), the worker, the webhooks and the dashboard."""
    from keepflow.tools.dev_stack import run_dev

    _observed("dev", dev=True)
    settings = get_settings()
    if data_dir:
        settings = settings.model_copy(update={"data_dir": data_dir})
    if "workflow_sandbox" not in settings.model_fields_set:
        # Whoever edits workflows/ in development hears at once of a clock or file read there.
        settings = settings.model_copy(update={"workflow_sandbox": True})
    _run(run_dev(settings, temporal_port, ui_port or None, http_port, admin_port))


# Both long-running commands take these: Prometheus' scrape of the process, on a private address.
MetricsPort = Annotated[Optional[int], typer.Option(
    help="serve Prometheus metrics at /metrics on this port (default: none)")]
MetricsHost = Annotated[str, typer.Option(help="address for --metrics-port; keep it private")]


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="address to listen on (default: $KEEPFLOW_HTTP_HOST)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default: $KEEPFLOW_HTTP_PORT or 8000)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes sharing the port, one core each (default 1)")] = 1,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Serve the webhook endpoints against TEMPORAL_ADDRESS (run as many as you like behind a load balancer)."""
    from keepflow.http.app import create_app
    from keepflow import metrics
    from keepflow.http.serving import refuse_ports_in_use, serve_http, serve_processes
    from keepflow.production import webhooks_line
    from keepflow.runtime.shutdown import stop_on_signals

    settings = get_settings()
    _refuse_half_configured(settings, "serve")
    _observed("serve")
    logging.getLogger("keepflow.serve").info(webhooks_line(settings))
    host, port = host or settings.http_host, port or settings.http_port
    if metrics_port is not None:
        _run_sync(lambda: refuse_ports_in_use([(metrics_host, metrics_port, "--metrics-port")]))
    if workers > 1:
        # Each process builds its app from the same environment; dedupe and routing go through the
        # database and Temporal, so an event is stored and routed once whichever process takes it.
        with contextlib.ExitStack() as cleanup:
            if metrics_port is not None:
                # Each process counts into files in a directory of this run's own, and this one, the
                # supervisor, serves their sum: one scrape target however many processes there are.
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = cleanup.enter_context(
                    tempfile.TemporaryDirectory(prefix="keepflow-metrics-"))
                cleanup.callback(metrics.serve(metrics_host, metrics_port, metrics.of_processes()))
            _run_sync(lambda: serve_processes("keepflow.http.app:app_from_environment", host, port, workers,
                                              settings.log_style()))
        return

    async def main() -> None:
        stop_metrics = metrics.serve(metrics_host, metrics_port) if metrics_port is not None else None
        try:
            await serve_http(create_app(settings), host, port, stop_on_signals())
        finally:
            if stop_metrics is not None:
                stop_metrics()

    _run(main())


@app.command()
def dashboard(
    host: Annotated[Optional[str], typer.Option(help="address to listen on (default: $KEEPFLOW_ADMIN_HOST or 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default: $KEEPFLOW_ADMIN_PORT or 8001)")] = None,
) -> None:
    """Serve the dashboard and the API docs, sign-in required (keep it on loopback or behind your proxy)."""
    from keepflow.http.admin import create_admin_app
    from keepflow.http.serving import serve_http
    from keepflow.runtime.shutdown import stop_on_signals

    _observed("dashboard")
    settings = get_settings()
    try:
        admin = create_admin_app(settings)
    except RuntimeError as err:
        print(f"refusing to start: {err}", file=sys.stderr)
        raise typer.Exit(1) from None

    async def main() -> None:
        await serve_http(admin, host or settings.admin_host, port or settings.admin_port, stop_on_signals())

    _run(main())


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="what they sign in with")],
    role: Annotated[str, typer.Option(help="marketer (contact details masked) or admin (whole, each view audited)")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from standard input instead of asking")] = False,
) -> None:
    """Add a dashboard user; the password is asked for twice and stored as an Argon2 hash."""
    from keepflow.store import access

    if role not in access.ROLES:
        raise typer.BadParameter(f"choose one of {', '.join(access.ROLES)}", param_hint="--role")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with _store() as db:
        try:
            access.add_user(db, name, password, role)
        except access.UserError as err:
            print(err, file=sys.stderr)
            raise typer.Exit(1) from None
    print(f"added {name} ({role})")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument()]) -> None:
    """Remove a dashboard user: their open sessions end at their next click."""
    from keepflow.store import access

    with _store() as db:
        try:
            access.remove_user(db, name)
        except access.UserError as err:
            print(err, file=sys.stderr)
            raise typer.Exit(1) from None
    print(f"removed {name}")


@users_app.command("list")
def users_list() -> None:
    """The dashboard's local users and their roles."""
    from keepflow.store import access

    with _store() as db:
        for user in access.list_users(db):
            print(f"{user.name}\t{user.role}\tadded {user.created_at:%Y-%m-%d}")


@app.command()
def audit(
    since: Annotated[str, typer.Option(help="how far back: a duration (30d, 12h) or an ISO date")] = "30d",
    who: Annotated[Optional[str], typer.Option("--who", help="only this user")] = None,
    customer: Annotated[Optional[str], typer.Option("--customer", help="only views of this customer")] = None,
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 100,
) -> None:
    """Who saw which customer's data unmasked on the dashboard, and when."""
    from rich.console import Console
    from rich.table import Table

    from keepflow.insights.report import parse_since
    from keepflow.store import access

    try:
        start = parse_since(since)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--since") from None
    with _store() as db:
        entries = access.audit_entries(db, start, who=who, customer_id=customer, limit=limit)
    table = Table("when (UTC)", "who", "role", "view", "customer", "message", "detail")
    for e in entries:
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.who, e.role, e.view, e.customer_id or "-",
                      str(e.message_id) if e.message_id is not None else "-", e.detail or "")
    Console(width=200).print(table)


@messages_app.command("unknown")
def messages_unknown(
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 500,
) -> None:
    """Messages whose outcome is unknown (a worker stopped during the SendGrid call, say), and how to settle each."""
    from rich.console import Console
    from rich.table import Table

    from keepflow.http.dashboard.masking import mask_contact, mask_text
    from keepflow.sending import unknown_outcomes

    with _store() as db:
        rows = unknown_outcomes.listing(db, limit)
        total = unknown_outcomes.count(db)
    if not rows:
        print("no message has an unknown outcome: nothing to decide")
        return
    # Addresses masked as the dashboard shows them to a marketer: the customer id finds the rest.
    table = Table("id", "sequence", "step", "channel", "template", "customer", "since (UTC)", "error")
    for m in rows:
        table.add_row(str(m.id), m.sequence_id, m.step, m.channel, m.template,
                      f"{m.customer_id or '-'} {mask_contact(m.recipient) or ''}".strip(),
                      f"{m.since:%Y-%m-%d %H:%M:%S}", mask_text(m.error or ""))
    Console(width=200).print(table)
    shown = f" (the newest {len(rows)} shown)" if total > len(rows) else ""
    print(f"{total} message(s) with an unknown outcome need a decision{shown}.\n")
    print(unknown_outcomes.LOOK_FIRST)
    for command, meaning in unknown_outcomes.RESOLVE_STEPS:
        print(f"  {command:<55} {meaning}")
    print(unknown_outcomes.BY_ITSELF)


@messages_app.command("resolve")
def messages_resolve(
    message_id: Annotated[int, typer.Argument(help="the id `keepflow messages unknown` shows")],
    sent: Annotated[bool, typer.Option("--sent", help="SendGrid has it: record it sent")] = False,
    provider_id: Annotated[Optional[str], typer.Option("--provider-id", help="with --sent: its SendGrid message id")] = None,
    resend: Annotated[bool, typer.Option("--resend", help="SendGrid does not have the email: send the stored message once more")] = False,
    dismiss: Annotated[bool, typer.Option("--dismiss", help="leave it: recorded failed, never resent")] = False,
) -> None:
    """Settle one message whose outcome is unknown: only a message still `unknown` changes."""
    from keepflow.sending import unknown_outcomes

    if sent + resend + dismiss != 1:
        raise typer.BadParameter("choose one of --sent, --resend, --dismiss")
    if provider_id and not sent:
        raise typer.BadParameter("only with --sent", param_hint="--provider-id")
    settings = get_settings()
    with _store() as db:
        try:
            if sent:
                message = unknown_outcomes.mark_sent(db, message_id, provider_id)
            elif dismiss:
                message = unknown_outcomes.dismiss(db, message_id)
            else:
                message = unknown_outcomes.resend(db, settings, message_id)
        except unknown_outcomes.CannotResolve as err:
            print(err, file=sys.stderr)
            raise typer.Exit(1) from None
    detail = f" (provider message id {message.provider_message_id})" if message.provider_message_id else ""
    print(f"message {message.id}: {message.status}{detail}" + (f": {message.error}" if message.error else ""))
    if message.status == unknown_outcomes.UNKNOWN:
        raise typer.Exit(1)


@contextlib.contextmanager
def _store() -> Iterator[Database]:
    """The store of DATABASE_URL at the newest schema, for one command."""
    from keepflow.store import Database, upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        yield db
    finally:
        db.dispose()


def _local_settings(must_exist: bool = True):
    """Settings for a command that reads the local stack's store: the running `keepflow dev`'s
    database unless DATABASE_URL is given; a line and exit 1 when there is no store to read
    (unless the command may make it: `deploy` before anything ever ran)."""
    from keepflow.tools.dev_state import locate, no_database_line

    stack = locate(get_settings())
    if must_exist and (missing := no_database_line(stack)):
        print(missing, file=sys.stderr)
        raise typer.Exit(1)
    return stack.settings


@app.command("send-event")
def send_event(
    file: Annotated[Path, typer.Argument(help="an event as JSON (see `keepflow/runtime/events.py` or /docs)")],
    url: Annotated[Optional[str], typer.Option(help="where to post (default: this machine's `keepflow dev`)")] = None,
) -> None:
    """Sign an event with the webhook secret and post it, as a store would."""
    import httpx

    from keepflow.http.signing import sign
    from keepflow.tools.dev_state import locate

    stack = locate(get_settings())
    if stack.stopped and not url:
        print(stack.stopped, file=sys.stderr)
        raise typer.Exit(1)
    settings = stack.settings
    try:
        body = file.read_bytes()
    except OSError as err:
        print(f"cannot read {file}: {err.strerror}", file=sys.stderr)
        raise typer.Exit(1) from None
    target = url or f"http://{settings.http_host}:{settings.http_port}/events"
    try:
        response = httpx.post(target, content=body, headers={"content-type": "application/json",
                                                             **sign(body, stack.secret())})
    except httpx.HTTPError as err:
        hint = "pass --url" if url else "start it with `make run`, or pass --url"
        print(f"no Keepflow answers at {target} ({err}): {hint}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"{response.status_code} {response.reason_phrase}\n{response.text}")
    if response.status_code == 401:
        print(f"refused the signature: export the {stack.secret_from or 'KEEPFLOW_WEBHOOK_SECRET'} "
              "the server runs with", file=sys.stderr)
    raise typer.Exit(0 if response.is_success else 1)


@app.command()
def events(
    unrouted: Annotated[bool, typer.Option("--unrouted", help="only events that reached no sequence, or are not yet routed")] = False,
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 50,
) -> None:
    """List received events: type, customer, when, and how many runs each started or steered."""
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import or_, select

    from keepflow.store import Database, Event, upgrade

    settings = _local_settings()
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    query = select(Event).order_by(Event.received_at.desc()).limit(limit)
    if unrouted:
        query = query.where(or_(Event.routed_at.is_(None), Event.runs == 0))
    table = Table("received", "id", "type", "customer", "order", "runs")
    try:
        with db.session() as session:
            for e in session.scalars(query):
                runs = "not yet routed" if e.routed_at is None else str(e.runs)
                table.add_row(f"{e.received_at:%Y-%m-%d %H:%M:%S}", e.id, e.type, e.customer_id or "-", e.order_id or "-", runs)
    finally:
        db.dispose()  # like the other commands: no pooled connection outlives the command
    Console().print(table)


@app.command()
def worker(
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Run a worker against TEMPORAL_ADDRESS (run more of them to scale out)."""
    from keepflow.http.serving import refuse_ports_in_use
    from worker import run_worker

    settings = get_settings()
    _refuse_half_configured(settings, "worker")
    _observed("worker")
    metrics_at = None
    if metrics_port is not None:
        metrics_at = (metrics_host, metrics_port)
        _run_sync(lambda: refuse_ports_in_use([(metrics_host, metrics_port, "--metrics-port")]))
    _run(run_worker(settings, metrics_at=metrics_at))


@app.command()
def demo(
    locale: Annotated[str, typer.Option(help="the demo customer's language: en, th or zh-Hant")] = "en",
    path: Annotated[Optional[Path], typer.Option(
        "--sequences", help="sequences file (default: $KEEPFLOW_SEQUENCES or ./sequences.yaml)")] = None,
    line: Annotated[bool, typer.Option(
        "--line/--no-line", help="whether the customer has linked the shop's LINE account "
        "(without it, a LINE step goes on its fallback)")] = True,
) -> None:
    """Play one order through the whole post-purchase journey on a time-skipping server, and exit."""
    from keepflow.language.problems import InvalidSequences
    from keepflow.tools.demo import CUSTOMERS, run_demo

    if locale not in CUSTOMERS:
        raise typer.BadParameter(f"choose one of {', '.join(CUSTOMERS)}", param_hint="--locale")
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    code = 1
    try:
        code = asyncio.run(run_demo(path or settings.sequences_path, settings.templates_dir, locale, line))
    except InvalidSequences as invalid:
        print(f"{invalid}\nfix the problems above first (`keepflow validate` checks again)", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    raise typer.Exit(code)


@customers_app.command("forget")
def customers_forget(
    who: Annotated[str, typer.Argument(help="a customer id, an email address, a phone number or a LINE user id")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask first")] = False,
) -> None:
    """Erase a customer (profile, events, messages' personal fields, order lines) and terminate their
    open runs; their opt-outs stay, as a hash of the address."""
    from keepflow.runtime.client import connect
    from keepflow.store import Database, upgrade
    from keepflow.tools.forget import forget, whom

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        ids, addresses = whom(db, who)
        if not ids and not addresses:
            print(f"no customer has the id {who!r}, and it is not an email address or phone number", file=sys.stderr)
            raise typer.Exit(1)
        if not yes:
            typer.confirm(f"erase {len(ids)} customer(s) {', '.join(ids) or '(none stored)'} and every trace of "
                          f"{who!r}? This cannot be undone", abort=True)

        async def main() -> None:
            client = await connect(settings)
            done = await forget(db, client, who)
            erased = done.erased
            print(f"forgot {erased.customers} customer(s) {', '.join(done.customer_ids)}: terminated "
                  f"{len(done.terminated)} open run(s), deleted {erased.events_deleted} event(s), cleared "
                  f"{erased.messages} message(s) and {erased.orders} order(s), kept {erased.suppressions_hashed} "
                  "opt-out(s) as a hash"
                  + (f", deleted {erased.line_friends} LINE friendship(s)" if erased.line_friends else ""))
            print("Temporal keeps these customers' run histories until the namespace's retention period ends "
                  "(see README, Forgetting a customer)")

        _run(main())
    finally:
        db.dispose()


@config_app.command("check")
def config_check() -> None:
    """Print the configuration a process here would run with (secrets masked) and what production would refuse."""
    from keepflow.language.problems import InvalidSequences
    from keepflow.production import effective, problems, providers_line, webhooks_line
    from keepflow.runtime.registry import load_catalog

    settings = get_settings()
    try:
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
    except InvalidSequences as invalid:
        print(f"{invalid}\n(the checks below assume the sequences send email and SMS)\n", file=sys.stderr)
        catalog = None
    rows = effective(settings)
    width = max(len(name) for name, _ in rows)
    for name, shown in rows:
        print(f"{name:<{width}}  {shown}")
    print(f"\n{providers_line(settings)}\n{webhooks_line(settings)}")
    found = {process: problems(settings, process, catalog) for process in ("worker", "serve")}
    if not any(found.values()):
        print("\nready: `keepflow worker` and `keepflow serve` would start")
        return
    for process, lines in found.items():
        if lines:
            print(f"\n`keepflow {process}` would refuse to start:")
            for line in lines:
                print(f"  - {line}")
    raise typer.Exit(1)


@keys_app.command("new")
def keys_new() -> None:
    """Print a fresh payload key entry (id:base64key) for KEEPFLOW_PAYLOAD_KEYS: put it first to rotate."""
    from keepflow.runtime.payload_keys import new_payload_key

    print(new_payload_key())


@schedules_app.command("sync")
def schedules_sync() -> None:
    """Create or update the schedules against TEMPORAL_ADDRESS (workers also do this when they start)."""
    from keepflow.runtime.client import connect
    from keepflow.runtime.registry import load_catalog
    from keepflow.runtime.schedules import sync_schedules

    settings = get_settings()

    async def main() -> None:
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
        client = await connect(settings)
        for line in await sync_schedules(client, settings, catalog):
            print(line)

    _run(main())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of DATABASE_URL (the engine also does this when it starts)."""
    from keepflow.store import upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    print(f"schema up to date: {settings.resolved_database_url}")


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="what it changes, e.g. 'loyalty awards'")],
) -> None:
    """Write the next migration for what the models (activities' tables included) add to the schema."""
    from keepflow.tools.db_revision import new_revision

    path = new_revision(message)
    print(f"wrote {path}: read it before you commit it" if path else "nothing to write: the models match the newest revision")


@app.command()
def report(
    since: Annotated[str, typer.Option(help="how far back: a duration (30d, 12h) or an ISO date")] = "30d",
    sequence: Annotated[Optional[str], typer.Option("--sequence", help="only this sequence")] = None,
    window: Annotated[str, typer.Option(help="an order counts for the last marketing message sent this long before it")] = "5d",
    format: Annotated[str, typer.Option("--format", help="text (tables) or json")] = "text",
) -> None:
    """Per sequence and step: entered, sent, skipped (why), delivered, opened, clicked, converted, revenue; KPIs."""
    from keepflow.insights.report import build_report, parse_since, print_report
    from keepflow.language.durations import parse_duration
    from keepflow.store import Database, upgrade

    if format not in ("text", "json"):
        raise typer.BadParameter("choose text or json", param_hint="--format")
    try:
        start = parse_since(since)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--since") from None
    try:
        attribution_window = parse_duration(window)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--window") from None
    from keepflow.language.lint import read_file

    settings = _local_settings()
    # LINE's quota, where sequences.yaml sets one; a file that cannot be read leaves it out.
    file, _ = read_file(settings.sequences_path)
    rules = file.rules if file is not None else None
    line_quota = rules.line.monthly_quota if rules is not None and rules.line is not None else None
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        result = build_report(db, start, sequence_id=sequence, window=attribution_window, line_quota=line_quota,
                              zone=(rules.timezone if rules is not None else None) or "UTC")
    finally:
        db.dispose()
    if format == "json":
        print(result.model_dump_json(indent=2))
    else:
        print_report(result)


@app.command()
def segments(
    refresh: Annotated[bool, typer.Option("--refresh", help="recompute every customer's scores first (as of now, UTC)")] = False,
) -> None:
    """Print the RFM segments of the whole base: customers and revenue per segment, with their shares."""
    from datetime import datetime, timezone

    from rich.console import Console
    from rich.table import Column, Table

    from keepflow.insights import rfm
    from keepflow.store import Database, upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        if refresh:
            rfm.refresh_all(db, datetime.now(timezone.utc))
        rows = rfm.segment_table(db)
        refreshed = rfm.last_refresh(db)
    finally:
        db.dispose()
    caption = (f"scored {refreshed:%Y-%m-%d %H:%M} UTC; --refresh recomputes" if refreshed
               else "no scores yet: run `keepflow segments --refresh`")
    table = Table("segment", Column("customers", justify="right"), Column("% customers", justify="right"),
                  Column("revenue", justify="right"), Column("% revenue", justify="right"), caption=caption)
    for row in rows:
        table.add_row(row.segment, f"{row.customers:,}", f"{row.share_of_customers:.1%}",
                      f"{row.revenue:,.2f}", f"{row.share_of_revenue:.1%}")
    table.add_section()
    table.add_row("total", f"{sum(r.customers for r in rows):,}", "", f"{sum(r.revenue for r in rows):,.2f}", "")
    Console().print(table)




@app.command()
def simulate(
    sequence: Annotated[str, typer.Argument(help="a sequence id from sequences.yaml")],
    customer: Annotated[Path, typer.Option(help="the customer, as JSON (see examples/customer.json)")],
    events: Annotated[Optional[Path], typer.Option(help="a timeline: `- day 2: order.shipped` per line")] = None,
    order: Annotated[Optional[Path], typer.Option(help="the order, as JSON, for order sequences")] = None,
    start: Annotated[Optional[datetime], typer.Option(help="when the run starts (UTC unless an offset is given); "
                                                             "default now")] = None,
    path: Annotated[Optional[Path], typer.Option("--sequences", help="sequences file")] = None,
    rfm: Annotated[Optional[str], typer.Option(
        help='RFM scores for conditions on customer.rfm, as JSON: \'{"segment": "champions", "level": "vip"}\' '
             "(default: what the store computes from the order)")] = None,
    do: Annotated[Optional[list[str]], typer.Option(
        "--do", metavar="NAME=JSON", help='a do: step\'s result instead of running the activity, checked against what it returns: '
                     'NAME=JSON or NAME=@FILE.json (repeatable; over a `- do:` entry of --events)')] = None,
) -> None:
    """Run a sequence for one customer on the real engine, weeks in seconds, and print what happens."""
    from datetime import timezone

    from keepflow.language.problems import InvalidSequences
    from keepflow.runtime.events import CustomerIn, OrderIn
    from keepflow.runtime.registry import load_catalog
    from keepflow.settings import get_settings
    from keepflow.runtime.registry import discover
    from keepflow.tools import simulate as sim
    from keepflow.tools.sample_results import SampleResultError, checked_results, read_do_options

    settings = get_settings()
    try:
        catalog = load_catalog(path or settings.sequences_path, settings.templates_dir)
        person = sim.read_json_model(customer, CustomerIn, "customer")
        bought = sim.read_json_model(order, OrderIn, "order") if order else None
        timeline = sim.read_timeline(events)
        activities = discover()
        results = {**checked_results(sim.read_results(events), activities, where=f"{events} do:"),
                   **checked_results(read_do_options(do), activities)}
        if start is not None and start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
        lines = asyncio.run(sim.simulate(catalog, sequence, person, bought, timeline, start, sim.read_scores(rfm),
                                         results))
    except (sim.SimulationError, SampleResultError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except InvalidSequences as invalid:
        print(f"{invalid}\nfix the problems above first (`keepflow validate` checks again)", file=sys.stderr)
        raise typer.Exit(1) from None
    for line in sim.format_lines(lines, person.timezone):
        typer.echo(line)


@app.command()
def lint(
    path: SequencesArg = None,
    templates: TemplatesOpt = None,
    customers: Annotated[Optional[int], typer.Option(
        "--customers", min=0, help="customers with a LINE user id, for rules.line.monthly_quota "
                                   "(default: counted in the store, where there is one)")] = None,
) -> None:
    """Look at all sequences together: worst-case messages per customer against the cap and LINE's monthly quota, unsubscribe links, quiet hours, unreachable sequences."""
    from keepflow.language.catalog import default_templates_dir
    from keepflow.language.lint import run_lint

    settings = get_settings()
    sequences = path or settings.sequences_path
    counted = (lambda: customers) if customers is not None else _stored_line_customers
    raise typer.Exit(run_lint(sequences, templates or settings.templates_dir or default_templates_dir(sequences),
                              counted))


def _stored_line_customers() -> int | None:
    """Customers with a LINE user id in the local stack's store; None where there is no store to read."""
    from sqlalchemy.exc import SQLAlchemyError

    from keepflow.insights.line_quota import line_customers
    from keepflow.store import Database
    from keepflow.tools.dev_state import locate, no_database_line

    stack = locate(get_settings())
    if no_database_line(stack):
        return None
    db = Database(stack.settings.resolved_database_url)
    try:
        return line_customers(db)
    except SQLAlchemyError:  # a store from before LINE, or not reachable: lint goes on without it
        return None
    finally:
        db.dispose()


@app.command()
def preview(
    sequence: Annotated[str, typer.Argument(help="a sequence id from sequences.yaml, e.g. winback")],
    customer: Annotated[Path, typer.Option("--customer", help="the customer as JSON (examples/customer.json), or an event holding one")],
    locale: Annotated[Optional[str], typer.Option(help="render in this language instead of the customer's (en, th, zh-Hant)")] = None,
    order: Annotated[Optional[Path], typer.Option("--order", help="the order as JSON (examples/order.json), or an event holding one")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="also write each email as an HTML file into this folder")] = None,
    sequences: Annotated[Optional[Path], typer.Option("--sequences", help="sequences file (default: $KEEPFLOW_SEQUENCES or ./sequences.yaml)")] = None,
    templates: TemplatesOpt = None,
    rfm: Annotated[Optional[str], typer.Option(
        help='RFM scores templates may read (customer.rfm), as JSON: \'{"segment": "champions"}\'')] = None,
    do: Annotated[Optional[list[str]], typer.Option(
        "--do", metavar="NAME=JSON", help='a do: step\'s result, checked against what the activity returns: '
                     'NAME=JSON or NAME=@FILE.json, e.g. create_coupon=\'{"code": "WELCOME10", ...}\' (repeatable)')] = None,
) -> None:
    """Show every message a customer could get from a sequence, on every branch, with its day; nothing is sent."""
    from keepflow.language.problems import InvalidSequences
    from keepflow.runtime.events import CustomerIn, OrderIn
    from keepflow.tools.preview import (
        PreviewError,
        build_preview,
        open_sequence,
        print_preview,
        read_json_part,
        write_html,
    )
    from keepflow.runtime.registry import discover
    from keepflow.tools.sample_results import SampleResultError, checked_results, read_do_options
    from keepflow.tools.simulate import SimulationError, read_scores

    settings = get_settings()
    try:
        catalog, chosen = open_sequence(sequences or settings.sequences_path, templates or settings.templates_dir, sequence)
        who = read_json_part(customer, "customer", CustomerIn)
        bought = read_json_part(order, "order", OrderIn) if order else None
        scores = read_scores(rfm)
        results = checked_results(read_do_options(do), discover())
    except (SimulationError, SampleResultError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    except InvalidSequences as invalid:
        print(f"{invalid}\nfix the problems above first (`keepflow validate` checks again)", file=sys.stderr)
        raise typer.Exit(1) from None
    except PreviewError as err:
        print(err, file=sys.stderr)
        raise typer.Exit(2) from None
    result = build_preview(catalog, chosen, who, bought, locale=locale, scores=scores, results=results)
    print_preview(result)
    if html:
        files = write_html(result, html)
        print(f"wrote {len(files)} email{'s' if len(files) != 1 else ''} to {html}")


@app.command()
def graph(
    sequence: Annotated[str, typer.Argument(help="a sequence id from sequences.yaml, e.g. fulfilment")],
    format: Annotated[str, typer.Option("--format", help="mermaid (text for docs and GitHub) or svg (a picture)")] = "mermaid",
    sequences: Annotated[Optional[Path], typer.Option("--sequences", help="sequences file (default: $KEEPFLOW_SEQUENCES or ./sequences.yaml)")] = None,
    templates: TemplatesOpt = None,
) -> None:
    """Draw a sequence as a flowchart: Mermaid text or an SVG picture, printed to standard output."""
    from keepflow.insights.graph import to_mermaid, to_svg
    from keepflow.language.problems import InvalidSequences
    from keepflow.tools.preview import PreviewError, open_sequence

    if format not in ("mermaid", "svg"):
        raise typer.BadParameter("choose mermaid or svg", param_hint="--format")
    settings = get_settings()
    try:
        _, chosen = open_sequence(sequences or settings.sequences_path, templates or settings.templates_dir, sequence)
    except InvalidSequences as invalid:
        print(f"{invalid}\nfix the problems above first (`keepflow validate` checks again)", file=sys.stderr)
        raise typer.Exit(1) from None
    except PreviewError as err:
        print(err, file=sys.stderr)
        raise typer.Exit(2) from None
    print(to_mermaid(chosen) if format == "mermaid" else to_svg(chosen))


@app.command()
def deploy(
    path: SequencesArg = None,
    check: Annotated[bool, typer.Option("--check", help="check and show the impact, but deploy nothing")] = False,
) -> None:
    """Make sequences.yaml live on the running stack, without a restart: validate, show what changes
    for runs in flight, and keep the version (`keepflow versions` lists them)."""
    from keepflow.tools.deploy import run_deploy

    raise typer.Exit(run_deploy(_local_settings(must_exist=False), path, check))


@app.command()
def versions(
    show: Annotated[Optional[int], typer.Option("--show", help="print this version's diff against the one before")] = None,
) -> None:
    """Every deployed version of sequences.yaml, newest (live) first: hash, when, by what, lines changed."""
    from keepflow.tools.deploy import run_versions

    raise typer.Exit(run_versions(_local_settings(), show))


@app.command()
def impact(
    from_runs_table: Annotated[bool, typer.Option("--from-runs-table", help="take the runs from the database instead of Temporal's run list")] = False,
) -> None:
    """Which runs in flight keep their old definition after an edit of sequences.yaml, per sequence and step."""
    from keepflow.tools.impact import run_impact

    raise typer.Exit(run_impact(_local_settings(must_exist=False), from_runs_table))


if __name__ == "__main__":  # pragma: no cover
    app()
