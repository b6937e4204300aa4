"""Worker memory with many runs asleep: the Keepflow worker's resident memory against a bare worker's.

    python bench/memory.py [--runs 10000] [--checkpoints 0,500,1000,2000,5000] [--start-concurrency 50]
                           [--sandboxed] [--timeout S] [--write-results]

A benchmark script, not a timed test. In a throwaway folder it starts Temporal's dev server
(headless, free port on 127.0.0.1) and, one phase after the other on that server, runs a worker
in a child process of its own (this file with `--child`), so the resident memory (VmRSS) read
from /proc is that worker's alone:

1. Keepflow: the worker from worker.py (`build_worker`: the `sequence` workflow as production runs it, outbox
   providers, its own SQLite store; its workflow cache left at the SDK default) with a sequences
   file of one transactional sequence: send the order_confirmed email, then `wait: 30d`.
2. Bare Temporal: a workflow defined here that runs one no-op activity, then sleeps 30 days, on a
   worker with the same cache size (`max_cached_workflows`, read from the Keepflow worker), the
   same activity threads. Both without Temporal's sandbox, as a production worker runs
   (KEEPFLOW_WORKFLOW_SANDBOX); `--sandboxed` puts both in it, with its default restrictions.

This process starts the runs (N in all, `--start-concurrency` start calls in flight), and at each
checkpoint waits until every run started so far is asleep (the child's SDK metrics count one
activity and two workflow tasks per run, no workflow task in hand, and the last runs started have a
timer in their history), then reads the child's VmRSS and peak (VmHWM) and its SDK metrics: the
number of runs in the workflow cache and the evictions. Runs asleep past the cache bound are
evicted and cost the worker nothing until their timer fires (then they are replayed from history),
so memory should stop growing once the cache is full.

Everything listens on 127.0.0.1 only; every wait is bounded; the children and the dev server (and
with it every run) are stopped and the folder removed, also on error or Ctrl-C. Exit code 0 when
every checkpoint was reached in both phases.
"""

# With `--sandboxed` the bare workflow runs in the SDK's sandbox, which imports this module afresh for
# every run: nothing but what the workflow needs is imported at the top; the rest inside the functions.
from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

SECTION = "## Worker memory with runs asleep (bench/memory.py)"
SEQUENCE_ID = "bench_sleep"
SLEEP = timedelta(days=30)
BARE_WORKFLOW = "bench-bare-sleeper"
BARE_ACTIVITY = "bench-memory-send"
CALL_TIMEOUT = 30.0
SAMPLED_HISTORIES = 20  # the last runs started before a checkpoint, whose histories must show a timer


@activity.defn(name=BARE_ACTIVITY)
def noop_send(step: int) -> int:
    """Synchronous like send_message, on the same number of threads; does nothing."""
    return step


@workflow.defn(name=BARE_WORKFLOW)
class BareSleeper:
    @workflow.run
    async def run(self, sleep_seconds: float) -> None:
        await workflow.execute_activity(BARE_ACTIVITY, 0, start_to_close_timeout=timedelta(seconds=30))
        await workflow.sleep(sleep_seconds)


def _paths():
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent
    root = bench.parent
    for folder in (root, bench):  # worker.py at the repository root; the other scripts beside this file
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return root, bench


# -- the child: one worker, alone in its process -----------------------------------------------

async def child(kind: str, address: str, task_queue: str, data_dir: str, metrics_port: int, max_cached: int,
                threads: int, sandboxed: bool) -> None:
    import asyncio
    import json
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    root, _ = _paths()
    # The SDK's own metrics (workflow cache size, evictions, tasks done), for the parent to read.
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(
        metrics=PrometheusConfig(bind_address=f"127.0.0.1:{metrics_port}"))), error_if_already_set=False)
    if kind == "keepflow":
        from keepflow.runtime.client import connect
        from keepflow.runtime.registry import load_catalog
        from keepflow.settings import Settings
        from keepflow.store import Database, upgrade
        from worker import build_worker

        folder = Path(data_dir)
        settings = Settings(data_dir=folder, sequences_path=folder / "sequences.yaml", templates_dir=root / "templates",
                            email_provider="outbox", sms_provider="outbox", database_url=None, task_queue=task_queue,
                            workflow_sandbox=sandboxed)
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        client = await connect(settings, address=address)
        worker = build_worker(client, settings, db, task_queue=task_queue, catalog=catalog)
    else:
        import memory  # this file under its own name, so the sandbox can import the workflow's module
        from temporalio.client import Client
        from temporalio.worker import UnsandboxedWorkflowRunner, Worker
        from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

        client = await Client.connect(address)
        worker = Worker(client, task_queue=task_queue, workflows=[memory.BareSleeper], activities=[memory.noop_send],
                        activity_executor=ThreadPoolExecutor(threads, thread_name_prefix="bench-activity"),
                        max_concurrent_activities=threads, max_cached_workflows=max_cached,
                        workflow_runner=SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner())
    config = worker.config()
    async with worker:
        sys.stdout.write(json.dumps({"ready": True, "max_cached_workflows": config.get("max_cached_workflows"),
                                     "max_concurrent_activities": config.get("max_concurrent_activities")}) + "\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin


# -- the parent: server, runs, samples ---------------------------------------------------------

def sequences_file(folder, root) -> None:
    """sequences.yaml's brand and rules with one sequence: a transactional email, then a long wait."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    real = yaml.load((root / "sequences.yaml").read_text())
    days = SLEEP.days
    sleeper = {"id": SEQUENCE_ID, "description": "one email, then asleep, for bench/memory.py",
               "category": "transactional", "key": "order.id",
               "steps": [{"send": "email", "template": "order_confirmed"}, {"wait": f"{days}d"}]}
    yaml.default_flow_style = False
    with (folder / "sequences.yaml").open("w") as out:
        yaml.dump({"brand": real["brand"], "rules": real["rules"], "sequences": [sleeper]}, out)


def scrape(url: str) -> dict[str, float]:
    """The child's SDK metrics that tell how far it got: sums over label sets."""
    import urllib.request

    wanted = {
        "cached": ("temporal_sticky_cache_size", None),
        "evictions": ("temporal_sticky_cache_total_forced_eviction", None),
        "activities": ("temporal_activity_execution_latency_count", None),
        "workflow_tasks": ("temporal_request_latency_count", 'operation="RespondWorkflowTaskCompleted"'),
        "workflow_slots_used": ("temporal_worker_task_slots_used", 'worker_type="WorkflowWorker"'),
    }
    out = {name: 0.0 for name in wanted}
    with urllib.request.urlopen(url, timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("#"):
                continue
            for name, (metric, label) in wanted.items():
                if (line.startswith(metric + "{") or line.startswith(metric + " ")) and (label is None or label in line):
                    out[name] += float(line.rsplit(" ", 1)[1])
    return out


async def asleep(client, url: str, ids: list[str], timeout: float) -> dict[str, float]:
    """Until every run in `ids` is asleep; the metrics seen then."""
    import asyncio
    import time

    from temporalio.api.enums.v1 import EventType

    target = len(ids)
    deadline = time.monotonic() + timeout
    while True:
        m = await asyncio.to_thread(scrape, url)
        if m["activities"] >= target and m["workflow_tasks"] >= 2 * target and m["workflow_slots_used"] == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {target} runs asleep within {timeout:.0f} s: {m}")
        await asyncio.sleep(0.5)
    for workflow_id in ids[-SAMPLED_HISTORIES:]:
        while True:
            history = await asyncio.wait_for(client.get_workflow_handle(workflow_id).fetch_history(), CALL_TIMEOUT)
            if any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in history.events):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workflow_id} has no timer after {timeout:.0f} s")
            await asyncio.sleep(0.5)
    return m


async def phase(kind: str, client, server, data_dir, checkpoints: list[int], concurrency: int, timeout: float,
                tag: str, max_cached: int | None, threads: int, sandboxed: bool, make_start) -> dict[str, Any]:
    import asyncio
    import json
    import os
    import sys
    import time

    from ingest import _proc_cpu_seconds, _tree_cpu_seconds
    from scan import _status_kb

    from keepflow.tools.temporal_dev_server import free_port

    task_queue = f"memory-{kind}-{tag}"
    port = free_port()
    log = open(data_dir / f"{kind}-worker.log", "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(__file__), "--child", kind, "--address", server.address, "--task-queue", task_queue,
        "--data-dir", str(data_dir), "--metrics-port", str(port), "--max-cached", str(max_cached or 0),
        "--threads", str(threads), *(["--sandboxed"] if sandboxed else []),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
    url = f"http://127.0.0.1:{port}/metrics"
    samples: list[dict[str, Any]] = []
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            log.flush()
            tail = (data_dir / f"{kind}-worker.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"the {kind} worker exited before it was ready:\n" + "\n".join(tail))
        info = json.loads(line)
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        ids: list[str] = []

        async def start(i: int) -> None:
            async with gate:
                workflow_id, name, arg = make_start(i)
                try:
                    await asyncio.wait_for(client.start_workflow(name, arg, id=workflow_id, task_queue=task_queue),
                                           CALL_TIMEOUT)
                except Exception as err:  # noqa: BLE001 - reported
                    errors.append(f"{type(err).__name__}: {err}")

        cpu_at = {"worker": _proc_cpu_seconds(proc.pid), "server": _tree_cpu_seconds(server.process.pid),
                  "starter": _proc_cpu_seconds(os.getpid())}
        began = time.monotonic()
        done = 0
        for target in checkpoints:
            batch = range(done, target)
            ids += [make_start(i)[0] for i in batch]
            await asyncio.gather(*(start(i) for i in batch))
            if errors:
                raise RuntimeError(f"{len(errors)} starts failed, e.g. {errors[0]}")
            metrics = await asleep(client, url, ids, max(1.0, timeout - (time.monotonic() - began)))
            done = target
            await asyncio.sleep(1.0)  # let the worker settle after its last task
            samples.append({"asleep": target, "at_s": time.monotonic() - began,
                            "rss_kb": _status_kb(proc.pid, "VmRSS"), "hwm_kb": _status_kb(proc.pid, "VmHWM"),
                            **{k: metrics[k] for k in ("cached", "evictions")},
                            "cached_now": (await asyncio.to_thread(scrape, url))["cached"]})
            s = samples[-1]
            print(f"  {kind}: {target:>6,} asleep after {s['at_s']:6.1f} s: RSS {s['rss_kb'] / 1024:.0f} MiB "
                  f"(peak {s['hwm_kb'] / 1024:.0f}), {s['cached_now']:.0f} in the workflow cache, "
                  f"{s['evictions']:.0f} evicted", flush=True)
        cpu = {"worker": _proc_cpu_seconds(proc.pid), "server": _tree_cpu_seconds(server.process.pid),
               "starter": _proc_cpu_seconds(os.getpid())}
        return {"samples": samples, "info": info, "wall_s": time.monotonic() - began,
                "cpu_s": {k: None if None in (cpu[k], cpu_at[k]) else cpu[k] - cpu_at[k] for k in cpu}}
    finally:
        if proc.returncode is None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def bench(runs: int, checkpoints: list[int], concurrency: int, timeout: float, sandboxed: bool) -> dict[str, Any]:
    import shutil
    import tempfile
    import uuid
    from pathlib import Path

    from throughput import context

    from keepflow.runtime.payloads import RunInput
    from keepflow.runtime.registry import load_catalog
    from keepflow.tools.temporal_dev_server import DevServer, free_port
    from worker import ACTIVITY_THREADS

    root, _ = _paths()
    tag = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-memory-"))
    server = DevServer(data_dir / "temporal", port=free_port(), ui_port=None)
    try:
        sequences_file(data_dir, root)
        catalog = load_catalog(data_dir / "sequences.yaml", root / "templates")  # refuse to run on an invalid file
        snapshot = catalog.snapshot(SEQUENCE_ID)
        brand = catalog.file.brand
        brand = brand.model_dump(mode="json") if hasattr(brand, "model_dump") else brand
        server.start()
        from keepflow.settings import Settings
        from keepflow.store import upgrade

        # The starts write their definitions and contexts to the store the worker reads them from.
        starter = Settings(data_dir=data_dir, database_url=None)
        upgrade(starter.resolved_database_url)
        client = await server.wait_ready(starter)
        try:  # runs upsert KeepflowStep once the code has it: register it first, as the worker does
            from keepflow.runtime.search_attributes import ensure_registered
        except ImportError:
            pass
        else:
            await ensure_registered(client, "default")
        print(f"Temporal on {server.address}; {runs:,} runs per phase, checkpoints {checkpoints}, "
              f"{concurrency} start calls in flight", flush=True)

        def keepflow_start(i: int):
            key = f"M{tag}-{i:05d}"
            return (f"{SEQUENCE_ID}/{key}", "sequence",
                    RunInput(snapshot=snapshot, key=key, context=context(i, tag, brand), step_attribute=False))

        def bare_start(i: int):
            return f"{BARE_WORKFLOW}/{tag}-{i:05d}", BARE_WORKFLOW, SLEEP.total_seconds()

        print("phase: Keepflow ...", flush=True)
        kf = await phase("keepflow", client, server, data_dir, checkpoints, concurrency, timeout, tag, None,
                         ACTIVITY_THREADS, sandboxed, keepflow_start)
        cache = kf["info"]["max_cached_workflows"]
        print(f"phase: bare Temporal (max_cached_workflows {cache}) ...", flush=True)
        bare = await phase("bare", client, server, data_dir, checkpoints, concurrency, timeout, tag, cache,
                           ACTIVITY_THREADS, sandboxed, bare_start)
        return {"runs": runs, "checkpoints": checkpoints, "concurrency": concurrency, "sandboxed": sandboxed,
                "keepflow": kf, "bare": bare, "max_cached": cache, "threads": ACTIVITY_THREADS}
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- figures -----------------------------------------------------------------------------------

def mib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f} MiB"


def cpu(p: dict[str, Any]) -> str:
    return " / ".join("-" if v is None else f"{v:.0f}" for v in p["cpu_s"].values())


def report(raw: dict[str, Any]) -> str:
    kf, bare = raw["keepflow"]["samples"], raw["bare"]["samples"]
    out = ["| runs asleep | Keepflow RSS (peak) | Keepflow runs cached / evicted | bare RSS (peak) | "
           "bare runs cached / evicted |", "|---|---|---|---|---|"]
    for k, b in zip(kf, bare):
        out.append(f"| {k['asleep']:,} | {mib(k['rss_kb'])} ({mib(k['hwm_kb'])}) | {k['cached_now']:.0f} / "
                   f"{k['evictions']:.0f} | {mib(b['rss_kb'])} ({mib(b['hwm_kb'])}) | {b['cached_now']:.0f} / "
                   f"{b['evictions']:.0f} |")
    out += ["", f"Workflow cache bound (`max_cached_workflows`): {raw['max_cached']:,} in both; "
            f"{raw['threads']} activity threads in both. Time to start all runs and see them asleep: "
            f"Keepflow {raw['keepflow']['wall_s']:.0f} s, bare {raw['bare']['wall_s']:.0f} s; CPU seconds meanwhile "
            f"(worker / dev server / this process starting runs): Keepflow {cpu(raw['keepflow'])}, "
            f"bare {cpu(raw['bare'])}."]
    return "\n".join(out)


def growth(samples: list[dict[str, Any]], cache: int) -> dict[str, Any]:
    """What a run asleep costs while the cache fills, and once it is full and evicting."""
    full = [x for x in samples if x["asleep"] >= 2 * cache]  # well past the bound: the cache is full and evicting
    below = [x for x in samples if 0 < x["asleep"] <= cache]
    out: dict[str, Any] = {"full": full, "below": below[-1] if below else None, "per_1000_past": None,
                           "filling_per_run": None}
    if len(full) >= 2 and full[-1]["asleep"] > full[0]["asleep"]:
        grew, runs = full[-1]["rss_kb"] - full[0]["rss_kb"], full[-1]["asleep"] - full[0]["asleep"]
        out["per_1000_past"] = grew / runs * 1000
    if below:
        out["filling_per_run"] = (below[-1]["rss_kb"] - samples[0]["rss_kb"]) / below[-1]["asleep"]  # KiB per run
    return out


def interpretation(raw: dict[str, Any]) -> str:
    cache = raw["max_cached"]
    out = []
    for name, p in (("Keepflow", raw["keepflow"]), ("bare", raw["bare"])):
        s = p["samples"]
        g = growth(s, cache)
        full, per, filling = g["full"], g["per_1000_past"], g["filling_per_run"]
        first, last = s[0], s[-1]
        line = (f"{name}: {mib(first['rss_kb'])} with no run, {mib(last['rss_kb'])} with {last['asleep']:,} asleep "
                f"(cache holding {last['cached_now']:.0f})")
        if per is not None:
            grew = full[-1]["rss_kb"] - full[0]["rss_kb"]
            line += (f"; from {full[0]['asleep']:,} to {full[-1]['asleep']:,} asleep it grew {grew / 1024:+.1f} MiB "
                     f"({per:+.0f} KiB per 1,000 runs)")
        if g["below"] is not None:
            b = g["below"]
            line += (f", against {(b['rss_kb'] - first['rss_kb']) / 1024:+.1f} MiB for the first {b['asleep']:,} "
                     f"({filling:.0f} KiB per run while the cache fills)")
            if per is not None and filling > 0:
                line += f": past the bound a run asleep costs {per / 1000 / filling:.1%} of what a cached one does"
        out.append(line + ".")
    out.append("RSS is read from /proc/<worker pid>/status (VmRSS, and VmHWM for the peak) one second after the "
               "runs started so far are all asleep. CPython rarely hands freed memory back to the system, so a "
               "plateau rather than a fall is what a bounded cache looks like.")
    return " ".join(out)


def write_results(raw: dict[str, Any], table: str, note: str) -> None:
    from figures import write_figures
    from ingest import machine, provenance, write_section

    points = ",".join(str(c) for c in raw["checkpoints"])
    command = (f"python bench/memory.py --runs {raw['runs']} --checkpoints {points} "
               f"--start-concurrency {raw['concurrency']}{' --sandboxed' if raw['sandboxed'] else ''} "
               "--write-results")
    section = "\n".join([
        SECTION, "",
        *provenance(command),
        f"- Parameters: {raw['runs']:,} runs per phase on one dev server, Keepflow first; each worker alone in a child "
        f"process. Keepflow: the worker from worker.py (`sequence`, outbox providers, SQLite store), a "
        f"sequence of one transactional email then `wait: {SLEEP.days}d`. Bare: a workflow with one no-op activity "
        f"then a {SLEEP.days}-day sleep, "
        f"same cache bound "
        "and activity threads; "
        f"{'both in the SDK sandbox (default restrictions)' if raw['sandboxed'] else 'both without the sandbox, as production workers run'}.",
        "",
        table, "",
        note, "",
    ])
    write_section(SECTION, section)
    write_figures(figures(raw), command, machine())


def figures(raw: dict[str, Any]) -> dict[str, float | int]:
    """Per worker: RSS with no run and with all --runs asleep, its peak, and MiB per 1,000 runs while the
    cache fills and once it evicts (the plateau the section is about)."""
    out: dict[str, float | int] = {}
    # --sandboxed changes both workers, so its keys say so.
    prefix = "memory.sandboxed" if raw["sandboxed"] else "memory"
    for side, key in (("keepflow", f"{prefix}.keepflow"), ("bare", f"{prefix}.bare")):
        s = raw[side]["samples"]
        g = growth(s, raw["max_cached"])
        if s[0]["asleep"] == 0:
            out[f"{key}.idle_rss_mib"] = round(s[0]["rss_kb"] / 1024, 1)
        out[f"{key}.asleep_rss_mib"] = round(s[-1]["rss_kb"] / 1024, 1)
        out[f"{key}.peak_rss_mib"] = round(max(x["hwm_kb"] for x in s) / 1024, 1)
        if g["filling_per_run"] is not None:
            out[f"{key}.mib_per_1000_runs_cached"] = round(g["filling_per_run"] * 1000 / 1024, 2)
        if g["per_1000_past"] is not None:
            out[f"{key}.mib_per_1000_runs_evicted"] = round(g["per_1000_past"] / 1024, 2)
    return out


def main() -> int:
    import argparse
    import asyncio
    import logging

    _paths()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs put to sleep per phase (default 10,000)")
    parser.add_argument("--checkpoints", default=None,
                        help="comma-separated run counts to measure at (default 0,500,1000,2000,5000 and --runs)")
    parser.add_argument("--start-concurrency", type=int, default=50, help="start_workflow calls in flight (default 50)")
    parser.add_argument("--sandboxed", action="store_true",
                        help="run both workers' workflows in Temporal's sandbox (as tests do; production does not)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a phase may take (default 900)")
    parser.add_argument("--write-results", action="store_true", help="replace this script's section in RESULTS.md and its figures in results.json")
    parser.add_argument("--child", choices=("keepflow", "bare"), help=argparse.SUPPRESS)
    for hidden in ("--address", "--task-queue", "--data-dir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--metrics-port", "--max-cached", "--threads"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.address, args.task_queue, args.data_dir, args.metrics_port, args.max_cached,
                          args.threads, args.sandboxed))
        return 0
    if args.runs < 1 or args.start_concurrency < 1:
        parser.error("--runs and --start-concurrency must be at least 1")
    if args.checkpoints:
        try:
            points = sorted({int(c) for c in args.checkpoints.split(",")} | {args.runs})
        except ValueError:
            parser.error("--checkpoints takes comma-separated whole numbers")
    else:
        points = sorted({c for c in (0, 500, 1000, 2000, 5000) if c < args.runs} | {args.runs})
    if points[0] < 0 or points[-1] > args.runs:
        parser.error("checkpoints must lie within 0..--runs")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw = asyncio.run(bench(args.runs, points, args.start_concurrency, args.timeout, args.sandboxed))
    table, note = report(raw), interpretation(raw)
    print()
    print(table)
    print()
    print(note)
    if args.write_results:
        write_results(raw, table, note)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
