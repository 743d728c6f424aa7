"""`rayfin` command line: validate, quota-plan, chargeback, hash-token, up, ledger, replay, demo, status, jobs, explain, logs, watch, audit."""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
from datetime import date, datetime, timezone
from typing import Any

from rayfin.config import ControllerConfig, RayfinConfig, default_config_path, hash_token, load_config
from rayfin.controller import market_clock
from rayfin.controller.chargeback import ledger_usage
from rayfin.controller.ledger import Event, Ledger, open_ledger
from rayfin.controller.ledger_io import export_ledger, import_ledger
from rayfin.demo import run_demo
from rayfin.errors import ConfigError, RayfinError, Unauthorized
from rayfin.market.audit import to_csv, to_jsonl
from rayfin.market.calendar import MarketCalendar
from rayfin.market.chargeback import DEFAULT_RATE_KEY, ChargebackSettings, GroupBy, chargeback
from rayfin.market.chargeback_plot import plot_report
from rayfin.market.plan import FitProblem, check_fits, format_day
from rayfin.policy.model import DeskQuota
from rayfin.sdk import Client, connect, default_url
from rayfin.supervisor import (DEPLOY_KEY_ENV, LOST, Backoff, ChildConnection, Supervisor, connection_command,
                               keep_connected, watch)
from rayfin.tables import colour, job_lines, policing_lines, usage_lines
from rayfin.up import bring_up, controller_with_ledger, with_ledger


def _use_colour(args: argparse.Namespace) -> bool:
    mode = getattr(args, "color", "auto")
    return mode == "always" or (mode == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))


# ------------------------------------------------------------------ commands
def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    problems = quota_plan_problems(cfg)
    for p in problems:
        print(f"{args.file}: quota_plan: [{p.code.value}] {p.text}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.file}: ok ({cfg.cluster.total_gpus} GPUs on {len(cfg.cluster.nodes)} nodes, "
          f"{len(cfg.desks)} desks: {', '.join(cfg.desk_names)})"
          + (f"; quota plan on {cfg.calendar.exchange} fits in every window" if cfg.calendar else ""))
    return 0


def quota_plan_problems(cfg: RayfinConfig) -> tuple[FitProblem, ...]:
    """`check_fits` of the config's quota plan over every window (empty without a plan)."""
    if cfg.quota_plan is None:
        return ()
    base = {d.name: DeskQuota.from_config(d) for d in cfg.desks}
    return check_fits(cfg.quota_plan, base, float(cfg.cluster.total_gpus)).problems


def cmd_quota_plan(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    market = cfg.market
    if market is None:
        raise ConfigError(f"{args.config}: no `calendar:` section, so no quota plan to show; add "
                          "`calendar: {exchange: XNYS}` and a `quota_plan:` (README, Market clock)", path="calendar")
    cal = MarketCalendar.get(market.calendar.exchange)
    try:
        day = date.fromisoformat(args.date) if args.date else datetime.now(cal.tz).date()
    except ValueError:
        raise ConfigError(f"--date: got {args.date!r}; expected YYYY-MM-DD", path="--date") from None
    base = {d.name: DeskQuota.from_config(d) for d in cfg.desks}
    print(format_day(market.quota_plan, base, cal, day))
    for p in quota_plan_problems(cfg):
        print(f"warning: [{p.code.value}] {p.text}", file=sys.stderr)
    return 0


def _when(text: str, flag: str) -> datetime:
    """An ISO date/time (naive = UTC) or epoch seconds."""
    try:
        t = datetime.fromtimestamp(float(text), tz=timezone.utc)
    except ValueError:
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{flag}: got {text!r}; expected an ISO time (2025-11-28T14:30Z) or epoch "
                              "seconds", path=flag) from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def cmd_chargeback(args: argparse.Namespace) -> int:
    node_pool: dict[str, str] = {}
    settings = ChargebackSettings()
    if os.path.exists(args.config):
        cfg = load_config(args.config)
        node_pool = {n.name: n.pool for n in cfg.cluster.nodes}
        settings = cfg.chargeback
    controller = _ledger_controller(args)
    since = _when(args.since, "--since")
    until = _when(args.until, "--until") if args.until else datetime.now(timezone.utc)
    rates: dict[str, float] = {}
    for item in args.rate:
        pool, _, value = item.partition("=")
        try:
            rates[pool] = float(value)
        except ValueError:
            raise ConfigError(f"--rate: got {item!r}; expected POOL=COST_PER_GPU_HOUR", path="--rate") from None
    if not controller.ledger and not os.path.exists(os.path.expanduser(controller.ledger_path)):
        raise ConfigError(f"no ledger at {controller.ledger_path}: pass --ledger PATH_OR_URL or --config of the "
                          "deployment whose ledger to read", path="--ledger")   # and never create an empty one
    ledger = open_ledger(controller)
    try:
        records = ledger_usage(ledger, until=until.timestamp(), node_pool=node_pool)
    finally:
        ledger.close()
    for pool in sorted({r.pool for r in records} - set(rates)):   # --rate, then the config's own, then defaults
        if pool in settings.rates:
            rates[pool] = settings.rates[pool]
        elif args.default_rate is not None or DEFAULT_RATE_KEY in settings.rates:
            rates[pool] = args.default_rate if args.default_rate is not None else settings.rates[DEFAULT_RATE_KEY]
        else:
            raise ConfigError(f"no rate for pool {pool!r}: pass --rate {pool}=COST or --default-rate COST, or add "
                              f"it to the config's chargeback.rates", path="--rate")
    report = chargeback(records, since, until, rates, GroupBy(args.by))
    if args.plot:
        by_desk = report if report.by is GroupBy.DESK else chargeback(records, since, until, rates, GroupBy.DESK)
        print(f"plot: {plot_report(by_desk, args.plot, settings.currency)}", file=sys.stderr)
    if not report.rows:
        print(f"no GPU use in the ledger between {since.isoformat()} and {until.isoformat()}", file=sys.stderr)
        return 0
    print({"table": report.format_table, "csv": report.to_csv, "json": report.to_json}[args.format]())
    return 0


def cmd_hash_token(args: argparse.Namespace) -> int:
    print(hash_token(args.token))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    cfg = with_ledger(load_config(args.config), args.ledger, password_env=args.ledger_password_env,
                      password_file=args.ledger_password_file)
    run = bring_up(cfg, address=args.address, serve=not args.no_serve, dashboard_port=args.dashboard_port,
                   metrics_port=args.metrics_port, serve_port=args.serve_port, gcs_redis=args.gcs_redis)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run.write_state()
        for line in run.endpoint_lines():
            print(line, flush=True)
        print("ready", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        print("shutting down", flush=True)
        run.shutdown()
    return 0


def _ledger_controller(args: argparse.Namespace) -> ControllerConfig:
    if args.ledger:
        return controller_with_ledger(ControllerConfig(), args.ledger, password_env=args.password_env,
                                      password_file=args.password_file)
    controller = load_config(args.config).controller
    if args.password_env or args.password_file:
        target = controller.ledger or controller.ledger_path
        return controller_with_ledger(controller, target, password_env=args.password_env,
                                      password_file=args.password_file)
    return controller


def cmd_ledger(args: argparse.Namespace) -> int:
    controller = _ledger_controller(args)
    where = controller.ledger or controller.ledger_path
    ledger = open_ledger(controller)
    try:
        if args.action == "export":
            snap = export_ledger(ledger, args.file, source=where)
            verb = f"exported from {where} to {args.file}"
        else:
            snap = import_ledger(ledger, args.file)
            verb = f"imported from {args.file} into {where}"
    finally:
        ledger.close()
    print(f"{verb}: {len(snap.jobs)} jobs, {len(snap.events)} events, {len(snap.kv)} kv entries "
          f"(schema version {snap.schema_version})")
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    """Keep the controller of an existing cluster alive (KubeRay: a container beside the head).
    Each connection to the cluster is a child process (`--one-connection`); when the head dies
    and takes it along, a new one connects to the same GCS address (rayfin/supervisor.py)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # `rayfin up` hands over its deploy key; a standalone supervisor (KubeRay) makes its own,
    # one for all its connections.
    deploy_key = os.environ.pop(DEPLOY_KEY_ENV, "") or secrets.token_hex(16)
    if args.one_connection:
        return _supervise_one_connection(args, deploy_key, stop)
    run_once = ChildConnection(connection_command(args.config, args.address, args.interval), deploy_key, stop)
    backoff = Backoff(first_s=args.reconnect_first_s, max_s=args.reconnect_max_s, give_up_s=args.give_up_s)
    return keep_connected(run_once, stop, backoff, address=args.address)


def _supervise_one_connection(args: argparse.Namespace, deploy_key: str, stop: threading.Event) -> int:
    import ray  # lazy: importing Ray takes seconds, and most commands only talk HTTP

    cfg = load_config(args.config)
    try:
        ray.init(address=args.address, namespace=cfg.controller.namespace, log_to_driver=False,
                 logging_level="WARNING")
    except Exception as exc:  # noqa: BLE001 - no cluster there (yet): the parent retries
        print(f"cannot connect to {args.address}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr, flush=True)
        return LOST
    sup = Supervisor(cfg, deploy_key, interval_s=args.interval)
    sup.start_watching()
    print(f"supervising {cfg.controller.namespace}/{cfg.controller.name} at {args.address}", flush=True)
    return watch(sup, stop, args.interval, lambda m: print(m, flush=True))


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.config, serve=not args.no_serve)


def _client(args: argparse.Namespace) -> Client:
    """The same HTTP client as the SDK: the URL from --url, $RAYFIN_URL or the `api:` line of the
    `rayfin up` on this machine; the credential from --token or $RAYFIN_TOKEN."""
    token = args.token or os.environ.get("RAYFIN_TOKEN")
    if not token:
        raise Unauthorized("no credential: pass --token TOKEN or set $RAYFIN_TOKEN (a desk's token, or the "
                           "admin token for every desk)", action=args.cmd)
    return connect(desk=getattr(args, "desk", None), token=token, url=args.url or default_url())


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    table = client.usage()
    table = {client.desk: table} if client.desk else table
    use = _use_colour(args)
    print("\n".join(usage_lines(table, use)))
    pools = client.pools()
    print("\n" + colour(f"{'pool':<10} {'capacity':>8} {'lost':>5} {'in use':>7} {'free':>6} {'outside':>7}", "bold",
                        use))
    for name, p in pools.items():
        lost = f"{p['lost']:>5g}"
        outside = f"{p.get('outside', 0.0):>7g}"
        print(f"{name:<10} {p['capacity']:>8g} {colour(lost, 'red', use) if p['lost'] else lost} "
              f"{p['in_use']:>7g} {p['free']:>6g} {colour(outside, 'red', use) if p.get('outside') else outside}")
    print("\n".join(policing_lines(client.policing(), use)))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    print("\n".join(job_lines(client.jobs(), _use_colour(args))))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    client = _client(args)
    info = client.explain(args.job)
    job = info["job"]
    print(f"job {job['job_id']} of desk {job['desk']}: {job['state']} ({job['gpus']:g} GPUs)")
    print(f"  now: {job['reason']}")
    for line in deadline_lines(job):
        print(line)
    if info["decision"]:
        d = info["decision"]
        print(f"  last decision: {d['verdict']}: " + "; ".join(d["reasons"]))
        if d["victims"]:
            print(f"  reclaiming from: {', '.join(d['victims'])}")
    ranks = (job.get("info") or {}).get("ranks") or []
    if ranks:
        print(f"  workers: {len(ranks)} (ranks in topology order)")
        for r in ranks:
            print(f"    rank {r['rank']:>3}  {r['island']:<10} CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']:<8} "
                  f"pid {r['pid']}")
    for e in info["events"]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['kind']:<20} {e['reason']}")
    return 0


def deadline_lines(job: dict[str, Any]) -> list[str]:
    """`rayfin explain`'s deadline line: the deadline, the ETA and whether it is at risk (UTC)."""
    if job.get("deadline") is None:
        return []
    def utc(t: float) -> str:
        return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    eta = "no ETA" if job.get("eta") is None else f"ETA {utc(job['eta'])}"
    status = (job.get("deadline_status") or "on_track").replace("_", " ")
    esc = "; slack ran out: scheduled as critical" if job.get("escalated") else ""
    return [f"  deadline: {utc(job['deadline'])}, {eta} ({status}{esc})"]


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a job's output; with --follow, keep printing new lines until the job ends."""
    client = _client(args)
    job = client.job(args.job)
    seen = 0
    while True:
        lines = job.logs(rank=args.rank)
        fresh = lines[seen:] if args.follow or seen else (lines[-args.tail:] if args.tail else lines)
        for ln in fresh:
            print(f"[rank {ln.rank}] {ln.text}" if args.rank is None else ln.text, flush=True)
        seen = len(lines)
        if not args.follow or job.status().done:
            if args.follow:   # what arrived between the last read and the end
                for ln in job.logs(rank=args.rank)[seen:]:
                    print(f"[rank {ln.rank}] {ln.text}" if args.rank is None else ln.text, flush=True)
            return 0
        time.sleep(args.interval)


def cmd_watch(args: argparse.Namespace) -> int:
    client = _client(args)
    use = _use_colour(args)
    try:
        for i in range(args.count or 10**9):
            table = client.usage()
            table = {client.desk: table} if client.desk else table
            jobs = [j for j in client.jobs() if not j.done]
            out = [time.strftime("%H:%M:%S")] + usage_lines(table, use) + [""] + job_lines(jobs, use)
            if use:
                sys.stdout.write("\x1b[2J\x1b[H")
            print("\n".join(out), flush=True)
            if args.count and i + 1 >= args.count:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def _open_existing_ledger(args: argparse.Namespace) -> Ledger:
    controller = _ledger_controller(args)
    if not controller.ledger and not os.path.exists(os.path.expanduser(controller.ledger_path)):
        raise ConfigError(f"no ledger at {controller.ledger_path}: pass --ledger PATH_OR_URL or --config of the "
                          "deployment whose ledger to read", path="--ledger")   # and never create an empty one
    return open_ledger(controller)


def _market_events(args: argparse.Namespace) -> list[Event]:
    since = _when(args.since, "--since").timestamp() if args.since else None
    until = _when(args.until, "--until").timestamp() if args.until else None
    ledger = _open_existing_ledger(args)
    try:
        return ledger.events(since=since, until=until, kinds=[market_clock.WINDOW_EVENT, market_clock.SNAPSHOT_EVENT],
                             limit=10**9)
    finally:
        ledger.close()


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-run the recorded snapshots through the scheduler; exit 1 when any decision differs."""
    rep = market_clock.replay_events(_market_events(args))
    for m in rep.mismatches:
        print(f"mismatch seq {m.seq} {m.subject}: {m.code.value}: recorded {m.recorded}, replayed {m.replayed}")
    print(f"replayed {rep.checked} decisions: {len(rep.mismatches)} differ", file=sys.stderr)
    return 0 if rep.ok else 1


def cmd_audit(args: argparse.Namespace) -> int:
    if args.export:
        records = market_clock.audit_records(_market_events(args))
        sys.stdout.write(to_jsonl(records) if args.export == "jsonl" else to_csv(records))
        return 0
    client = _client(args)
    since = time.time() - args.since_s if args.since_s else None
    for e in client.audit(since, None, desk=args.desk, limit=args.limit):
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['ts']))} {e['desk'] or '-':<9} "
              f"{e['job_id'] or '-':<22} {e['kind']:<20} {e['reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayfin", description="GPU resource manager for trading desks, on Ray.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a config file without starting anything")
    v.add_argument("file")
    v.set_defaults(fn=cmd_validate)
    qp = sub.add_parser("quota-plan", help="print a day's market windows and each desk's quotas in them (offline)")
    qp.add_argument("--config", default=str(default_config_path()))
    qp.add_argument("--date", help="YYYY-MM-DD in the exchange's zone (default: today there)")
    qp.set_defaults(fn=cmd_quota_plan)

    cb = sub.add_parser("chargeback", help="GPU-hours per desk, job or model from a ledger, offline")
    cb.add_argument("--config", default=str(default_config_path()),
                    help="config: its ledger (unless --ledger), its node pools and its `chargeback.rates`")
    cb.add_argument("--ledger", help="a SQLite file path or a postgresql:// URL (instead of the config's)")
    cb.add_argument("--password-env", help="environment variable holding the PostgreSQL password")
    cb.add_argument("--password-file", help="file holding the PostgreSQL password")
    cb.add_argument("--since", required=True, help="ISO time (naive = UTC) or epoch seconds")
    cb.add_argument("--until", help="ISO time or epoch seconds (default: now)")
    cb.add_argument("--by", choices=[g.value for g in GroupBy], default="desk")
    cb.add_argument("--format", choices=["table", "csv", "json"], default="table")
    cb.add_argument("--rate", action="append", default=[], metavar="POOL=COST",
                    help="cost per GPU-hour of a pool (repeatable)")
    cb.add_argument("--default-rate", type=float, default=None,
                    help="cost per GPU-hour of a pool with no --rate and no rate of its own in the config's "
                         "`chargeback.rates` (default: the config's `default`, else 1.0)")
    cb.add_argument("--plot", metavar="FILE.png", help="also draw GPU-hours per desk (batch / serving) and "
                    "borrowed / lent to FILE (matplotlib)")
    cb.set_defaults(fn=cmd_chargeback)

    h = sub.add_parser("hash-token", help="print the sha256 to put in a desk's credential_sha256")
    h.add_argument("token")
    h.set_defaults(fn=cmd_hash_token)
    u = sub.add_parser("up", help="start (or attach to) a Ray cluster, the controller and Serve; Ctrl-C stops")
    u.add_argument("--config", default=str(default_config_path()))
    u.add_argument("--address", help="attach to this existing Ray cluster instead of starting a local one")
    u.add_argument("--ledger", help="ledger: a SQLite file path or a postgresql://USER@HOST:PORT/DB URL "
                   "(overrides the config's controller.ledger / ledger_path)")
    u.add_argument("--ledger-password-env", help="environment variable holding the PostgreSQL password")
    u.add_argument("--ledger-password-file", help="file holding the PostgreSQL password")
    u.add_argument("--gcs-redis", metavar="HOST:PORT",
                   help="keep Ray's GCS state in this Redis (GCS fault tolerance; default $RAY_REDIS_ADDRESS)")
    u.add_argument("--no-serve", action="store_true")
    u.add_argument("--dashboard-port", type=int)
    u.add_argument("--metrics-port", type=int)
    u.add_argument("--serve-port", type=int)
    u.set_defaults(fn=cmd_up)
    led = sub.add_parser("ledger", help="export or import a ledger snapshot (SQLite <-> PostgreSQL, backups)")
    led.add_argument("action", choices=["export", "import"],
                     help="export: write a consistent snapshot of jobs, events, kv to FILE; "
                     "import: load FILE into an empty ledger")
    led.add_argument("file", help="snapshot file (JSON Lines)")
    led.add_argument("--config", default=str(default_config_path()),
                     help="take the ledger from this config's controller section")
    led.add_argument("--ledger", help="a SQLite file path or a postgresql:// URL (instead of the config's)")
    led.add_argument("--password-env", help="environment variable holding the PostgreSQL password")
    led.add_argument("--password-file", help="file holding the PostgreSQL password")
    led.set_defaults(fn=cmd_ledger)
    rp = sub.add_parser("replay", help="re-run recorded decisions' snapshots through the policy, offline from "
                        "the ledger, and report any that come out differently")
    _ledger_args(rp, since_required=True)
    rp.set_defaults(fn=cmd_replay)
    sv = sub.add_parser("supervise", help="keep the controller of a running cluster alive (KubeRay head sidecar)")
    sv.add_argument("--config", default=str(default_config_path()))
    sv.add_argument("--address", default="auto")
    sv.add_argument("--interval", type=float, default=1.0)
    sv.add_argument("--reconnect-first-s", type=float, default=1.0,
                    help="first wait before reconnecting after the connection ends (doubles each retry)")
    sv.add_argument("--reconnect-max-s", type=float, default=30.0, help="longest wait between reconnections")
    sv.add_argument("--give-up-s", type=float, default=600.0,
                    help="exit when no connection lasted 30 s for this long")
    sv.add_argument("--one-connection", action="store_true", help=argparse.SUPPRESS)
    sv.set_defaults(fn=cmd_supervise)
    d = sub.add_parser("demo", help="bring up the embedded default, run a mixed workload, shut down")
    d.add_argument("--config", default=str(default_config_path()))
    d.add_argument("--no-serve", action="store_true")
    d.set_defaults(fn=cmd_demo)
    for name, fn, hlp in (("status", cmd_status, "desks table"), ("jobs", cmd_jobs, "jobs and their state"),
                          ("explain", cmd_explain, "why a job waits, runs where, or was preempted"),
                          ("logs", cmd_logs, "a job's output, every rank's or one rank's"),
                          ("watch", cmd_watch, "live view"), ("audit", cmd_audit, "audit log")):
        c = sub.add_parser(name, help=hlp)
        c.add_argument("--url", help="the rayfin API (default $RAYFIN_URL, else the `api:` URL of `rayfin up`)")
        c.add_argument("--token", help="desk or admin token (default $RAYFIN_TOKEN)")
        c.add_argument("--color", choices=["auto", "always", "never"], default="auto")
        if name in ("status", "jobs", "watch", "audit"):
            c.add_argument("--desk")
        if name in ("explain", "logs"):
            c.add_argument("job")
        if name == "logs":
            c.add_argument("--rank", type=int, help="one rank's output (default: every rank, prefixed)")
            c.add_argument("--tail", type=int, default=0, help="only the last N lines")
            c.add_argument("--follow", action="store_true", help="keep printing new output until the job ends")
            c.add_argument("--interval", type=float, default=1.0)
        if name == "watch":
            c.add_argument("--interval", type=float, default=1.0)
            c.add_argument("--count", type=int, default=0, help="stop after N refreshes (0: until Ctrl-C)")
        if name == "audit":
            c.add_argument("--since-s", type=float, default=0)
            c.add_argument("--limit", type=int, default=200)
            c.add_argument("--export", choices=["jsonl", "csv"],
                           help="offline, from the ledger: every recorded decision (reason code, quota window, "
                           "snapshot hash) and window switch")
            _ledger_args(c, since_required=False)
        c.set_defaults(fn=fn)
    return p


def _ledger_args(c: argparse.ArgumentParser, since_required: bool) -> None:
    c.add_argument("--config", default=str(default_config_path()), help="take the ledger from this config")
    c.add_argument("--ledger", help="a SQLite file path or a postgresql:// URL (instead of the config's)")
    c.add_argument("--password-env", help="environment variable holding the PostgreSQL password")
    c.add_argument("--password-file", help="file holding the PostgreSQL password")
    c.add_argument("--since", required=since_required, help="ISO time (naive = UTC) or epoch seconds")
    c.add_argument("--until", help="ISO time or epoch seconds (default: now)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except RayfinError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        if isinstance(exc, Unauthorized) and "--token" not in str(exc):
            print("to fix: pass --token TOKEN or set $RAYFIN_TOKEN", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
