#!/usr/bin/env python3
"""The side-by-side benchmark behind tests/peer/run: the same Alertmanager
webhook stream (tocsin-load --mode alertmanager) against `tocsin dev` and
against alerta-server on PostgreSQL, with CPU per event and a check that
every alert was deduplicated and persisted.

Started by tests/peer/run, which installs what this needs.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# TOCSIN_PEER_TOCSIN runs another build (a profiling one, say).
TOCSIN = os.environ.get("TOCSIN_PEER_TOCSIN") or os.path.join(ROOT, "target", "release", "tocsin")
LOAD = os.path.join(ROOT, "target", "release", "tocsin-load")

# The built-in sample config's Prometheus integration and API key.
TOCSIN_INTEGRATION_KEY = "11111111111111111111111111111111"
TOCSIN_API_KEY = "sk_local_0123456789abcdef"
# Channels notified per transition in the sample config (email, SMS, Slack).
TOCSIN_CHANNELS = 3

ALERTA_USER = "load@tocsin.local"
ALERTA_KEY = "tocsin-peer-benchmark-0123456789abcdef"
ALERTA_WORKERS = 4

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"--- {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def process_tree(root):
    """The pid and every descendant of it."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(roots):
    """user + system CPU of every process under `roots`, their reaped
    children included, in seconds."""
    ticks = 0
    for root in roots:
        for pid in process_tree(root):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime, stime, cutime, cstime: fields 14-17 of stat(5).
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLOCK_TICKS


def http_json(url, headers=None, timeout=10):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(what, check, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def stop(process, sig=signal.SIGTERM):
    if process and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Postgres:
    """A throwaway cluster in `dir`, on a free port, as the postgres user
    when we are root (initdb refuses to run as root)."""

    def __init__(self, pg_bin, dir):
        self.bin, self.dir = pg_bin, dir
        self.data = os.path.join(dir, "pgdata")
        self.port = free_port()
        self.started = False

    def _as_owner(self, argv):
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--"] + argv
        return argv

    def start(self):
        os.makedirs(self.data)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.data, "postgres")
        subprocess.run(
            self._as_owner([f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        subprocess.run(
            self._as_owner(
                [f"{self.bin}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "postgres.log"), "-w", "-o",
                 options, "start"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.started = True
        self.psql("CREATE DATABASE alerta", database="postgres")

    def postmaster_pid(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def version(self):
        return self.psql("SHOW server_version", database="postgres")

    def psql(self, sql, database="alerta"):
        out = subprocess.run(
            [f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-AtX",
             "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def stop(self):
        if self.started:
            subprocess.run(
                self._as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"]),
                stdout=subprocess.DEVNULL,
            )
            self.started = False


class Alerta:
    """alerta-server under gunicorn, mounted at /api as its container image
    serves it."""

    def __init__(self, venv, dir, postgres):
        self.venv, self.dir, self.postgres = venv, dir, postgres
        self.port = free_port()
        self.process = None
        self.env = dict(os.environ)
        conf = os.path.join(dir, "alertad.conf")
        with open(conf, "w") as f:
            f.write(
                f"DATABASE_URL = 'postgres://postgres@127.0.0.1:{postgres.port}/alerta'\n"
                "AUTH_REQUIRED = True\n"
                f"ADMIN_USERS = ['{ALERTA_USER}']\n"
                "SECRET_KEY = 'tocsin-peer-benchmark'\n"
                "LOG_LEVEL = 'WARNING'\n"
            )
        self.env["ALERTA_SVR_CONF_FILE"] = conf
        # gunicorn strips this prefix from the path, as a proxy in front would.
        self.env["SCRIPT_NAME"] = "/api"

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def version(self):
        return subprocess.run(
            [f"{self.venv}/bin/python", "-c", "import importlib.metadata as m; print(m.version('alerta-server'))"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def start(self):
        # Creates the schema, then the key the load sends.
        subprocess.run(
            [f"{self.venv}/bin/alertad", "key", "--username", ALERTA_USER, "--key", ALERTA_KEY,
             "--scope", "write:webhooks", "--scope", "write:alerts", "--scope", "read:alerts"],
            env=self.env, check=True, stdout=subprocess.DEVNULL,
        )
        self.process = subprocess.Popen(
            [f"{self.venv}/bin/gunicorn", "--workers", str(ALERTA_WORKERS), "--bind", f"127.0.0.1:{self.port}",
             "--log-level", "warning", "alerta:create_app()"],
            env=self.env,
            stdout=open(os.path.join(self.dir, "alerta.log"), "w"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until("alerta", self.healthy, 60, 0.2)
        except SystemExit:
            with open(os.path.join(self.dir, "alerta.log")) as f:
                log(f.read()[-3000:])
            raise
        # Every worker imports the app lazily on its first request.
        for _ in range(4 * ALERTA_WORKERS):
            self.healthy()

    def healthy(self):
        with urllib.request.urlopen(f"{self.url()}/api/management/healthcheck", timeout=5) as response:
            return response.status == 200

    def headers(self):
        return [f"X-API-Key: {ALERTA_KEY}"]

    def path(self):
        return "/api/webhooks/prometheus"

    def cpu_roots(self):
        return [self.process.pid, self.postgres.postmaster_pid()]

    def stop(self):
        stop(self.process)


# The sample config's checkout service, alone, with its Prometheus
# integration's rate limit off: the default (120 requests a minute) would
# answer most of the stream with 429. The SMS throttle (on by default: a few
# SMS a number per quarter hour) is off too, so that every transition is
# notified on every channel, as the check after each run counts.
TOCSIN_CONFIG = f"""
api_keys:
  - {{name: peer-benchmark, key: {TOCSIN_API_KEY}, scopes: [incidents:read]}}
services:
  - id: checkout
    name: Checkout
    integrations:
      - {{id: checkout-prometheus, type: prometheus, key: {TOCSIN_INTEGRATION_KEY}, rate_limit_per_minute: 0}}
    notify:
      email: [oncall@example.com]
      sms: ["+15555550123"]
      slack: "#checkout"
      on: [triggered, acknowledged, resolved]
      min_severity: info
settings:
  throttle: {{sms: {{enabled: false}}}}
"""


class Tocsin:
    """`tocsin dev` on a fresh data folder per run, so every run starts from
    an empty store and its CPU counters start at its own start."""

    def __init__(self, dir):
        self.dir = dir
        self.process = None
        self.runs = 0
        self.config = os.path.join(dir, "tocsin.yaml")
        with open(self.config, "w") as f:
            f.write(TOCSIN_CONFIG)
        if subprocess.run([TOCSIN, "validate", "-f", self.config], capture_output=True).returncode != 0:
            # A build from before per-integration rate limits has none to
            # turn off.
            with open(self.config, "w") as f:
                f.write(TOCSIN_CONFIG.replace(", rate_limit_per_minute: 0", ""))
            out = subprocess.run([TOCSIN, "validate", "-f", self.config], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the benchmark's tocsin config is refused: {out.stdout}{out.stderr}")

    def start(self):
        self.runs += 1
        self.data = os.path.join(self.dir, f"tocsin-{self.runs}")
        self.port = free_port()
        self.process = subprocess.Popen(
            [TOCSIN, "dev", "--quiet", "-f", self.config, "--data", self.data, "--listen", f"127.0.0.1:{self.port}"],
            stdout=open(os.path.join(self.dir, f"tocsin-{self.runs}.log"), "w"),
            stderr=subprocess.STDOUT,
        )
        wait_until("tocsin", lambda: urllib.request.urlopen(f"{self.url()}/healthz", timeout=1).status == 200, 30)

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def headers(self):
        return [f"Authorization: Bearer {TOCSIN_INTEGRATION_KEY}"]

    def path(self):
        return "/integrations/prometheus"

    def cpu_roots(self):
        return [self.process.pid]

    def incidents(self, query):
        return http_json(f"{self.url()}/incidents?{query}", {"Authorization": f"Bearer {TOCSIN_API_KEY}"})["incidents"]

    def outbox_lines(self):
        try:
            with open(os.path.join(self.data, "outbox.jsonl"), "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def dead_letters(self):
        out = subprocess.run([TOCSIN, "dlq", "list", "--data", self.data], check=True, capture_output=True, text=True)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def stop(self):
        stop(self.process, signal.SIGINT)


def run_load(target, args, run_name, rate, concurrency):
    argv = [LOAD, "--mode", "alertmanager", "--json", "--url", target.url(), "--path", target.path(),
            "--fingerprints", str(args.fingerprints), "--repeats", str(args.repeats), "--run", run_name,
            "--rate", str(rate), "--concurrency", str(concurrency)]
    for header in target.headers():
        argv += ["--header", header]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.stderr.strip():
        log(out.stderr.strip())
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"tocsin-load printed no report: {out.stdout} {out.stderr}")
    return json.loads(lines[-1])


def tocsin_run(tocsin, args, rate, n):
    """One load against a fresh `tocsin dev`: accepted, then applied (the
    incident store shows every event), then every notification written."""
    events = args.fingerprints * (args.repeats + 1)
    tocsin.start()
    try:
        time.sleep(0.5)
        cpu_before = cpu_seconds(tocsin.cpu_roots())
        report = run_load(tocsin, args, f"tocsin-{n}", rate, args.concurrency)
        if report["ok"] != events:
            raise SystemExit(f"tocsin did not accept every webhook: {report['answers']}")

        # Each alert's resolve is its last event, and the processor follows
        # the queue's order: no open incident left means every event was
        # applied. The full check below makes sure of it.
        def applied():
            if tocsin.incidents("status=open&limit=1"):
                return False
            incidents = tocsin.incidents(f"limit={args.fingerprints}")
            return (len(incidents) == args.fingerprints
                    and all(i["status"] == "resolved" and i["occurrences"] == args.repeats for i in incidents))

        wait_until("tocsin to apply every event", applied, 600, 0.01)
        applied_at = time.time()
        notifications = 2 * args.fingerprints * TOCSIN_CHANNELS
        wait_until("tocsin to send every notification", lambda: tocsin.outbox_lines() >= notifications, 600, 0.05)
        cpu = cpu_seconds(tocsin.cpu_roots()) - cpu_before
        incidents = tocsin.incidents(f"limit={args.fingerprints}")
        dead = tocsin.dead_letters()
        verified = {
            "incidents": len(incidents),
            "resolved": sum(1 for i in incidents if i["status"] == "resolved"),
            "occurrences": sum(i["occurrences"] for i in incidents),
            "notifications": tocsin.outbox_lines(),
            "dead_letters": len(dead),
        }
        ok = (verified["incidents"] == args.fingerprints and verified["resolved"] == args.fingerprints
              and verified["occurrences"] == args.fingerprints * args.repeats
              and verified["notifications"] == notifications and not dead)
        report.update(
            server="tocsin",
            events=events,
            applied_per_s=events / (applied_at - report["started_unix"]),
            cpu_ms_per_event=1000 * cpu / events,
            verified=verified,
            ok=ok and report["ok"] == events,
        )
        return report
    finally:
        tocsin.stop()


def alerta_run(alerta, args, rate, n):
    """One load against alerta: it deduplicates inside the request, so what
    is answered is applied."""
    events = args.fingerprints * (args.repeats + 1)
    run_name = f"alerta-{n}"
    cpu_before = cpu_seconds(alerta.cpu_roots())
    report = run_load(alerta, args, run_name, rate, args.concurrency)
    cpu = cpu_seconds(alerta.cpu_roots()) - cpu_before
    # alerta resets duplicate_count when the severity changes (the resolve
    # sets it to normal), so the repeats show only in the answers. What is
    # left to check: one row per alert, closed, whose history is exactly its
    # creation and its resolve (a firing handled after the resolve would
    # have reopened it).
    row = alerta.postgres.psql(
        "SELECT count(*), count(*) FILTER (WHERE status = 'closed'), "
        "count(*) FILTER (WHERE array_length(history, 1) = 2) FROM alerts WHERE resource LIKE '%s-%%'" % run_name
    )
    count, closed, two_changes = (int(v) for v in row.split("|"))
    verified = {"alerts": count, "closed": closed, "opened_and_closed_once": two_changes}
    ok = count == args.fingerprints and closed == args.fingerprints and two_changes == args.fingerprints
    report.update(
        server="alerta",
        events=events,
        applied_per_s=report["throughput"],
        cpu_ms_per_event=1000 * cpu / events,
        verified=verified,
        ok=ok and report["ok"] == events,
    )
    return report


def describe(rate):
    return "saturation" if rate == 0 else f"{rate}/s"


def print_table(results):
    print()
    print("| server | load | sent | answered | accepted/s | applied/s | p50 | p90 | p99 | max | CPU/event | "
          "load avg | every alert accounted for |")
    print("|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in results:
        answers = ", ".join(f"{k} × {n:,}" for k, n in sorted(r["answers"].items()))
        lat = r["latency_ms"]
        print(f"| {r['server']} | {r['label']} | {r['sent']:,} | {answers} | {r['throughput']:,.0f} | "
              f"{r['applied_per_s']:,.0f} | {lat['p50']:.2f} ms | {lat['p90']:.2f} ms | {lat['p99']:.2f} ms | "
              f"{lat['max']:.2f} ms | {r['cpu_ms_per_event']:.3f} ms | {r['load_before']:.2f} | "
              f"{'yes' if r['ok'] else 'NO'} {json.dumps(r['verified'])} |")


def main():
    # A SIGTERM (timeout, a CI runner) unwinds like Ctrl-C, so the servers
    # and the temporary cluster are stopped and removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-bin", required=True, help="PostgreSQL's bin folder (initdb, pg_ctl, psql)")
    parser.add_argument("--venv", required=True, help="the virtual environment with alerta-server and gunicorn")
    parser.add_argument("--only", choices=["tocsin", "alerta"], help="run one server only")
    parser.add_argument("--fingerprints", type=int, default=1000, help="distinct alerts (default 1000)")
    parser.add_argument("--repeats", type=int, default=10, help="firings per alert before it resolves (default 10)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients of the saturation runs (default 16)")
    parser.add_argument("--tocsin-rates", default="0,500,100", help="0 is saturation (default 0,500,100)")
    parser.add_argument("--alerta-rates", default="0,100", help="0 is saturation (default 0,100)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each load (default 1)")
    parser.add_argument("--json", help="also write every run's report to this file")
    args = parser.parse_args()
    if not 0 < args.fingerprints <= 1000:
        # GET /incidents lists at most 1,000: the check reads them in one page.
        parser.error("--fingerprints must be between 1 and 1000")

    for binary in (TOCSIN, LOAD):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{binary} is missing: cargo build --release -p tocsin -p tocsin-tests")

    dir = tempfile.mkdtemp(prefix="tocsin-peer-")
    os.chmod(dir, 0o755)
    postgres = alerta = tocsin = None
    results, versions = [], {}
    try:
        plan = []
        if args.only in (None, "tocsin"):
            tocsin = Tocsin(dir)
            plan += [("tocsin", int(r)) for r in args.tocsin_rates.split(",") if r]
        if args.only in (None, "alerta"):
            postgres = Postgres(args.pg_bin, os.path.join(dir, "pg"))
            log(f"starting PostgreSQL on port {postgres.port}")
            postgres.start()
            alerta = Alerta(args.venv, dir, postgres)
            log(f"starting alerta-server on port {alerta.port}")
            alerta.start()
            versions = {"alerta-server": alerta.version(), "postgresql": postgres.version()}
            plan += [("alerta", int(r)) for r in args.alerta_rates.split(",") if r]

        n = 0
        for round_ in range(args.rounds):
            for server, rate in plan:
                n += 1
                load = load_average()
                log(f"{server}, {describe(rate)}, round {round_ + 1} (load average {load:.2f})")
                if server == "tocsin":
                    report = tocsin_run(tocsin, args, rate, n)
                else:
                    report = alerta_run(alerta, args, rate, n)
                report.update(label=describe(rate), load_before=load)
                results.append(report)
                log(json.dumps({k: report[k] for k in ("throughput", "applied_per_s", "latency_ms",
                                                        "cpu_ms_per_event", "verified", "ok")}))
    finally:
        if alerta:
            alerta.stop()
        if postgres:
            postgres.stop()
        shutil.rmtree(dir, ignore_errors=True)

    print(f"stream: {args.fingerprints} alerts × ({args.repeats} firing + 1 resolved) = "
          f"{args.fingerprints * (args.repeats + 1):,} webhooks of one alert each; saturation: "
          f"{args.concurrency} clients in closed loop")
    if versions:
        print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) +
              f", gunicorn with {ALERTA_WORKERS} sync workers")
    print_table(results)

    def best(server):
        runs = [r for r in results if r["server"] == server and r["label"] == "saturation" and r["ok"]]
        return max(runs, key=lambda r: r["applied_per_s"]) if runs else None

    t, a = best("tocsin"), best("alerta")
    if t and a:
        print()
        print(f"saturation, best runs: tocsin {t['throughput']:,.0f} accepted/s and {t['applied_per_s']:,.0f} "
              f"applied/s, alerta {a['applied_per_s']:,.0f}/s: {t['applied_per_s'] / a['applied_per_s']:.1f}× "
              f"(applied); CPU per event {a['cpu_ms_per_event'] / t['cpu_ms_per_event']:.1f}× less for tocsin")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "runs": results}, f, indent=2)
    if not all(r["ok"] for r in results):
        raise SystemExit("some runs did not account for every alert (see the last column)")


if __name__ == "__main__":
    main()
