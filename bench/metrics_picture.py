"""The picture of the Grafana dashboard in docs/operations.md, drawn from a real run's scrapes.

    python bench/metrics_picture.py [--out docs/images/operations-dashboard.png]

Grafana does not run where this is made, so the picture is not a screenshot: the panels of
deploy/grafana/keepflow-dashboard.json are drawn with matplotlib where the dashboard places them,
each from its own PromQL, evaluated here over the scrapes of a real run (the few query shapes the
dashboard uses, with a 10 s window for `$__rate_interval`).

In a throwaway folder it starts the real stack in this process: Temporal's dev server (headless,
free port), the fake SendGrid/Twilio server from tests/fakes, the worker from worker.py with the real
provider SDKs aimed at the fake, and the public app on a free port, the real sequences.yaml
compressed by bench/compress.py (a day to a second). The Temporal SDK's metrics are read into this
process' registry as `keepflow worker --metrics-port` reads them. Then it plays a shop's traffic
in phases while it scrapes the registry every second:

1. steady (0-20 s): an `order.created` a second, each order's `order.shipped` 3 s later, now and
   then a request signed with a secret the app does not hold; at 5 s an inactivity scan over 40
   customers last seen 61 days ago, 10 a page; at 10 s Twilio answers three texts with error 21610
   (the recipient replied STOP), which suppresses those numbers;
2. burst (20-30 s): three orders a second;
3. SendGrid outage (30-50 s): the fake answers every mail send 503, sends retry with backoff;
4. recovery (50-65 s): the fake answers again, the retried sends drain;
5. Temporal down (65-80 s): the Temporal server is stopped and started again on the same port and
   state; the app stores each event and answers 503, and the events wait;
6. catch-up (80-95 s): the reconciler routes what waited, orders keep coming;
7. scan stalled (95-115 s): no orders; 40 more customers go quiet and at 100 s a scan starts; once
   its first page is done, another process holds the SQLite file's write lock (a bulk job) until
   the end, so the next page cannot start its runs and the scan stops moving.

Everything listens on 127.0.0.1 only; every wait is bounded; everything started here is stopped
and the folder removed, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for folder in (ROOT, BENCH):  # worker.py and tests/fakes at the repository root; the other scripts beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from compress import compressed  # noqa: E402
from ingest import order_created, settings_for, wait_for_http  # noqa: E402

DASHBOARD = ROOT / "deploy" / "grafana" / "keepflow-dashboard.json"
PICTURE = ROOT / "docs" / "images" / "operations-dashboard.png"
RATE_WINDOW = 10.0  # seconds: `$__rate_interval` at a 1 s scrape, wide enough to smooth one-a-second events
SCRAPE_EVERY = 1.0
# (name, start, end) in seconds from the first scrape; the run ends with the last.
PHASES = [("steady", 0, 20), ("burst", 20, 30), ("SendGrid outage", 30, 50), ("recovery", 50, 65),
          ("Temporal down", 65, 80), ("catch-up", 80, 95), ("scan stalled", 95, 115)]
ORDERS_PER_S = {"steady": 1, "burst": 3, "SendGrid outage": 1, "recovery": 1, "Temporal down": 1, "catch-up": 1,
                "scan stalled": 0}
SHIPPED_AFTER = 3.0
SCANS_AT = (5.0, 100.0)
STOP_REPLIES_AT = 10.0
INACTIVE_CUSTOMERS = 40
SCAN_PAGE = 10

Samples = dict[tuple[str, frozenset], float]


# -- the run -----------------------------------------------------------------------------------

def phase_at(t: float) -> str:
    return next((name for name, start, end in PHASES if start <= t < end), PHASES[-1][0])


def order_events(i: int, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An order's `order.created` and `order.shipped`; each customer a number of its own, so one
    STOP suppresses one customer's texts, not everyone's."""
    created = order_created(i, tag)
    created["customer"]["phone"] = f"+6681{i:07d}"
    shipped = {**created, "id": f"{created['id']}_shipped", "type": "order.shipped",
               "occurred_at": datetime.now(timezone.utc).isoformat(),
               "data": {"carrier": "Kerry Express", "tracking_number": f"KE{i:07d}"}}
    return created, shipped


async def scrape_every(scrapes: list[tuple[float, Samples]], started: float, end: float) -> None:
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    n = 0
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="scrape") as reader:
        while (at := started + n * SCRAPE_EVERY) <= end:
            await asyncio.sleep(max(0.0, at - time.time()))
            # The SDK's part is read over loopback inside the collection: off the event loop, on a
            # thread of its own, as a real scrape is served: the loop's shared threads can all be
            # waiting on the database while the scan stalls.
            text = (await asyncio.get_running_loop().run_in_executor(reader, generate_latest, REGISTRY)).decode()
            scrapes.append((time.time(), {(s.name, frozenset(s.labels.items())): s.value
                                          for family in text_string_to_metric_families(text) for s in family.samples
                                          if s.name.startswith(("keepflow_", "temporal_"))}))
            n += 1


def inactive_customers(db, tag: str, first: int) -> None:
    """INACTIVE_CUSTOMERS customers last seen 61 days ago, numbered from `first`."""
    from keepflow.store import Customer

    gone = datetime.now(timezone.utc) - timedelta(days=61)
    with db.session() as session:
        for n in range(first, first + INACTIVE_CUSTOMERS):
            session.add(Customer(id=f"wb-{tag}-{n}", email=f"wb-{n}.{tag}@example.com", phone=f"+6682{n:07d}",
                                 first_name="Mali", locale="en", timezone="Asia/Bangkok",
                                 consents={"email": True, "sms": n % 4 != 0}, attributes={}, last_seen_at=gone))


def hold_write_lock(database_file: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the SQLite file's write lock for `seconds`, as a bulk job would."""
    from tests.faults.stack import LOCK_HOLDER

    return subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(database_file), str(seconds), str(seconds), "0"])


async def traffic(url: str, secret: str, fake, client, task_queue: str, tag: str, started: float,
                  server, db, database_file: Path) -> dict[str, int]:
    import httpx

    from keepflow.http.signing import sign
    from keepflow.runtime.payloads import ScanInput
    from keepflow.settings import new_secret
    from workflows.inactivity import InactivityScan

    stranger = new_secret()  # a sender whose secret the app does not hold
    answers: dict[str, int] = {}
    pending: set[asyncio.Task] = set()

    async def post(http: httpx.AsyncClient, event: dict[str, Any], key: str = secret) -> None:
        body = json.dumps(event).encode()
        try:
            status = str((await http.post("/events", content=body, headers={
                "content-type": "application/json", **sign(body, key)})).status_code)
        except httpx.HTTPError as err:
            status = type(err).__name__
        answers[status] = answers.get(status, 0) + 1

    async def ship_later(http: httpx.AsyncClient, shipped: dict[str, Any]) -> None:
        await asyncio.sleep(SHIPPED_AFTER)
        await post(http, shipped)

    def spawn(coroutine) -> None:
        task = asyncio.create_task(coroutine)
        pending.add(task)
        task.add_done_callback(pending.discard)

    from prometheus_client import REGISTRY

    def pages_done() -> float:
        return REGISTRY.get_sample_value("keepflow_scan_pages_total") or 0.0

    lock: subprocess.Popen | None = None
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        i, scans, stops, outage, last_end, credit, tick = 0, 0, False, False, PHASES[-1][2], 0.0, 0
        temporal_down = more_customers = False
        pages_before_stall = 0.0
        while (now := time.time() - started) < last_end:
            phase = phase_at(now)
            if phase == "SendGrid outage" and not outage:
                fake.fail_next("sendgrid", 503, times=1_000_000)
                outage = True
            elif phase != "SendGrid outage" and outage:
                fake.reset()  # drops the scripted answers: SendGrid is back
                outage = False
            if phase == "Temporal down" and not temporal_down:
                await asyncio.to_thread(server.stop)
                temporal_down = True
            elif phase == "catch-up" and temporal_down:
                await asyncio.to_thread(server.start)  # same port, same state: clients reconnect by themselves
                temporal_down = False
            if phase == "scan stalled" and not more_customers:
                await asyncio.to_thread(inactive_customers, db, tag, INACTIVE_CUSTOMERS)
                more_customers = True
            if scans == len(SCANS_AT) and lock is None and pages_done() > pages_before_stall:
                lock = hold_write_lock(database_file, last_end - now + 5)
            if not stops and now >= STOP_REPLIES_AT:
                fake.fail_next("twilio", 400, times=3, twilio_code=21610)
                stops = True
            if scans < len(SCANS_AT) and now >= SCANS_AT[scans]:
                pages_before_stall = pages_done()
                await client.start_workflow(InactivityScan.run, ScanInput(page_size=SCAN_PAGE),
                                            id=f"picture-scan-{tag}-{scans}", task_queue=task_queue)
                scans += 1
            credit += ORDERS_PER_S[phase] * 0.1
            while credit >= 1:
                created, shipped = order_events(i, tag)
                spawn(post(http, created))
                spawn(ship_later(http, shipped))
                credit -= 1
                i += 1
            if tick % 40 == 17 and ORDERS_PER_S[phase]:  # a stray request every 4 s or so
                created, _ = order_events(10**6 + tick, tag)
                spawn(post(http, created, stranger))
            tick += 1
            await asyncio.sleep(max(0.0, started + tick * 0.1 - time.time()))
        if pending:
            await asyncio.wait(pending, timeout=30)
    if lock is not None:
        lock.kill()
        lock.wait()
    return answers


async def run() -> list[tuple[float, Samples]]:
    from keepflow.http.app import create_app
    from keepflow.http.serving import serve_http
    from keepflow.runtime.registry import load_catalog
    from keepflow.runtime.telemetry import export_sdk_metrics
    from keepflow.settings import new_secret
    from sqlalchemy.engine import make_url

    from keepflow.store import Database, upgrade
    from keepflow.tools.temporal_dev_server import DevServer, free_port
    from tests.fakes.provider_server import FakeProviders
    from worker import build_worker

    # As `keepflow worker --metrics-port` does, before any client connects: the SDK's metrics in
    # this process' registry, so the SDK's panels come from the same scrapes.
    export_sdk_metrics()
    tag = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-picture-"))
    server = DevServer(data_dir / "temporal", port=free_port(), ui_port=None)
    fake = FakeProviders()
    stop = asyncio.Event()
    db: Database | None = None
    try:
        fake.start()
        server.start()
        # A server of its own: the task queue keeps its usual name, and the SDK's legends read as in production.
        settings = settings_for(data_dir, server.address, fake, "keepflow")
        client = await server.wait_ready(settings)
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        catalog = compressed(load_catalog(settings.sequences_path, settings.templates_dir), 1 / 86400)
        inactive_customers(db, tag, 0)
        secret, port = new_secret(), free_port()
        url = f"http://127.0.0.1:{port}"
        app = create_app(settings, catalog=catalog, db=db, client=client, webhook_secrets=[secret])
        async with build_worker(client, settings, db, task_queue=settings.task_queue, catalog=catalog):
            http = asyncio.create_task(serve_http(app, "127.0.0.1", port, stop))
            try:
                await wait_for_http(url, http)
                print(f"stack up: Temporal {server.address}, app {url}, fake providers {fake.url}; "
                      f"{PHASES[-1][2]} s of traffic: {', '.join(name for name, _, _ in PHASES)} ...", flush=True)
                scrapes: list[tuple[float, Samples]] = []
                started = time.time()
                answers, _ = await asyncio.gather(
                    traffic(url, secret, fake, client, settings.task_queue, tag, started, server, db,
                            Path(make_url(settings.resolved_database_url).database or "")),
                    scrape_every(scrapes, started, started + PHASES[-1][2]))
                print(f"answers: {answers}; messages at the fake: sendgrid {len(fake.accepted('sendgrid'))} "
                      f"(since the outage), twilio {len(fake.accepted('twilio'))}; {len(scrapes)} scrapes", flush=True)
            finally:
                stop.set()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(http, 15)
        return scrapes
    finally:
        if db is not None:
            db.dispose()
        server.stop()
        fake.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- PromQL, the shapes the dashboard uses -----------------------------------------------------

class Query:
    """One expression evaluated at each scrape: {label set: value}, as Prometheus answers an instant query."""

    def __init__(self, scrapes: list[tuple[float, Samples]]) -> None:
        self.scrapes = scrapes

    def at(self, expr: str, i: int) -> dict[frozenset, float]:
        expr = expr.strip()
        if m := re.fullmatch(r"(.+) or vector\(0\)", expr):
            return self.at(m[1], i) or {frozenset(): 0.0}
        if m := re.fullmatch(r"time\(\) - max\((\w+) > 0\)", expr):
            values = [v for v in self.at(m[1], i).values() if v > 0]
            return {frozenset(): self.scrapes[i][0] - max(values)} if values else {}
        if m := re.fullmatch(r"histogram_quantile\(([\d.]+), (.+)\)", expr):
            return quantiles(float(m[1]), self.at(m[2], i))
        if " / " in expr:
            top, bottom = (self.at(part, i) for part in expr.split(" / "))
            return {k: v / bottom[k] for k, v in top.items() if bottom.get(k)}
        if m := re.fullmatch(r"(sum|max)(?: by \(([^)]*)\))? ?\((.+)\)", expr):
            by = [name.strip() for name in (m[2] or "").split(",") if name.strip()]
            out: dict[frozenset, float] = {}
            for labels, value in self.at(m[3], i).items():
                key = frozenset((k, v) for k, v in labels if k in by)
                out[key] = out.get(key, 0.0) + value if m[1] == "sum" else max(out.get(key, value), value)
            return out
        if m := re.fullmatch(r"(rate|increase)\((\w+)(?:\{([^}]*)\})?\[([^\]]+)\]\)", expr):
            fn, name, matchers, window = m.groups()
            now = self.series(name, matchers, i)
            j = self.window_start(i, RATE_WINDOW if window == "$__rate_interval" else math.inf)
            if j == i:
                return {}
            then, seconds = self.series(name, matchers, j), self.scrapes[i][0] - self.scrapes[j][0]
            # A series a scrape does not have yet is a counter at zero (prometheus_client shows a
            # labelled series once it first counts).
            return {k: (v - then.get(k, 0.0)) / (seconds if fn == "rate" else 1.0) for k, v in now.items()}
        if m := re.fullmatch(r"(\w+)(?:\{([^}]*)\})?", expr):
            return self.series(m[1], m[2], i)
        raise ValueError(f"a query shape this script does not evaluate: {expr}")

    def series(self, name: str, matchers: str | None, i: int) -> dict[frozenset, float]:
        wanted = dict(re.findall(r'(\w+)="([^"]*)"', matchers or ""))
        return {labels: value for (sample, labels), value in self.scrapes[i][1].items()
                if sample == name and all(dict(labels).get(k) == v for k, v in wanted.items())}

    def window_start(self, i: int, seconds: float) -> int:
        return next(j for j in range(i + 1) if self.scrapes[i][0] - self.scrapes[j][0] <= seconds + 0.5)


def quantiles(q: float, buckets: dict[frozenset, float]) -> dict[frozenset, float]:
    """histogram_quantile as Prometheus computes it: linear within the bucket the rank falls in."""
    groups: dict[frozenset, list[tuple[float, float]]] = {}
    for labels, count in buckets.items():
        le = dict(labels)["le"]
        groups.setdefault(frozenset((k, v) for k, v in labels if k != "le"), []).append((float(le), count))
    out = {}
    for key, counts in groups.items():
        counts.sort()
        total = counts[-1][1]
        if total <= 0:
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for upper, cumulative in counts:
            if cumulative >= rank:
                out[key] = lower if math.isinf(upper) else lower + (upper - lower) * (rank - below) / max(cumulative - below, 1e-12)
                break
            lower, below = upper, cumulative
    return out


# -- the picture -------------------------------------------------------------------------------

def legend(template: str, labels: frozenset) -> str:
    values = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m[1], ""), template) or "value"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def draw(scrapes: list[tuple[float, Samples]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

    board = json.loads(DASHBOARD.read_text())
    query = Query(scrapes)
    t0 = scrapes[0][0]
    xs = [t - t0 for t, _ in scrapes]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    header = 2.2  # grid rows of room for the title and the phases
    unit_h, width = 0.3, 16.0  # inches per grid row, figure width
    fig = plt.figure(figsize=(width, (rows + header) * unit_h), facecolor="#111217")
    total = rows + header
    fig.text(0.006, 1 - 0.6 / total, f"{board['title']}: deploy/grafana/keepflow-dashboard.json", color="#e0e0e0",
             fontsize=12, weight="bold", va="center")
    fig.text(0.006, 1 - 1.5 / total, "Not a Grafana screenshot: each panel's PromQL over a real run's scrapes, "
             "one a second, rates over 10 s (bench/metrics_picture.py). Phases (s): "
             + ", ".join(f"{name} {start}-{end}" for name, start, end in PHASES), color="#9fa7b3", fontsize=8,
             va="center")
    shades = {"burst": "#e0b400", "SendGrid outage": "#f2495c", "Temporal down": "#b877d9", "scan stalled": "#5794f2"}
    palette = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ff780a", "#96d98d",
               "#ca95e5", "#fade2a", "#ffa6b0"]

    def box(grid: dict[str, int], below: float = 0.15, left: float = 0.0) -> list[float]:
        """Where a panel's plot goes, in figure fractions: `below` grid rows kept free under it (for
        its legend), its title above it, `left` (a figure fraction) for the axis' labels."""
        top, height = (grid["y"] + header + 0.75) / total, (grid["h"] - 0.75 - below) / total
        x = grid["x"] / 24 + 0.004 + left
        return [x, 1 - top - height, grid["w"] / 24 - 0.008 - left, height]

    for panel in board["panels"]:
        grid = panel["gridPos"]
        if panel["type"] == "row":
            fig.text(0.006, 1 - (grid["y"] + header + 0.5) / total, panel["title"], color="#d8d9da", fontsize=10.5,
                     weight="bold", va="center")
            continue
        frame = fig.add_axes(box(grid), facecolor="#181b1f")
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color("#2c3235")
        frame.set_title(panel["title"], loc="left", color="#d8d9da", fontsize=8.5, pad=4)
        defaults = panel["fieldConfig"]["defaults"]
        unit = defaults.get("unit", "short")
        lines: dict[str, list[float]] = {}
        for target in panel["targets"]:
            for i in range(len(scrapes)):
                for labels, value in query.at(target["expr"], i).items():
                    lines.setdefault(legend(target["legendFormat"], labels), [math.nan] * len(scrapes))[i] = value
        if panel["type"] == "stat":
            values = [v for line in lines.values() for v in line if not math.isnan(v)]
            last = next((line[-1] for line in lines.values() if not math.isnan(line[-1])), None)
            steps = defaults["thresholds"]["steps"]
            colour = next((s["color"] for s in reversed(steps) if s["value"] is None or (last or 0) >= s["value"]), "green")
            frame.set_facecolor({"green": "#1a7f3c", "red": "#c4162a"}.get(colour, "#1a7f3c") if last is not None else "#181b1f")
            text = defaults.get("noValue", "no data") if last is None else duration(last) if unit == "s" else f"{last:g}"
            frame.text(0.5, 0.45, text, color="white", fontsize=22, weight="bold", ha="center", va="center",
                       transform=frame.transAxes)
            if values and panel["options"].get("graphMode") == "area":
                spark = frame.inset_axes([0, 0, 1, 0.3])
                for line in lines.values():
                    spark.fill_between(xs, [0 if math.isnan(v) else v for v in line], color="white", alpha=0.18)
                spark.set_xlim(xs[0], xs[-1])
                spark.axis("off")
            continue
        frame.set_position(box(grid, below=2.3 if len(lines) > 6 else 1.8, left=0.024))  # room for the legend and labels
        frame.set_xlim(xs[0], xs[-1])
        frame.yaxis.set_major_locator(MaxNLocator(4))
        frame.tick_params(colors="#9fa7b3", labelsize=6.5, length=2)
        frame.set_xticks(range(0, int(xs[-1]) + 1, 15))
        frame.grid(color="#2c3235", linewidth=0.5)
        for name, start, end in PHASES:
            if name in shades:
                frame.axvspan(start, end, color=shades[name], alpha=0.09, linewidth=0)
        for n, (name, values) in enumerate(sorted(lines.items())):
            frame.plot(xs, values, color=palette[n % len(palette)], linewidth=1.1, label=name)
        # Scaled to the data, as Grafana scales it: a threshold far above stays off the panel.
        top = max((v for line in lines.values() for v in line if not math.isnan(v)), default=0.0)
        frame.set_ylim(0, top * 1.15 if top > 0 else 1)
        threshold = [s["value"] for s in defaults.get("thresholds", {}).get("steps", []) if s["value"] is not None]
        if threshold and defaults["custom"].get("thresholdsStyle") and threshold[0] <= frame.get_ylim()[1]:
            frame.axhline(threshold[0], color="#f2495c", linestyle="--", linewidth=0.8)
        if unit == "percentunit":
            frame.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        else:
            suffix = {"s": " s", "reqps": "/s", "ops": "/s"}.get(unit, "")
            frame.yaxis.set_major_formatter(FuncFormatter(lambda v, _, s=suffix: f"{v:g}{s}"))
        if lines:
            frame.legend(loc="upper left", bbox_to_anchor=(0, -0.1), ncol=3, fontsize=6, frameon=False,
                         labelcolor="#c7d0d9", handlelength=1.2, columnspacing=1.0, borderaxespad=0)
        else:
            frame.text(0.5, 0.5, "No data", color="#9fa7b3", fontsize=9, ha="center", va="center",
                       transform=frame.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor=fig.get_facecolor())
    plt.close(fig)
    _fewer_colours(out)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({out.stat().st_size // 1024} KiB)")


def _fewer_colours(path: Path) -> None:
    """A palette of 256 colours: the picture stays sharp and a fraction of the size."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PICTURE, help="where to write the PNG (default: docs/images/operations-dashboard.png)")
    parser.add_argument("--scrapes", type=Path,
                        help="a JSON file: drawn from, when it exists, instead of a new run; else the new run's scrapes are kept there")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Every send refused in the outage is an activity attempt failed, which the SDK logs with its
    # traceback: the outage is the point here, the panels show it.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    if args.scrapes and args.scrapes.exists():
        scrapes = [(at, {(name, frozenset(labels.items())): value for name, labels, value in samples})
                   for at, samples in json.loads(args.scrapes.read_text())]
    else:
        scrapes = asyncio.run(run())
        if args.scrapes:
            args.scrapes.write_text(json.dumps([(at, [(name, dict(labels), value) for (name, labels), value in samples.items()])
                                                for at, samples in scrapes]))
    draw(scrapes, args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
