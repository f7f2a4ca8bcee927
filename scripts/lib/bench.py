#!/usr/bin/env python3
"""The benchmark suite behind `scripts/bench` (issue 12). Standard library only.

`scripts/bench` parses the options, installs what is missing, builds (or
takes --bin), starts a durable throwaway PostgreSQL cluster and calls this
file with the environment below. This file loads the data, runs every
variant on a fresh copy of the same template database, measures it, and
prints and writes the markdown tables.

Environment (set by scripts/bench):
  PG_BIN, PGPORT            the cluster (127.0.0.1, user postgres, trust)
  BENCH_BIN                 the retentiond binary
  BENCH_AUDIT_GEN           examples/audit_gen (audit section only)
  BENCH_WORK                a scratch directory (removed by scripts/bench)
  BENCH_ROWS, BENCH_OBJECTS, BENCH_AZ_OBJECTS, BENCH_AUDIT, BENCH_AUDIT_APPEND
  BENCH_MEMORY_FILES, BENCH_MEMORY_VERSIONS   sizes of the memory section
  BENCH_ONLY                comma-separated sections
  BENCH_STORES              comma-separated blob stores: fs,s3,az
  BENCH_OUT                 the markdown file to write
  BENCH_COMMAND             the command line, for the header
  RETENTIOND_MOTO, RETENTIOND_AZURITE   the emulators (blob section)

What it expects of retentiond (all optional but `affected`):
  * `run --format json` prints {"rules": [{"affected": N, ...}]} on stdout;
    a rule on a partitioned table may add "partitions_dropped", either
    {"partition": rows, ...} or [{"partition": "...", "rows": N}, ...]
    (its rows are in `affected`); only its length is shown.
  * With RETENTIOND_LOG=retentiond=debug and --log-format json, one JSON
    object per stderr line; events whose message is "Batch committed." or
    "Partition dropped." with a numeric field `ms` (that transaction's
    duration; top level or under "fields") give the longest transaction.
    Without them the column reads "n/a".
  * `check -c` refuses a config whose rule has a key it does not know
    (`parallelism`): the parallelism-2 row then reads "n/a (not in this build)".
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ENV = os.environ
PG_BIN = ENV["PG_BIN"]
PGPORT = ENV["PGPORT"]
BIN = ENV["BENCH_BIN"]
WORK = ENV["BENCH_WORK"]
ROWS = int(ENV.get("BENCH_ROWS", "5000000"))
OBJECTS = int(ENV.get("BENCH_OBJECTS", "100000"))
AZ_OBJECTS = int(ENV.get("BENCH_AZ_OBJECTS", str(min(OBJECTS, 10000))))
AUDIT = int(ENV.get("BENCH_AUDIT", "1000000"))
AUDIT_APPEND = int(ENV.get("BENCH_AUDIT_APPEND", "5000"))
MEMORY_FILES = int(ENV.get("BENCH_MEMORY_FILES", "1000000"))
MEMORY_VERSIONS = int(ENV.get("BENCH_MEMORY_VERSIONS", "100000"))
# Concurrent writers of the group-commit append row.
AUDIT_WRITERS = 8
# Rules of the `retentiond run` of small rules (audit section).
SMALL_RULES = int(ENV.get("BENCH_SMALL_RULES", "500"))
ONLY = [s for s in ENV.get("BENCH_ONLY", "delete,mask,partition,plan,blob,memory,audit").split(",") if s]
STORES = [s for s in ENV.get("BENCH_STORES", "fs,s3,az").split(",") if s]
OUT = ENV.get("BENCH_OUT", "BENCHMARKS.md")
BATCH = 5000
KEEP_DAYS = 30
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# The expression retentiond uses for inet /24 (IPv6 /48) masking.
MASK_EXPR = ("set_masklen(network(set_masklen(client_ip, LEAST(masklen(client_ip), "
             "CASE family(client_ip) WHEN 4 THEN 24 ELSE 48 END)))::inet, masklen(client_ip))")
CUTOFF_SQL = f"now() - interval '{KEEP_DAYS} days'"
DASH = "–"

failures = []


def info(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def banner(msg):
    print(f"\n=== {msg} ===", flush=True)


# --- PostgreSQL -----------------------------------------------------------------


def psql(db, sql, quiet=True, check=True):
    """Run SQL (a script, may hold psql meta-commands) in database db."""
    cmd = [f"{PG_BIN}/psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", PGPORT,
           "-U", "postgres", "-d", db, "-At"]
    if quiet:
        cmd.append("-q")
    p = subprocess.run(cmd, input=sql, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"psql -d {db} failed ({p.returncode}):\n{sql[:2000]}\n{p.stderr}")
    return p


def scalar(db, sql):
    return psql(db, sql).stdout.strip()


def wal_lsn():
    return scalar("postgres", "SELECT pg_current_wal_lsn()")


def wal_since(lsn):
    return int(float(scalar("postgres", f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')")))


def fresh_db(name, template):
    psql("postgres", f"DROP DATABASE IF EXISTS {name}")
    psql("postgres", f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
    psql(name, "CHECKPOINT")


def drop_db(name):
    psql("postgres", f"DROP DATABASE IF EXISTS {name}", check=False)


def db_url(db):
    return f"postgres://postgres@127.0.0.1:{PGPORT}/{db}"


def timed_sql(db, sql):
    """Run sql with \\timing; return (wall seconds, longest statement ms, stdout+stderr)."""
    t0 = time.monotonic()
    p = psql(db, "\\timing on\n" + sql, quiet=False)
    wall = time.monotonic() - t0
    text = p.stdout + p.stderr
    times = [float(m) for m in re.findall(r"^Time: ([0-9.]+) ms", text, re.M)]
    return wall, (max(times) if times else None), text


def count(db, table="events", where=None):
    w = f" WHERE {where}" if where else ""
    return int(scalar(db, f"SELECT count(*) FROM {table}{w}"))


# --- processes --------------------------------------------------------------------


class Proc:
    """A finished command measured by GNU time."""

    def __init__(self, cmd, env=None, cwd=None):
        tfile = os.path.join(WORK, "time.txt")
        full = ["/usr/bin/time", "-f", "%M %U %S", "-o", tfile] + cmd
        e = dict(ENV)
        e.update(env or {})
        t0 = time.monotonic()
        p = subprocess.run(full, capture_output=True, text=True, env=e, cwd=cwd)
        self.seconds = time.monotonic() - t0
        self.code = p.returncode
        self.stdout, self.stderr = p.stdout, p.stderr
        self.rss_kib = self.user = self.sys = None
        try:
            with open(tfile) as f:
                last = [ln for ln in f.read().splitlines() if ln.strip()][-1].split()
            self.rss_kib, self.user, self.sys = int(last[0]), float(last[1]), float(last[2])
        except (OSError, IndexError, ValueError):
            pass

    def error(self):
        lines = [ln for ln in (self.stderr + self.stdout).splitlines() if ln.strip()]
        msgs = []
        for ln in lines:
            try:
                o = json.loads(ln)
                if isinstance(o, dict) and o.get("level") in ("ERROR", "WARN"):
                    msgs.append(str(o.get("message", ln)))
                continue
            except ValueError:
                msgs.append(ln)
        return (msgs[-1] if msgs else f"exit {self.code}")[:200]


# retentiond's debug events that each time one transaction in a field `ms`.
TXN_EVENTS = ("Batch committed.", "Partition dropped.")


def batch_ms(stderr):
    """The longest transaction in ms of TXN_EVENTS, from JSON log lines; None if none."""
    best = None
    for ln in stderr.splitlines():
        ln = ln.strip()
        if not ln.startswith("{"):
            continue
        try:
            o = json.loads(ln)
        except ValueError:
            continue
        if not isinstance(o, dict):
            continue
        fields = o.get("fields") if isinstance(o.get("fields"), dict) else {}
        msg = o.get("message", fields.get("message"))
        if msg not in TXN_EVENTS:
            continue
        ms = o.get("ms", fields.get("ms"))
        try:
            ms = float(ms)
        except (TypeError, ValueError):
            continue
        best = ms if best is None else max(best, ms)
    return best


def retentiond(args, env=None):
    e = {"RETENTIOND_LOG": "retentiond=debug", "AWS_ACCESS_KEY_ID": "test",
         "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    e.update(env or {})
    return Proc([BIN] + args + ["--log-format", "json"], env=e)


def rule_report(proc):
    try:
        return json.loads(proc.stdout)["rules"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


# --- results ----------------------------------------------------------------------


class Row:
    def __init__(self, variant, rows=None, seconds=None, longest_ms=None, wal=None, rss_kib=None,
                 cpu_us=None, note="", baseline=False, text=None, ratio=True):
        self.variant, self.rows, self.seconds, self.ratio = variant, rows, seconds, ratio
        self.longest_ms, self.wal, self.rss_kib, self.cpu_us = longest_ms, wal, rss_kib, cpu_us
        self.note, self.baseline, self.text = note, baseline, text


class Section:
    def __init__(self, key, title, rows_header="rows changed", cpu=False, rate=None):
        self.key, self.title, self.rows_header, self.cpu, self.rate = key, title, rows_header, cpu, rate
        self.rows, self.notes = [], []

    def add(self, row):
        self.rows.append(row)
        info(f"{self.title}: {row.variant}: " + (row.text or
             f"rows {row.rows}, {fmt_s(row.seconds)} s, longest txn {fmt_ms(row.longest_ms)}, "
             f"WAL {fmt_bytes(row.wal)}, RSS {fmt_rss(row.rss_kib)}"))
        return row

    def markdown(self):
        base = next((r for r in self.rows if r.baseline and r.seconds), None)
        head = ["variant", self.rows_header, "seconds"]
        head += [self.rate] if self.rate else ["vs baseline"]
        head += ["longest txn (ms)", "WAL", "peak RSS"]
        if self.cpu:
            head.append("client CPU / object")
        out = [f"### {self.title}", "", "| " + " | ".join(head) + " |",
               "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for r in self.rows:
            if r.text is not None:
                cells = [r.variant, r.text] + [DASH] * (len(head) - 2)
            else:
                if self.rate:
                    rel = f"{r.rows / r.seconds:,.0f}" if r.rows and r.seconds else DASH
                elif base and r.seconds and r.ratio:
                    rel = f"{base.seconds / r.seconds:.2f}×"
                else:
                    rel = DASH
                cells = [r.variant + (" (baseline)" if r.baseline and not self.rate else ""),
                         f"{r.rows:,}" if isinstance(r.rows, int) else str(r.rows or DASH),
                         fmt_s(r.seconds), rel, fmt_ms(r.longest_ms), fmt_bytes(r.wal),
                         fmt_rss(r.rss_kib)]
                if self.cpu:
                    cells.append(f"{r.cpu_us:,.0f} µs" if r.cpu_us is not None else DASH)
            if r.note:
                cells[0] += f" {r.note}"
            out.append("| " + " | ".join(cells) + " |")
        if self.notes:
            out.append("")
            out.append("\n\n".join(self.notes))
        return "\n".join(out) + "\n"


def fmt_s(s):
    if s is None:
        return DASH
    return f"{s:.3f}" if s < 1 else f"{s:.2f}"


def fmt_ms(ms):
    if ms is None:
        return DASH
    if isinstance(ms, str):
        return ms
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def fmt_bytes(b):
    if b is None:
        return DASH
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b} B"


def fmt_rss(kib):
    return DASH if kib is None else f"{kib / 1024:.1f} MiB"


def cpu_us(proc, objects):
    if proc.user is None or not objects:
        return None
    return (proc.user + proc.sys) / objects * 1e6


sections = []


def section(*args, **kw):
    s = Section(*args, **kw)
    sections.append(s)
    return s


# --- configs ----------------------------------------------------------------------


def keygen():
    keys = os.path.join(WORK, "keys")
    if not os.path.exists(os.path.join(keys, "signing.pem")):
        subprocess.run([BIN, "keygen", "--out", keys], check=True, capture_output=True)
    return keys


def config(name, audit_db, stores, rules):
    keys = keygen()
    text = (f'version = 1\n[audit]\nstore = "app"\nsigning_key = "{keys}/signing.pem"\n'
            f'[stores.app]\ntype = "postgres"\nurl = "{db_url(audit_db)}"\n{stores}\n{rules}\n')
    path = os.path.join(WORK, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def delete_rule(parallelism=None, table="events", action="delete", extra=""):
    r = (f'[[rules]]\nname = "events-{KEEP_DAYS}d"\nstore = "app"\ntable = "{table}"\n'
         f'age = "created_at"\nkeep = "{KEEP_DAYS}d"\naction = "{action}"\n{extra}'
         f'batch_size = {BATCH}\nmax_fraction = 1.0\n')
    if parallelism is not None:
        r += f"parallelism = {parallelism}\n"
    return r


MASK_COLUMNS = 'columns = { client_ip = "ip_prefix" }\n'
MASK_RULE = delete_rule(action="mask", extra=MASK_COLUMNS)


_parallel_ok = None


def parallelism_supported():
    global _parallel_ok
    if _parallel_ok is None:
        cfg = config("probe_parallel", "postgres", "", delete_rule(parallelism=2))
        p = subprocess.run([BIN, "check", "-c", cfg], capture_output=True, text=True)
        _parallel_ok = p.returncode == 0
        if not _parallel_ok:
            info(f"`parallelism` refused by this build: {(p.stderr or p.stdout).strip()[:300]}")
    return _parallel_ok


# --- data ---------------------------------------------------------------------------

ANCHOR = None  # the load's "now": every template holds the same rows


def rows_sql(order):
    return (f"SELECT c, ('10.' || (i % 250) || '.' || ((i / 250) % 250) || '.' || (i % 199 + 1))::inet, "
            f"repeat('p', 100) FROM (SELECT i, timestamptz '{ANCHOR}' - interval '100 days' + "
            f"(i::float8 / {ROWS}) * interval '100 days' AS c FROM generate_series(1, {ROWS}) i) AS g "
            f"ORDER BY {order}")


def migrate(db):
    cfg = config(f"migrate_{db}", db, "", delete_rule())
    p = subprocess.run([BIN, "migrate", "-c", cfg], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"retentiond migrate on {db} failed:\n{p.stderr}")


_templates = set()


def template(kind):
    """Create template database tpl_<kind> once: seq, rand, part."""
    name = f"tpl_{kind}"
    if name in _templates:
        return name
    t0 = time.monotonic()
    psql("postgres", f"DROP DATABASE IF EXISTS {name}")
    psql("postgres", f"CREATE DATABASE {name}")
    if kind in ("seq", "rand"):
        psql(name, f"""
CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, client_ip inet, payload text);
INSERT INTO events (created_at, client_ip, payload) {rows_sql('c' if kind == 'seq' else 'random()')};
CREATE INDEX ON events (created_at);
VACUUM ANALYZE events;
""")
    else:
        part_template(name)
    migrate(name)
    psql(name, "CHECKPOINT")
    _templates.add(name)
    info(f"template {name}: {ROWS} rows loaded in {time.monotonic() - t0:.1f} s")
    return name


PARTMAN = None  # pg_partman's version when the extension is available


def part_template(name):
    global PARTMAN
    avail = scalar("postgres", "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_partman'")
    psql(name, "CREATE TABLE events (id bigserial, created_at timestamptz NOT NULL, client_ip inet, payload text, "
               "PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);")
    start = f"date_trunc('day', timestamptz '{ANCHOR}' - interval '100 days')"
    if avail:
        PARTMAN = avail
        psql(name, f"""
CREATE SCHEMA partman;
CREATE EXTENSION pg_partman SCHEMA partman;
SELECT partman.create_parent(p_parent_table := 'public.events', p_control := 'created_at',
    p_type := 'native', p_interval := '1 day', p_premake := 4, p_jobmon := false,
    p_start_partition := ({start})::text);
UPDATE partman.part_config SET retention = '{KEEP_DAYS} days', retention_keep_table = false,
    retention_keep_index = false WHERE parent_table = 'public.events';
""")
    else:
        warn = "pg_partman is not installed: daily partitions made by hand, the pg_partman row is skipped"
        info(warn)
        psql(name, f"""
DO $$
DECLARE d timestamptz := {start};
BEGIN
  WHILE d < timestamptz '{ANCHOR}' + interval '5 days' LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                   'events_p' || to_char(d, 'YYYY_MM_DD'), d, d + interval '1 day');
    d := d + interval '1 day';
  END LOOP;
END $$;
CREATE TABLE events_default PARTITION OF events DEFAULT;
""")
    psql(name, f"""
CREATE INDEX ON events (created_at);
INSERT INTO events (created_at, client_ip, payload) {rows_sql('c')};
VACUUM ANALYZE events;
""")


# --- PostgreSQL variants -------------------------------------------------------------


def run_retentiond_variant(sec, label, db, rules, baseline_rows=None, keep_db=False, prepared=False):
    """Time `retentiond run` on a fresh copy (or, prepared, on db as it is)."""
    if not prepared:
        fresh_db(db, sec.template)
    cfg = config(db, db, "", rules)
    lsn = wal_lsn()
    p = retentiond(["run", "-c", cfg, "--format", "json"])
    wal = wal_since(lsn)
    rep = rule_report(p)
    if p.code != 0 or rep is None:
        failures.append(f"{sec.title}: {label}: {p.error()}")
        row = sec.add(Row(label, text=f"failed: {p.error()}"))
    else:
        ms = batch_ms(p.stderr)
        affected = rep.get("affected")
        if ms is None:
            ms = DASH if affected == 0 else "n/a"
        row = sec.add(Row(label, rows=affected, seconds=p.seconds, longest_ms=ms, wal=wal,
                          rss_kib=p.rss_kib))
        dropped = rep.get("partitions_dropped")
        if isinstance(dropped, (list, dict)) and dropped:
            # A list of {"partition", "rows"} or an object partition -> rows.
            row.note = f"({len(dropped)} partitions dropped)"
    if not keep_db:
        drop_db(db)
    return row


def run_sql_variant(sec, label, db, sql, rows_fn=None, baseline=False, notice=None):
    """Time one psql script on a fresh copy. rows_fn(db, before, out) gives the rows changed."""
    fresh_db(db, sec.template)
    before = count(db)
    lsn = wal_lsn()
    wall, longest, out = timed_sql(db, sql)
    wal = wal_since(lsn)
    if notice:
        m = re.search(notice + r" rows=(\d+) max_ms=([0-9.]+)", out)
        if m:
            longest = float(m.group(2))
    rows = rows_fn(db, before, out) if rows_fn else before - count(db)
    row = sec.add(Row(label, rows=rows, seconds=wall, longest_ms=longest, wal=wal, baseline=baseline))
    drop_db(db)
    return row


LIMIT_LOOP_PROC = f"""
CREATE PROCEDURE bench_limit_loop(n int) LANGUAGE plpgsql AS $$
DECLARE
  cutoff timestamptz := {CUTOFF_SQL};
  d bigint; total bigint := 0; t0 timestamptz; mx float8 := 0;
BEGIN
  LOOP
    t0 := clock_timestamp();
    DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created_at <= cutoff LIMIT n);
    GET DIAGNOSTICS d = ROW_COUNT;
    COMMIT;
    mx := greatest(mx, extract(epoch FROM clock_timestamp() - t0) * 1000);
    total := total + d;
    EXIT WHEN d = 0;
  END LOOP;
  RAISE NOTICE 'bench_result rows=% max_ms=%', total, mx;
END $$;
"""


def section_delete():
    for kind, title in (("seq", "time-ordered heap"), ("rand", "random heap")):
        banner(f"delete, {title}")
        sec = section("delete", f"Delete, {title} ({ROWS:,} rows, {KEEP_DAYS}-day rule)")
        sec.template = template(kind)
        run_sql_variant(sec, "one `DELETE` statement", f"v_del_sql_{kind}",
                        f"DELETE FROM events WHERE created_at <= {CUTOFF_SQL};", baseline=True)
        run_retentiond_variant(sec, f"`retentiond run`, parallelism 1, batches of {BATCH}",
                               f"v_del_rd1_{kind}", delete_rule())
        if parallelism_supported():
            run_retentiond_variant(sec, f"`retentiond run`, parallelism 2, batches of {BATCH}",
                                   f"v_del_rd2_{kind}", delete_rule(parallelism=2))
        else:
            sec.add(Row(f"`retentiond run`, parallelism 2, batches of {BATCH}", text="n/a (not in this build)"))
        # The procedure is created outside the timed script (its own psql call).
        db = f"v_del_loop_{kind}"
        fresh_db(db, sec.template)
        psql(db, LIMIT_LOOP_PROC)
        before = count(db)
        lsn = wal_lsn()
        wall, _, out = timed_sql(db, f"CALL bench_limit_loop({BATCH});")
        wal = wal_since(lsn)
        m = re.search(r"bench_result rows=(\d+) max_ms=([0-9.]+)", out)
        sec.add(Row(f"`DELETE … WHERE id IN (SELECT … LIMIT {BATCH})` loop, COMMIT each",
                    rows=before - count(db), seconds=wall,
                    longest_ms=float(m.group(2)) if m else None, wal=wal))
        drop_db(db)


def section_mask():
    banner("mask")
    sec = section("mask", f"Mask `client_ip` (`ip_prefix`), time-ordered heap ({ROWS:,} rows)")
    sec.template = template("seq")
    run_sql_variant(
        sec, "one `UPDATE` statement", "v_mask_sql",
        f"UPDATE events SET client_ip = {MASK_EXPR} WHERE created_at <= {CUTOFF_SQL} "
        f"AND client_ip <> {MASK_EXPR};",
        rows_fn=lambda db, before, out: sum(int(n) for n in re.findall(r"^UPDATE (\d+)$", out, re.M)),
        baseline=True)
    db = "v_mask_rd"
    run_retentiond_variant(sec, f"`retentiond run`, parallelism 1, batches of {BATCH}", db, MASK_RULE,
                           keep_db=True)
    psql(db, "CHECKPOINT")
    row = run_retentiond_variant(sec, "`retentiond run` again: the no-op second pass", db, MASK_RULE,
                                 prepared=True)
    row.ratio = False
    if parallelism_supported():
        run_retentiond_variant(sec, f"`retentiond run`, parallelism 2, batches of {BATCH}", "v_mask_rd2",
                               delete_rule(action="mask", extra=MASK_COLUMNS, parallelism=2))
    else:
        sec.add(Row(f"`retentiond run`, parallelism 2, batches of {BATCH}", text="n/a (not in this build)"))
    sec.notes.append("The second pass runs on the first pass's table, right after it: what it changes "
                     f"are the few rows that came due in between (one every {100 * 86400 / ROWS:.2g} s "
                     "at this size). It has no ratio: it does not do the baseline's work.")


DROP_PARTS_PROC = f"""
CREATE PROCEDURE bench_drop_parts() LANGUAGE plpgsql AS $$
DECLARE
  cutoff timestamptz := {CUTOFF_SQL};
  parts text[]; p text; t0 timestamptz; mx float8 := 0; d bigint;
BEGIN
  SELECT coalesce(array_agg(c.oid::regclass::text), '{{}}') INTO parts
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
   WHERE i.inhparent = 'events'::regclass
     AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz <= cutoff;
  FOREACH p IN ARRAY parts LOOP
    t0 := clock_timestamp();
    EXECUTE format('ALTER TABLE events DETACH PARTITION %s', p);
    EXECUTE format('DROP TABLE %s', p);
    COMMIT;
    mx := greatest(mx, extract(epoch FROM clock_timestamp() - t0) * 1000);
  END LOOP;
  t0 := clock_timestamp();
  DELETE FROM events WHERE created_at <= cutoff;
  GET DIAGNOSTICS d = ROW_COUNT;
  COMMIT;
  mx := greatest(mx, extract(epoch FROM clock_timestamp() - t0) * 1000);
  RAISE NOTICE 'bench_result rows=% max_ms=% partitions=%', d, mx, cardinality(parts);
END $$;
"""


def section_partition():
    banner("partitioned table")
    sec = section("partition", f"Partitioned table, daily range partitions ({ROWS:,} rows)")
    sec.template = template("part")
    nparts = scalar(sec.template, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
    sec.notes.append(f"The table: `PARTITION BY RANGE (created_at)`, {nparts} partitions "
                     f"({'created by pg_partman ' + PARTMAN if PARTMAN else 'made by hand'}: "
                     "one per day and a default one); rows changed = rows gone from the table.")
    run_sql_variant(sec, "one `DELETE` on the parent", "v_part_sql",
                    f"DELETE FROM events WHERE created_at <= {CUTOFF_SQL};", baseline=True)
    run_retentiond_variant(sec, "`retentiond run` on the parent", "v_part_rd", delete_rule())
    if PARTMAN:
        run_sql_variant(sec, f"pg_partman {PARTMAN} `run_maintenance` (retention {KEEP_DAYS} days)¹",
                        "v_part_partman",
                        "SELECT partman.run_maintenance(p_parent_table := 'public.events', p_jobmon := false);")
    else:
        sec.add(Row("pg_partman `run_maintenance`", text="n/a (pg_partman not installed)"))
    db = "v_part_hand"
    fresh_db(db, sec.template)
    psql(db, DROP_PARTS_PROC)
    before = count(db)
    lsn = wal_lsn()
    wall, _, out = timed_sql(db, "CALL bench_drop_parts();")
    wal = wal_since(lsn)
    m = re.search(r"bench_result rows=(\d+) max_ms=([0-9.]+) partitions=(\d+)", out)
    sec.add(Row("hand-written `DETACH PARTITION` + `DROP TABLE` per partition, "
                "then one `DELETE` on the straddling one", rows=before - count(db), seconds=wall,
                longest_ms=float(m.group(2)) if m else None, wal=wal,
                note=f"({m.group(3)} partitions dropped)" if m else ""))
    drop_db(db)
    sec.notes.append("¹ pg_partman drops only whole partitions whose upper bound is older than the "
                     "retention; the expired rows of the partition that straddles the cutoff stay, "
                     "so it removes fewer rows than the others (see rows changed). Its time includes "
                     "premaking future partitions.")


def section_plan():
    for kind, title in (("seq", "time-ordered heap"), ("rand", "random heap")):
        banner(f"plan, {title}")
        sec = section("plan", f"Exact `plan`, {title} ({ROWS:,} rows)", rows_header="rows matched")
        sec.template = template(kind)
        db = f"v_plan_{kind}"
        run_sql_variant(sec, "`SELECT count(*) … WHERE created_at <= cutoff`", db,
                        f"SELECT count(*) FROM events WHERE created_at <= {CUTOFF_SQL};",
                        rows_fn=lambda db, before, out: int(re.findall(r"^(\d+)$", out, re.M)[-1]),
                        baseline=True)
        fresh_db(db, sec.template)
        cfg = config(db, db, "", delete_rule())
        lsn = wal_lsn()
        p = retentiond(["plan", "-c", cfg, "--format", "json"])
        wal = wal_since(lsn)
        rep = rule_report(p)
        if p.code != 0 or rep is None:
            failures.append(f"{sec.title}: plan: {p.error()}")
            sec.add(Row("`retentiond plan --format json`", text=f"failed: {p.error()}"))
        else:
            sec.add(Row("`retentiond plan --format json`", rows=rep.get("matched"), seconds=p.seconds,
                        longest_ms=DASH, wal=wal, rss_kib=p.rss_kib))
        drop_db(db)


# --- blob stores ------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, log):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    raise RuntimeError(f"emulator on port {port} did not start:\n{open(log).read()[-2000:]}")


def az_sas():
    se = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sp, ss, srt, sv = "racwdl", "b", "sco", "2021-08-06"
    to_sign = f"devstoreaccount1\n{sp}\n{ss}\n{srt}\n\n{se}\n\n\n{sv}\n\n"
    sig = base64.b64encode(hmac.new(base64.b64decode(AZ_KEY), to_sign.encode(), hashlib.sha256).digest()).decode()
    return urllib.parse.urlencode({"sv": sv, "ss": ss, "srt": srt, "sp": sp, "se": se, "sig": sig})


class Emulator:
    """A fresh moto_server or Azurite holding only `n` objects under bench/run/ (none when src is None)."""

    def __init__(self, store, src, n):
        self.store, self.port = store, free_port()
        data = os.path.join(WORK, "emu")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        log = os.path.join(WORK, "emu.log")
        if store == "s3":
            cmd = [ENV["RETENTIOND_MOTO"], "-H", "127.0.0.1", "-p", str(self.port)]
        else:
            cmd = [ENV["RETENTIOND_AZURITE"], "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                   "--location", data, "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_port(self.port, self.proc, log)
            url = f"http://127.0.0.1:{self.port}"
            if store == "s3":
                self.remote = "s3:bench/run"
                self.env = {"RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
                            "RCLONE_CONFIG_S3_ACCESS_KEY_ID": "test",
                            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": "test",
                            "RCLONE_CONFIG_S3_ENDPOINT": url, "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true"}
                self.rclone("mkdir", "s3:bench")
                self.target = (f'type = "s3"\nbucket = "bench"\nregion = "us-east-1"\nendpoint = "{url}"\n')
            else:
                sas = az_sas()
                self.remote = "az:bench/run"
                self.env = {"RCLONE_CONFIG_AZ_TYPE": "azureblob",
                            "RCLONE_CONFIG_AZ_SAS_URL": f"{url}/devstoreaccount1/bench?{sas}"}
                req = urllib.request.Request(f"{url}/devstoreaccount1/bench?restype=container&{sas}",
                                             method="PUT", headers={"x-ms-version": "2021-08-06",
                                                                    "Content-Length": "0"})
                urllib.request.urlopen(req).read()
                self.target = (f'type = "azure_blob"\naccount = "devstoreaccount1"\ncontainer = "bench"\n'
                               f'endpoint = "{url}/devstoreaccount1"\naccess_key = "{AZ_KEY}"\n')
            if src is not None:
                t0 = time.monotonic()
                self.rclone("copy", "--transfers", "16", src, self.remote)
                have = self.count()
                if have != n:
                    raise RuntimeError(f"{store}: uploaded {have} of {n} objects")
                info(f"{store}: {n} objects uploaded in {time.monotonic() - t0:.1f} s (not timed)")
        except BaseException:
            self.stop()
            raise

    def rclone_cmd(self, *args):
        return ["env", "-u", "AWS_CA_BUNDLE", "rclone", "--config", "/dev/null", "-q"] + list(args)

    def rclone(self, *args):
        e = dict(ENV)
        e.update(self.env)
        p = subprocess.run(self.rclone_cmd(*args), capture_output=True, text=True, env=e)
        if p.returncode != 0:
            raise RuntimeError(f"rclone {' '.join(args)} failed:\n{p.stderr}")
        return p.stdout

    def count(self):
        return int(json.loads(self.rclone("size", "--json", self.remote))["count"])

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def make_files(root, n, old_every=None):
    """n files of 1 KiB under root/DD/; with old_every, 7 in 10 get an mtime 40 days ago, the rest 1 day ago."""
    now = time.time()
    for i in range(n):
        d = os.path.join(root, f"{i % 100:02d}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{i:07d}.bin")
        with open(path, "wb") as f:
            f.write(b"x" * 1024)
        if old_every:
            age = 40 if i % 10 < 7 else 1
            os.utime(path, (now - age * 86400, now - age * 86400))


def count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def blob_retentiond(sec, label, store_toml, rule, objects, audit_db):
    cfg = config(f"blob_{len(sec.rows)}_{sections.index(sec)}", audit_db, store_toml, rule)
    lsn = wal_lsn()
    p = retentiond(["run", "-c", cfg, "--format", "json"])
    wal = wal_since(lsn)
    rep = rule_report(p)
    if p.code != 0 or rep is None:
        failures.append(f"{sec.title}: {label}: {p.error()}")
        sec.add(Row(label, text=f"failed: {p.error()}"))
        return None
    ms = batch_ms(p.stderr)
    affected = rep.get("affected")
    return sec.add(Row(label, rows=affected, seconds=p.seconds, longest_ms=ms, wal=wal,
                       rss_kib=p.rss_kib, cpu_us=cpu_us(p, affected)))


def section_blob():
    keygen()
    psql("postgres", "DROP DATABASE IF EXISTS blob_audit")
    psql("postgres", "CREATE DATABASE blob_audit")
    migrate("blob_audit")
    blob_rule = (f'[[rules]]\nname = "bulk"\nstore = "blob"\nprefix = "run/"\nkeep = "{{keep}}"\n'
                 'action = "delete"\nmax_fraction = 1.0\n')
    if "fs" in STORES:
        banner("blob: filesystem")
        sec = section("blob", f"Blob store: filesystem ({OBJECTS:,} files of 1 KiB, 70% older than "
                      f"{KEEP_DAYS} days)", rows_header="objects deleted", cpu=True)
        src = os.path.join(WORK, "fs_src")
        make_files(os.path.join(src, "run"), OBJECTS, old_every=True)
        for variant in ("find", "rd"):
            root = os.path.join(WORK, f"fs_{variant}")
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run(["cp", "-a", src, root], check=True)
            subprocess.run(["sync"], check=True)
            if variant == "find":
                lsn = wal_lsn()
                p = Proc(["find", os.path.join(root, "run"), "-type", "f", "-mmin",
                          f"+{KEEP_DAYS * 24 * 60}", "-delete"])
                wal = wal_since(lsn)
                if p.code != 0:
                    failures.append(f"find -delete: {p.error()}")
                gone = OBJECTS - count_files(root)
                sec.add(Row(f"`find -type f -mmin +{KEEP_DAYS * 24 * 60} -delete`", rows=gone,
                            seconds=p.seconds, wal=wal, rss_kib=p.rss_kib, cpu_us=cpu_us(p, gone),
                            baseline=True))
            else:
                store = f'[stores.blob]\ntype = "filesystem"\nroot = "{root}"\n'
                r = blob_retentiond(sec, "`retentiond run`", store, blob_rule.format(keep=f"{KEEP_DAYS}d"),
                                    OBJECTS, "blob_audit")
                left = count_files(root)
                if r and r.rows != OBJECTS - left:
                    sec.notes.append(f"retentiond reported {r.rows} deleted; {OBJECTS - left} files are gone.")
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        opts = sh(["findmnt", "-no", "OPTIONS", "-T", WORK])
        if "discard" in opts.split(","):
            sec.notes.append("The scratch filesystem is mounted with `discard`: every unlink waits for the "
                             "device to trim the freed blocks, so both tools mostly wait on the device.")
    for store, n, name in (("s3", OBJECTS, "S3 (moto_server)"), ("az", AZ_OBJECTS, "Azure Blob (Azurite)")):
        if store not in STORES:
            continue
        banner(f"blob: {name}")
        version = (subprocess.run(["python3", "-c", "import moto; print(moto.__version__)"],
                                  capture_output=True, text=True).stdout.strip() if store == "s3" else
                   subprocess.run([ENV["RETENTIOND_AZURITE"], "--version"], capture_output=True,
                                  text=True).stdout.strip())
        sec = section("blob", f"Blob store: {name} {version} ({n:,} objects of 1 KiB, all due)",
                      rows_header="objects deleted", cpu=True)
        src = os.path.join(WORK, "up_src")
        shutil.rmtree(src, ignore_errors=True)
        make_files(src, n)
        for variant in ("rclone", "rd"):
            emu = Emulator(store, src, n)
            try:
                if variant == "rclone":
                    e = dict(emu.env)
                    lsn = wal_lsn()
                    p = Proc(emu.rclone_cmd("delete", emu.remote), env=e)
                    wal = wal_since(lsn)
                    if p.code != 0:
                        failures.append(f"{name}: rclone delete: {p.error()}")
                    gone = n - emu.count()
                    sec.add(Row("`rclone delete` (8 checkers)", rows=gone, seconds=p.seconds, wal=wal,
                                rss_kib=p.rss_kib, cpu_us=cpu_us(p, gone), baseline=True))
                else:
                    r = blob_retentiond(sec, "`retentiond run`", "[stores.blob]\n" + emu.target,
                                        blob_rule.format(keep="0s"), n, "blob_audit")
                    left = emu.count()
                    if r and left:
                        failures.append(f"{name}: retentiond left {left} objects")
            finally:
                emu.stop()
        shutil.rmtree(src, ignore_errors=True)
        if store == "az" and AZ_OBJECTS < OBJECTS:
            sec.notes.append(f"Azurite gets {AZ_OBJECTS:,} objects, not {OBJECTS:,} (`--azure-objects`): "
                             "its deletes slow down with every object it holds, so its time grows faster "
                             "than the count.")
        sec.notes.append("The emulator stamps each object's last-modified time itself, so the rule keeps "
                         "`0s` and every object is due; `rclone delete` deletes the whole prefix. Each "
                         "variant gets a fresh emulator holding only its own upload (not timed).")


# --- memory ------------------------------------------------------------------------------


def make_empty_files(root, n, per_dir=10000, age_days=40):
    """n empty files under root/DDDD/ (per_dir each), all aged age_days."""
    old = time.time() - age_days * 86400
    for i in range(n):
        d = os.path.join(root, f"{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{i:07d}")
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        os.utime(path, (old, old))


def memory_pair(sec, what, store_toml, rule, audit_db, expect):
    """`plan` then `run` of one rule; a row each with peak RSS."""
    cfg = config(f"mem_{len(sec.rows)}", audit_db, store_toml, rule)
    for cmd in ("plan", "run"):
        p = retentiond([cmd, "-c", cfg, "--format", "json"])
        rep = rule_report(p)
        if p.code != 0 or rep is None:
            failures.append(f"{sec.title}: {cmd}: {p.error()}")
            sec.add(Row(f"`retentiond {cmd}`, {what}", text=f"failed: {p.error()}"))
            continue
        n = rep.get("matched") if cmd == "plan" else rep.get("affected")
        if n != expect:
            failures.append(f"{sec.title}: {cmd} counted {n} keys, not {expect}")
        sec.add(Row(f"`retentiond {cmd}`, {what}", rows=n, seconds=p.seconds, rss_kib=p.rss_kib,
                    cpu_us=cpu_us(p, n) if cmd == "run" else None, ratio=False))


def section_memory():
    keygen()
    psql("postgres", "DROP DATABASE IF EXISTS mem_audit")
    psql("postgres", "CREATE DATABASE mem_audit")
    migrate("mem_audit")
    rule = ('[[rules]]\nname = "bulk"\nstore = "blob"\nprefix = "big/"\nkeep = "{keep}"\n'
            'action = "delete"\nmax_fraction = 1.0\n')
    if "fs" in STORES:
        banner(f"memory: {MEMORY_FILES:,} files")
        sec = section("memory", f"Bounded memory: filesystem, {MEMORY_FILES:,} empty files under one "
                      "prefix (100 directories of 10,000), all due", rows_header="keys", cpu=True)
        root = os.path.join(WORK, "mem_fs")
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.monotonic()
        make_empty_files(os.path.join(root, "big"), MEMORY_FILES)
        info(f"{MEMORY_FILES:,} files made in {time.monotonic() - t0:.0f} s (not timed)")
        memory_pair(sec, f"{MEMORY_FILES:,} files", f'[stores.blob]\ntype = "filesystem"\nroot = "{root}"\n',
                    rule.format(keep="30d"), "mem_audit", MEMORY_FILES)
        left = count_files(root)
        if left:
            failures.append(f"{sec.title}: {left} files left")
        shutil.rmtree(root, ignore_errors=True)
    if "s3" in STORES:
        keys = max(1, MEMORY_VERSIONS // 4)
        banner(f"memory: {keys * 4:,} versions on moto_server")
        sec = section("memory", f"Bounded memory: S3 (moto_server), {keys:,} keys of 4 versions each "
                      f"({keys * 4:,} versions) under one prefix, all due", rows_header="keys", cpu=True)
        emu = Emulator("s3", None, 0)
        try:
            import boto3
            from concurrent.futures import ThreadPoolExecutor
            s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{emu.port}", region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
            s3.put_bucket_versioning(Bucket="bench", VersioningConfiguration={"Status": "Enabled"})
            t0 = time.monotonic()

            def put(i):
                for v in range(4):
                    s3.put_object(Bucket="bench", Key=f"big/{i // 1000:03d}/{i:07d}", Body=b"v%d" % v)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, range(keys)))
            info(f"{keys * 4:,} versions put in {time.monotonic() - t0:.0f} s (not timed)")
            memory_pair(sec, f"{keys * 4:,} versions", "[stores.blob]\n" + emu.target,
                        rule.format(keep="0s"), "mem_audit", keys)
            left = s3.list_object_versions(Bucket="bench", Prefix="big/", MaxKeys=10)
            if left.get("Versions") or left.get("DeleteMarkers"):
                failures.append(f"{sec.title}: versions left after the run")
        finally:
            emu.stop()
        sec.notes.append("Memory follows the key being listed, not the prefix: what is due stays in memory "
                         "up to 50,000 items, then goes to an unnamed temporary file in `$TMPDIR`.")


# --- audit -------------------------------------------------------------------------------


def small_rules(sec, n):
    """`retentiond run` over n rules, each on its own 10-row table with 6 rows due: the
    records (an intent and an outcome per rule, and the config's) per second of the run."""
    db = "rules_bench"
    psql("postgres", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", f"CREATE DATABASE {db}")
    migrate(db)
    psql(db, "".join(
        f"CREATE TABLE t{i} (id int primary key, at timestamptz not null); "
        f"INSERT INTO t{i} SELECT g, now() - CASE WHEN g <= 6 THEN interval '10 days' "
        f"ELSE interval '1 day' END FROM generate_series(1, 10) g; " for i in range(1, n + 1)))
    rules = "".join(
        f'[[rules]]\nname = "r{i}"\nstore = "app"\ntable = "t{i}"\nage = "at"\nkeep = "5d"\n'
        f'action = "delete"\nmax_fraction = 1.0\n' for i in range(1, n + 1))
    cfg = config(db, db, "", rules)
    before = int(scalar(db, "SELECT count(*) FROM retentiond.audit_log"))
    lsn = wal_lsn()
    p = retentiond(["run", "-c", cfg, "--format", "json"], env={"RETENTIOND_LOG": "warn"})
    wal = wal_since(lsn)
    records = int(scalar(db, "SELECT count(*) FROM retentiond.audit_log")) - before
    left = int(scalar(db, "SELECT " + " + ".join(f"(SELECT count(*) FROM t{i})" for i in range(1, n + 1))))
    if p.code != 0 or left != 4 * n:
        failures.append(f"small rules: {p.error()} ({left} rows left, expected {4 * n})")
        sec.add(Row(f"`retentiond run` of {n} one-batch rules", text=f"failed: {p.error()}"))
    else:
        sec.add(Row(f"`retentiond run` of {n} one-batch rules (records appended by the run)",
                    rows=records, seconds=p.seconds, longest_ms=DASH, wal=wal, rss_kib=p.rss_kib))
    drop_db(db)


def section_audit():
    banner("audit")
    gen = ENV.get("BENCH_AUDIT_GEN")
    sec = section("audit", "Audit records: seal, append, verify", rows_header="records", rate="records/s")
    keys = keygen()
    out = os.path.join(WORK, "audit.jsonl")
    p = Proc([gen, f"{keys}/signing.pem", out, str(AUDIT)])
    m = re.search(r"sealed (\d+) records in ([0-9.]+) s", p.stdout)
    if p.code != 0 or not m:
        failures.append(f"audit_gen: {p.error()}")
        sec.add(Row("seal (sign and chain) records, one core", text=f"failed: {p.error()}"))
    else:
        sec.add(Row("seal (sign and chain) records, one core, to a JSONL export", rows=int(m.group(1)),
                    seconds=float(m.group(2)), longest_ms=DASH, wal=0, rss_kib=p.rss_kib))
    psql("postgres", "DROP DATABASE IF EXISTS audit_bench")
    psql("postgres", "CREATE DATABASE audit_bench")
    migrate("audit_bench")
    psql("audit_bench", "CHECKPOINT")
    lsn = wal_lsn()
    p2 = Proc([gen, f"{keys}/signing.pem", os.path.join(WORK, "discard.jsonl"), "0",
               db_url("audit_bench"), str(AUDIT_APPEND), str(AUDIT_WRITERS)])
    wal = wal_since(lsn)
    m = re.search(r"appended (\d+) records.*? in ([0-9.]+) s", p2.stdout)
    if p2.code != 0 or not m:
        failures.append(f"audit append: {p2.error()}")
        sec.add(Row("append to PostgreSQL", text=f"failed: {p2.error()}"))
    else:
        sec.add(Row("append to PostgreSQL (`AuditLog::append`, one writer, one transaction each, fsync on)",
                    rows=int(m.group(1)), seconds=float(m.group(2)), longest_ms=DASH, wal=None,
                    rss_kib=p2.rss_kib))
        g = re.search(r"group commit: (\d+) concurrent writers appended (\d+) records in ([0-9.]+) s", p2.stdout)
        if g:
            sec.add(Row(f"append to PostgreSQL, {g.group(1)} concurrent writers of one process (group commit)",
                        rows=int(g.group(2)), seconds=float(g.group(3)), longest_ms=DASH, wal=None,
                        rss_kib=p2.rss_kib))
        else:
            failures.append("audit append: no group commit line from audit_gen")
    sec.notes.append(f"Both append rows together wrote {fmt_bytes(wal)} of WAL.")
    small_rules(sec, SMALL_RULES)
    if p.code == 0:
        p3 = Proc([BIN, "audit", "verify", "--public-key", f"{keys}/signing.pub.pem", "--file", out])
        if p3.code != 0:
            failures.append(f"audit verify: {p3.error()}")
            sec.add(Row("`retentiond audit verify --file`", text=f"failed: {p3.error()}"))
        else:
            sec.add(Row(f"`retentiond audit verify --file` ({os.path.getsize(out) / 1e6:,.1f} MB export)",
                        rows=AUDIT, seconds=p3.seconds, longest_ms=DASH, wal=0, rss_kib=p3.rss_kib))
    drop_db("audit_bench")
    for f in (out, os.path.join(WORK, "discard.jsonl")):
        if os.path.exists(f):
            os.remove(f)
    sec.notes.append("Seal and append times are audit_gen's own (the sealing loop, the append loop); "
                     "verify is the whole command. Peak RSS of seal and append is audit_gen's.")


# --- report ------------------------------------------------------------------------------


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, shell=isinstance(cmd, str)).stdout.strip()
    except OSError:
        return ""


def header():
    model = next((ln.split(":", 1)[1].strip() for ln in sh(["lscpu"]).splitlines()
                  if ln.startswith("Model name")), platform.processor() or "?")
    mem = next((int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    df = sh(["df", "-hT", WORK]).splitlines()[-1].split()
    mount = sh(["findmnt", "-no", "FSTYPE,OPTIONS", "-T", WORK]).split()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    commit = sh(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", root, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
    pg = scalar("postgres", "SELECT version()")
    tools = [f"PostgreSQL: {pg}"]
    if "blob" in ONLY:
        tools.append(f"rclone: {sh('rclone version 2>/dev/null | head -n 1')}; find: {sh('find --version | head -n 1')}")
    if PARTMAN:
        tools.append(f"pg_partman: {PARTMAN}")
    lines = [
        "# Benchmarks",
        "",
        "Written by `scripts/bench` (issue 12); rerun it to refresh this file.",
        "",
        f"* **Date:** {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"* **Command:** `{ENV.get('BENCH_COMMAND', 'scripts/bench')}`",
        f"* **Machine:** {os.cpu_count()} cores ({model}), {mem / 1024 / 1024:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}; scratch (cluster, files) on {df[0]} ({df[1]}, {df[2]}"
        f"{', mounted ' + mount[1] if len(mount) > 1 else ''})",
        f"* **retentiond:** commit {commit or '?'}{' with uncommitted changes in src/' if dirty else ''}; "
        f"binary `{BIN}`",
        *[f"* **{t.split(':', 1)[0]}:** {t.split(':', 1)[1].strip()}" for t in tools],
        f"* **Sizes:** {ROWS:,} rows, {OBJECTS:,} objects ({AZ_OBJECTS:,} on Azurite), "
        f"{AUDIT:,} audit records ({AUDIT_APPEND:,} appended)",
        "* **Cluster:** throwaway, durable: fsync on, synchronous_commit on, full_page_writes on, "
        "shared_buffers 1GB, max_wal_size 8GB, autovacuum off. Every variant runs on a fresh copy "
        "(`CREATE DATABASE … TEMPLATE`) of the same template database, after a `CHECKPOINT`.",
        "",
        "Data: `events(id bigserial primary key, created_at timestamptz indexed, client_ip inet, "
        "payload text of 100 B)`, rows spread evenly over the last 100 days; the time-ordered heap "
        "was inserted in `created_at` order, the random heap holds the same rows inserted in random "
        "order. The rule keeps 30 days, so about 70% of the rows are due.",
        "",
    ]
    return "\n".join(lines)


FOOTNOTES = """### Columns

* **rows changed / objects deleted / rows matched / records:** what the variant did: for retentiond the
  rule report's `affected` (`matched` for `plan`) from `--format json`; for SQL the rows gone
  from the table (the `UPDATE`'s command tag for masking); for blob tools the objects gone.
  Variants run at slightly different times, so the rows a 30-day cutoff selects differ by a few.
* **seconds:** wall time of the whole command (process start to exit, connecting and audit records
  included for retentiond; the psql call for SQL).
* **vs baseline:** the section's baseline seconds divided by the variant's: higher is faster,
  the baseline is 1.00×.
* **longest txn (ms):** the longest transaction (how long locks are held): for one statement its
  time (psql `\\timing`); for the loops and the hand-written partition drop the slowest iteration's
  transaction; for pg_partman the `run_maintenance` call; for retentiond the largest `ms` of its
  `Batch committed.` and `Partition dropped.` debug log events ("n/a" when the build logs none).
* **WAL:** `pg_wal_lsn_diff` of `pg_current_wal_lsn()` around the variant (cluster-wide, so
  retentiond's audit records are in it).
* **peak RSS:** maximum resident set of the measured client process (GNU time `%M`); "–" for SQL,
  whose work happens in the server.
* **client CPU / object:** user + system CPU seconds of the client process per object deleted.
"""


def render():
    parts = [header()]
    seen = set()
    titles = {"delete": "## Delete", "mask": "## Mask", "partition": "## Partitioned table",
              "plan": "## Plan", "blob": "## Blob stores", "memory": "## Bounded memory",
              "audit": "## Audit log"}
    for s in sections:
        if s.key not in seen:
            parts.append(titles[s.key] + "\n")
            seen.add(s.key)
        parts.append(s.markdown())
    if failures:
        parts.append("## Failures\n\n" + "\n".join(f"* {f}" for f in failures) + "\n")
    parts.append(FOOTNOTES)
    return "\n".join(parts)


def main():
    global ANCHOR
    ANCHOR = scalar("postgres", "SELECT now()")
    steps = {"delete": section_delete, "mask": section_mask, "partition": section_partition,
             "plan": section_plan, "blob": section_blob, "memory": section_memory,
             "audit": section_audit}
    for name in ONLY:
        if name not in steps:
            sys.exit(f"unknown section {name!r} (sections: {', '.join(steps)})")
    started = time.monotonic()
    try:
        for name in steps:
            if name in ONLY:
                try:
                    steps[name]()
                except Exception as e:  # one broken section does not lose the others
                    failures.append(f"section {name}: {e}")
                    info(f"section {name} failed: {e}")
    finally:
        text = render()
        with open(OUT, "w") as f:
            f.write(text)
        banner(f"results ({time.monotonic() - started:.0f} s), written to {OUT}")
        print(text)
    if failures:
        print("failures:\n" + "\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
