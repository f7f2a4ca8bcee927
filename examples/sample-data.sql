-- examples/sample-data.sql: a small, deterministic data set for examples/schema.sql.
--
-- No random(): every value is a function of the generate_series counter, and
-- every age is relative to now() (constant inside this one transaction), so
-- `retentiond plan` shows the same counts whenever the file is loaded. Ages
-- keep clear of the cutoffs (no row of a table rule this build executes
-- becomes due within 6 hours of loading; the 1-hour uploads are the
-- exception), so plan, run and a second run agree for a while after loading.
--
-- For every rule in examples/*.toml and retention.toml there are rows already
-- expired, rows not yet expired, and (where the age column allows it) NULL
-- ages that never expire. Expired rows stay under half of each table, the
-- default max_fraction, except where a rule raises max_fraction on purpose
-- (telemetry-mask-ip masks every row once).
--
-- What to expect (about; counts at a cutoff may move by a row as time passes):
--   accounts          60: 40 open (closed_at NULL), 8 closed < 2 years ago,
--                     6 closed > 2 years ago but with invoices younger than
--                     10 years (kept by the billing guard, through the cascade),
--                     4 closed ~10.5 years ago with only invoices older than
--                     10 years, 2 closed 3-4 years ago without invoices;
--                     accounts 50 and 56 are under legal hold, 59's hold was
--                     released.
--   billing_records  162: 13 older than 10 years (2 of them held, account 56),
--                     one just inside 10 years.
--   sessions         220: 86 older than 30 days (4 of those already masked),
--                     IPv4 and IPv6 client_ip, 8 NULL.
--   session_logs     300: 98 older than 30 days.
--   refresh_tokens   120: 36 older than 14 days.
--   consent_records  150: 45 older than 30 days.
--   telemetry        300: 80 older than 90 days, 87 heartbeats older than 7 days;
--                     ip as text: IPv4, IPv6, 'unknown', '', an
--                     X-Forwarded-For list, NULL; 30 rows already masked.
--   rate_limit_cookies 100: 30 not seen for 30 days (timestamp without tz, UTC).
--   uploaded_files   120: 81 of free users (40 older than 1 hour), 39 of paid
--                     users (12 older than 7 days).
--   conversations     80: 16 deleted by their user (deleted_at set), 64 NULL.
--   messages         400; data_sources 30 (5 deleted); data_source_chunks 150.

BEGIN;

-- accounts ------------------------------------------------------------------
WITH a AS (
    SELECT i,
           CASE
               WHEN i <= 40 THEN NULL                                         -- open
               WHEN i = 48  THEN now() - interval '2 years' + interval '1 day' -- just inside 2 years
               WHEN i <= 47 THEN now() - (i - 40) * interval '35 days'        -- closed recently
               WHEN i <= 54 THEN now() - interval '2 years' - (i - 48) * interval '200 days'
               WHEN i <= 58 THEN now() - interval '10 years' - (i - 54) * interval '60 days'
               WHEN i = 59  THEN now() - interval '3 years'
               ELSE              now() - interval '4 years'
           END AS closed_at
    FROM generate_series(1, 60) AS i
)
INSERT INTO accounts (id, email, display_name, created_at, closed_at)
SELECT i,
       format('customer%s@example.com', i),
       format('Customer %s', i),
       CASE
           WHEN i <= 5  THEN now() - interval '12 years' - i * interval '7 days'
           WHEN i <= 40 THEN now() - i * interval '20 days'
           ELSE              closed_at - interval '18 months' - i * interval '1 day'
       END,
       closed_at
FROM a;

-- api_keys: one per account, revoked when the account closed.
INSERT INTO api_keys (id, account_id, key_hash, label, created_at, revoked_at)
SELECT id, id, sha256(convert_to('pk_live_' || id, 'UTF8')), 'default',
       created_at + interval '1 day', closed_at
FROM accounts;

-- billing_records -------------------------------------------------------------
-- Open accounts: three monthly invoices each (young).
INSERT INTO billing_records (id, account_id, invoice_number, issued_at, amount_cents, billing_name, billing_country, vat_number, provider_charge_id)
SELECT i * 10 + k, i, format('PP-%s-%s', i, k),
       now() - k * interval '30 days' - i * interval '1 hour',
       1900 + (i * 37 + k * 11) % 5000, format('Customer %s SAS', i), 'FR',
       CASE WHEN i % 2 = 0 THEN format('FR%s', 10000000000 + i) END,
       format('ch_%s_%s', i, k)
FROM generate_series(1, 40) AS i, generate_series(1, 3) AS k;

-- Long-standing open accounts 1-5: one invoice 11 years old (billing-10y deletes it) ...
INSERT INTO billing_records (id, account_id, invoice_number, issued_at, amount_cents, billing_name, billing_country, provider_charge_id)
SELECT i * 10 + 4, i, format('PP-%s-old', i),
       now() - interval '11 years' - i * interval '1 day',
       990, format('Customer %s SAS', i), 'FR', format('ch_%s_old', i)
FROM generate_series(1, 5) AS i;
-- ... and account 1 one just inside the 10 years (kept).
INSERT INTO billing_records (id, account_id, invoice_number, issued_at, amount_cents, billing_name, billing_country, provider_charge_id)
VALUES (15, 1, 'PP-1-edge', now() - interval '10 years' + interval '1 day', 990, 'Customer 1 SAS', 'FR', 'ch_1_edge');

-- Closed accounts 41-58: two invoices before closure. For 49-54 (closed
-- 2.5-5.3 years ago) they are younger than 10 years: the billing guard keeps
-- those accounts through the cascade. For 55-58 (closed ~10.5 years ago) they
-- are older than 10 years: nothing protects those accounts (but 56's hold).
-- Accounts 59 and 60 never paid.
INSERT INTO billing_records (id, account_id, invoice_number, issued_at, amount_cents, billing_name, billing_country, provider_charge_id)
SELECT a.id * 10 + k, a.id, format('PP-%s-%s', a.id, k),
       a.closed_at - CASE k WHEN 1 THEN interval '10 days'
                            ELSE CASE WHEN a.id <= 54 THEN interval '400 days' ELSE interval '200 days' END
                     END,
       4900 + a.id * 10, format('Customer %s SARL', a.id),
       CASE WHEN a.id % 3 = 0 THEN 'DE' ELSE 'FR' END, format('ch_%s_%s', a.id, k)
FROM accounts AS a, generate_series(1, 2) AS k
WHERE a.id BETWEEN 41 AND 58;

-- legal_holds: 50 and 56 held; 59's hold released a year ago (no longer holds).
INSERT INTO legal_holds (id, account_id, case_ref, reason, placed_at, released_at) VALUES
    (1, 50, 'CASE-2024-017', 'tax audit of invoices',           now() - interval '100 days', NULL),
    (2, 56, 'CASE-2025-003', 'fraud investigation',              now() - interval '20 days',  NULL),
    (3, 59, 'CASE-2023-044', 'litigation, settled and released', now() - interval '2 years',  now() - interval '1 year');

-- sessions --------------------------------------------------------------------
-- 200 sessions of open accounts, 0-44 days old; 1 in 3 is IPv6; every 25th
-- has no IP.
INSERT INTO sessions (id, account_id, started_at, ended_at, endpoint, client_ip)
SELECT g, 1 + (g - 1) % 40, st, st + (g % 30 + 1) * interval '1 minute',
       (ARRAY['/v1/realtime', '/v1/voices', '/v1/sessions'])[1 + g % 3],
       CASE
           WHEN g % 25 = 0 THEN NULL
           WHEN g % 3 = 0  THEN format('2001:db8:%s:%s::%s', to_hex(g % 4096), to_hex(g % 16), to_hex(g))::inet
           WHEN g % 2 = 0  THEN format('198.51.100.%s', g % 254 + 1)::inet
           ELSE                 format('203.0.113.%s', g % 254 + 1)::inet
       END
FROM generate_series(1, 200) AS g,
     LATERAL (SELECT now() - ((g * 7) % 45) * interval '1 day' - (g % 24) * interval '1 hour'
                     - interval '30 minutes' AS st) AS s;

-- One session per closed account, shortly before closure (all older than 30
-- days). Those of 55-58 were already anonymized by an earlier run: a mask is
-- idempotent, so the plan does not count them again.
INSERT INTO sessions (id, account_id, started_at, ended_at, endpoint, client_ip)
SELECT 200 + (a.id - 40), a.id, a.closed_at - interval '5 days', a.closed_at - interval '5 days' + interval '12 minutes',
       '/v1/realtime',
       CASE
           WHEN a.id BETWEEN 55 AND 58 THEN '203.0.113.0'::inet
           WHEN a.id % 2 = 0 THEN format('2a01:e0a:%s:%s::1', to_hex(a.id), to_hex(a.id * 3))::inet
           ELSE format('192.0.2.%s', a.id)::inet
       END
FROM accounts AS a
WHERE a.closed_at IS NOT NULL;

-- session_logs: 300 lines over the 200 sessions of open accounts, logged
-- within 25 minutes of the session start (which lies 30 minutes off the
-- hour, so no line sits just short of the 30-day cutoff).
INSERT INTO session_logs (session_id, account_id, created_at, level, message)
SELECT s.id, s.account_id, s.started_at + (g % 25) * interval '1 minute',
       (ARRAY['debug', 'info', 'info', 'warn', 'error'])[1 + g % 5],
       format('session %s: %s', s.id,
              (ARRAY['websocket opened', 'vad: speech start', 'tts latency 412ms', 'client closed 1006', 'rate limit hit'])[1 + g % 5])
FROM generate_series(1, 300) AS g
JOIN sessions AS s ON s.id = 1 + (g - 1) % 200
ORDER BY g;

-- users ---------------------------------------------------------------------------
INSERT INTO users (id, email, tier, created_at)
SELECT i, format('user%s@example.org', i),
       CASE WHEN i % 3 = 0 THEN 'paid' ELSE 'free' END,
       now() - i * interval '10 days'
FROM generate_series(1, 40) AS i;

-- refresh_tokens: 0-19 days old; days 14-19 (30%) are past 14 days.
INSERT INTO refresh_tokens (user_id, issued_at, token_hash)
SELECT 1 + (g - 1) % 40,
       now() - (g % 20) * interval '1 day' - (g % 7) * interval '1 hour',
       sha256(convert_to('rt_' || g, 'UTF8'))
FROM generate_series(1, 120) AS g
ORDER BY g;

-- consent_records: 0-44 days old; 30% past 30 days.
INSERT INTO consent_records (persona_id, visitor_id, consent_type, granted, recorded_at)
SELECT 1 + g % 5, 'v_' || left(md5('visitor' || g), 16),
       (ARRAY['terms', 'camera', 'microphone', 'analytics'])[1 + g % 4],
       g % 7 <> 0,
       now() - (g % 45) * interval '1 day' - (g % 13) * interval '1 hour'
FROM generate_series(1, 150) AS g
ORDER BY g;

-- telemetry: 0-129 days old (27% past 90 days). ip is text: IPv4 and IPv6
-- addresses, some already on a /24 (x.y.z.0), and garbage the ip_prefix mask
-- cannot parse ('unknown', '', an X-Forwarded-For list). 30 rows are already
-- fully masked (ip NULL or x.y.z.0, user_agent NULL) and are not counted by
-- telemetry-mask-ip.
INSERT INTO telemetry (observed_at, ip, user_agent, event, route, duration_ms)
SELECT now() - (g % 130) * interval '1 day' - (g % 60) * interval '1 minute',
       CASE g % 20
           WHEN 0  THEN 'unknown'
           WHEN 5  THEN '10.0.0.1, 172.16.0.9'
           WHEN 10 THEN ''
           WHEN 15 THEN NULL
           WHEN 17 THEN '192.0.2.0'
           ELSE CASE WHEN g % 3 = 0
                     THEN format('2001:db8:%s::%s', to_hex(g), to_hex(g * 7))
                     ELSE format('192.0.2.%s', g % 254 + 1)
                END
       END,
       CASE WHEN g % 20 IN (15, 17) THEN NULL   -- with NULL / x.y.z.0 ip: already masked
            ELSE CASE g % 4
           WHEN 0 THEN NULL
           WHEN 1 THEN 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36'
           WHEN 2 THEN 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148'
           ELSE        'personaizer-widget/2.3.1'
       END END,
       CASE WHEN g % 11 = 0 THEN 'error'
            ELSE (ARRAY['heartbeat', 'page_view', 'api_call'])[1 + g % 3]
       END,
       (ARRAY['/api/chat', '/api/persona', '/api/voice/token', '/'])[1 + g % 4],
       (g * 37) % 900
FROM generate_series(1, 300) AS g
ORDER BY g;

-- rate_limit_cookies: last seen 0-44 days ago, written as UTC wall time into
-- a timestamp WITHOUT time zone column.
INSERT INTO rate_limit_cookies (cookie_id, persona_id, request_count, first_seen_at, last_seen_at)
SELECT 'rl_' || md5('cookie' || g), 1 + g % 5, (g * 3) % 97 + 1,
       ls - (g % 10) * interval '1 day', ls
FROM generate_series(1, 100) AS g,
     LATERAL (SELECT (now() AT TIME ZONE 'UTC') - (g % 45) * interval '1 day' - (g % 17) * interval '1 hour' AS ls) AS l
ORDER BY g;

-- uploaded_files: free users' files 0-110 minutes old, paid users' 0-9 days.
INSERT INTO uploaded_files (id, owner_id, uploaded_at, filename, size_bytes, blob_key)
SELECT g, u.id,
       CASE u.tier
           WHEN 'free' THEN now() - (g % 12) * interval '10 minutes' - (g % 7) * interval '1 second'
           ELSE             now() - (g % 10) * interval '1 day' - (g % 24) * interval '1 hour'
       END,
       f.name, 1024 * (g * 13 % 900 + 1),
       format('files/%s/%s-%s', u.id, g, f.name)
FROM generate_series(1, 120) AS g
JOIN users AS u ON u.id = 1 + (g - 1) % 40,
     LATERAL (SELECT (ARRAY['sales.csv', 'churn.xlsx', 'survey.csv', 'ledger.parquet'])[1 + g % 4] AS name) AS f;

-- conversations: one in five deleted by its user (now or up to 3 days ago).
INSERT INTO conversations (id, user_id, title, created_at, deleted_at)
SELECT g, 1 + (g - 1) % 40, format('Analysis #%s', g),
       now() - g * interval '1 day',
       CASE WHEN g % 5 = 0 THEN now() - (g % 4) * interval '1 day' END
FROM generate_series(1, 80) AS g;

INSERT INTO messages (conversation_id, role, body, created_at)
SELECT c.id, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
       CASE WHEN g % 2 = 1 THEN format('What drove revenue in Q%s?', 1 + g % 4)
            ELSE format('Revenue grew %s%%, mostly from repeat customers.', g % 17) END,
       c.created_at + g * interval '1 minute'
FROM generate_series(1, 400) AS g
JOIN conversations AS c ON c.id = 1 + (g - 1) % 80
ORDER BY g;

-- data_sources: every sixth deleted by its user in the last few hours.
INSERT INTO data_sources (id, user_id, name, kind, created_at, deleted_at)
SELECT g, 1 + (g - 1) % 40, format('source %s', g),
       (ARRAY['csv', 'xlsx', 'postgres', 'bigquery'])[1 + g % 4],
       now() - g * interval '3 days',
       CASE WHEN g % 6 = 0 THEN now() - (g % 5) * interval '1 hour' END
FROM generate_series(1, 30) AS g;

INSERT INTO data_source_chunks (data_source_id, chunk_no, content, embedding, created_at)
SELECT d.id, (g - 1) / 30, format('rows %s-%s of %s', (g - 1) / 30 * 1000, (g - 1) / 30 * 1000 + 999, d.name),
       ARRAY[(g % 7) / 7.0, (g % 11) / 11.0, (g % 13) / 13.0]::real[],
       d.created_at + interval '1 minute'
FROM generate_series(1, 150) AS g
JOIN data_sources AS d ON d.id = 1 + (g - 1) % 30
ORDER BY g;

COMMIT;

ANALYZE;
