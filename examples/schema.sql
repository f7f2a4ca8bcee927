-- examples/schema.sql: one PostgreSQL 15 schema for the example configs.
--
-- It covers the retention promises of the three seed policies (PersonaPlex,
-- 000_c8f048f99943baf9.txt; Personaizer, 001_0067688c0b7f7a4e.txt;
-- InferLabs, 003_8d55cb58fa7a15ec.txt) in ONE database,
-- so that examples/personaplex.toml, examples/personaizer.toml,
-- examples/inferlabs.toml and the top-level retention.toml can all be
-- checked and planned against it:
--
--   psql -v ON_ERROR_STOP=1 -f examples/schema.sql
--   psql -v ON_ERROR_STOP=1 -f examples/sample-data.sql
--   retentiond check --online -c examples/personaplex.toml
--   retentiond plan -c examples/personaplex.toml
--
-- Conventions retentiond relies on:
--   * every retention age is a timestamptz column (rate_limit_cookies keeps a
--     `timestamp without time zone`, which retentiond reads as UTC);
--   * a NULL age means "not expired": an open account (closed_at IS NULL), a
--     conversation or data source the user has not deleted (deleted_at IS NULL);
--   * dependent rows hang off their parent with ON DELETE CASCADE, so deleting
--     the parent removes them; retentiond follows these cascades to check
--     guards and holds on the child tables (e.g. billing_records);
--   * every age column and every foreign-key column is indexed: rules select
--     by age, and cascades look children up by their FK.
--
-- Plain CREATE TABLE statements, no extensions; run it on an empty database.

------------------------------------------------------------------------------
-- Customer accounts and billing
------------------------------------------------------------------------------

-- accounts: customer accounts.
--   PersonaPlex 6. Data Retention: "Account Data: Retained while your account
--   is active and for 2 years after closure" (rule closed-accounts-2y).
--   Personaizer "How long we keep things": "Account information: while your
--   account is active" (rule closed-accounts-purge).
-- email is nullable on purpose: an account whose invoices must still be kept
-- (see billing_records) outlives its retention period only as the invoices'
-- counterparty, and its email is erased (mask rule, strategy "null").
CREATE TABLE accounts (
    id           bigint      PRIMARY KEY,
    email        text,
    display_name text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz          -- NULL while the account is open
);
CREATE INDEX accounts_created_at_idx ON accounts (created_at);
CREATE INDEX accounts_closed_at_idx ON accounts (closed_at);

-- api_keys: PersonaPlex 2.3 "API keys (hashed for security)". Account data:
-- goes with the account row (ON DELETE CASCADE).
CREATE TABLE api_keys (
    id         bigint      PRIMARY KEY,
    account_id bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key_hash   bytea       NOT NULL,
    label      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_account_id_idx ON api_keys (account_id);
CREATE INDEX api_keys_created_at_idx ON api_keys (created_at);
CREATE INDEX api_keys_revoked_at_idx ON api_keys (revoked_at);

-- billing_records: invoices.
--   PersonaPlex 6: "Billing Records: Retained for 10 years as required by
--   French tax law" (rule billing-10y, and a [[guards]] floor of 10 years).
-- ON DELETE CASCADE from accounts: deleting an account would take its invoices
-- along, so the guard on this table also protects every account that still
-- has an invoice younger than 10 years (retentiond follows the cascade).
-- The invoice carries its own copy of the billing identity (billing_name,
-- country, VAT number): tax law needs those, not the account's email.
CREATE TABLE billing_records (
    id                 bigint      PRIMARY KEY,
    account_id         bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    invoice_number     text        NOT NULL UNIQUE,
    issued_at          timestamptz NOT NULL,
    amount_cents       bigint      NOT NULL CHECK (amount_cents >= 0),
    currency           char(3)     NOT NULL DEFAULT 'EUR',
    billing_name       text        NOT NULL,
    billing_country    char(2)     NOT NULL,
    vat_number         text,
    provider_charge_id text        -- the payment provider's reference; no card data here
);
CREATE INDEX billing_records_account_id_idx ON billing_records (account_id);
CREATE INDEX billing_records_issued_at_idx ON billing_records (issued_at);

-- legal_holds: a register of accounts under legal hold (litigation, fraud
-- investigation, authority request). Used by [[holds]] entries as
--   where = "id IN (SELECT account_id FROM legal_holds WHERE released_at IS NULL)".
-- Deliberately no foreign key: the register outlives the rows it names, and a
-- released hold must not block the account's deletion.
-- account_id is NOT NULL on purpose: retentiond treats a hold whose predicate
-- is NULL as "in doubt" and keeps the row, and `x IN (subquery)` is NULL for
-- every non-member as soon as the subquery yields one NULL.
CREATE TABLE legal_holds (
    id          bigint      PRIMARY KEY,
    account_id  bigint      NOT NULL,
    case_ref    text        NOT NULL,
    reason      text        NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz          -- NULL while the hold is in force
);
CREATE INDEX legal_holds_account_id_idx ON legal_holds (account_id);
CREATE INDEX legal_holds_placed_at_idx ON legal_holds (placed_at);

------------------------------------------------------------------------------
-- PersonaPlex: sessions and session logs
------------------------------------------------------------------------------

-- sessions: session metadata (PersonaPlex 2.2: session IDs, timestamps,
-- duration, API endpoint, "IP addresses (anonymized after 30 days)").
--   Rule anonymize-session-ips-30d masks client_ip to its /24 (IPv4) or /48
--   (IPv6) network after 30 days. The rows themselves are account data and go
--   with the account (ON DELETE CASCADE).
CREATE TABLE sessions (
    id         bigint      PRIMARY KEY,
    account_id bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    endpoint   text        NOT NULL,
    client_ip  inet
);
CREATE INDEX sessions_account_id_idx ON sessions (account_id);
CREATE INDEX sessions_started_at_idx ON sessions (started_at);

-- session_logs: debug/security log lines of a session.
--   PersonaPlex 6: "Session Logs: Retained for 30 days for debugging and
--   security purposes, then deleted" (rule session-logs-30d).
CREATE TABLE session_logs (
    id         bigserial   PRIMARY KEY,
    session_id bigint      NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    account_id bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    level      text        NOT NULL CHECK (level IN ('debug', 'info', 'warn', 'error')),
    message    text        NOT NULL
);
CREATE INDEX session_logs_session_id_idx ON session_logs (session_id);
CREATE INDEX session_logs_account_id_idx ON session_logs (account_id);
CREATE INDEX session_logs_created_at_idx ON session_logs (created_at);

------------------------------------------------------------------------------
-- Users (login identities) and Personaizer security data
------------------------------------------------------------------------------

-- users: people who sign in.
--   InferLabs "Temporary File Storage": "one hour for free users and up to
--   seven days for paid users" (the rules on uploaded_files select by tier).
CREATE TABLE users (
    id         bigint      PRIMARY KEY,
    email      text        NOT NULL UNIQUE,
    tier       text        NOT NULL DEFAULT 'free' CHECK (tier IN ('free', 'paid')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_created_at_idx ON users (created_at);
CREATE INDEX users_tier_idx ON users (tier);

-- refresh_tokens: Personaizer "Authentication refresh tokens: 14 days"
-- (rule refresh-tokens-14d). Only a hash of the token is stored.
CREATE TABLE refresh_tokens (
    id         bigserial   PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    token_hash bytea       NOT NULL UNIQUE
);
CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_issued_at_idx ON refresh_tokens (issued_at);

-- consent_records: Personaizer "End-user consent records: 30 days"
-- (rule consent-records-30d). visitor_id is the anonymous end-user id.
CREATE TABLE consent_records (
    id           bigserial   PRIMARY KEY,
    persona_id   bigint      NOT NULL,
    visitor_id   text        NOT NULL,
    consent_type text        NOT NULL CHECK (consent_type IN ('terms', 'camera', 'microphone', 'analytics')),
    granted      boolean     NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_records_recorded_at_idx ON consent_records (recorded_at);

-- telemetry: Personaizer "Operational telemetry: 90 days, with IP addresses
-- masked" (rules telemetry-mask-ip and telemetry-90d).
-- ip is TEXT as many loggers write it: it may hold an IPv4 or IPv6 address,
-- an X-Forwarded-For list, '' or 'unknown'. ip_prefix masking parses it; what
-- does not parse is replaced (NULL) unless the rule says on_unparsable = "keep".
CREATE TABLE telemetry (
    id          bigserial   PRIMARY KEY,
    observed_at timestamptz NOT NULL DEFAULT now(),
    ip          text,
    user_agent  text,
    event       text        NOT NULL,
    route       text,
    duration_ms integer
);
CREATE INDEX telemetry_observed_at_idx ON telemetry (observed_at);
CREATE INDEX telemetry_event_idx ON telemetry (event);

-- rate_limit_cookies: Personaizer "Cookies & tracking": a single HTTP-only
-- cookie with an anonymous identifier for rate limiting; "It expires after
-- approximately 30 days" (rule rate-limit-cookies-30d).
-- last_seen_at is `timestamp WITHOUT time zone` (legacy column written in
-- UTC wall time); retentiond reads such columns as UTC.
CREATE TABLE rate_limit_cookies (
    id            bigserial PRIMARY KEY,
    cookie_id     text      NOT NULL UNIQUE,
    persona_id    bigint    NOT NULL,
    request_count integer   NOT NULL DEFAULT 0,
    first_seen_at timestamp NOT NULL,
    last_seen_at  timestamp NOT NULL
);
CREATE INDEX rate_limit_cookies_last_seen_at_idx ON rate_limit_cookies (last_seen_at);
CREATE INDEX rate_limit_cookies_first_seen_at_idx ON rate_limit_cookies (first_seen_at);

------------------------------------------------------------------------------
-- InferLabs: uploads, conversations, data sources
------------------------------------------------------------------------------

-- uploaded_files: InferLabs "Temporary File Storage: Files you upload are
-- stored temporarily—for one hour for free users and up to seven days for
-- paid users" (rules uploads-free-1h, uploads-paid-7d; the file content is
-- the object `blob_key` in the uploads bucket).
-- owner_id has NO cascade on purpose: deleting a user must not drop these
-- rows while their objects still exist (that would orphan the blobs); the
-- blob-aware rules remove object and row together.
CREATE TABLE uploaded_files (
    id          bigint      PRIMARY KEY,
    owner_id    bigint      NOT NULL REFERENCES users (id),
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    filename    text        NOT NULL,
    size_bytes  bigint      NOT NULL CHECK (size_bytes >= 0),
    blob_key    text        NOT NULL UNIQUE
);
CREATE INDEX uploaded_files_owner_id_idx ON uploaded_files (owner_id);
CREATE INDEX uploaded_files_uploaded_at_idx ON uploaded_files (uploaded_at);

-- conversations: InferLabs "Conversations and Prompts: Stored for as long as
-- the conversation exists and is not deleted by you" (rule
-- deleted-conversations). The app soft-deletes (deleted_at); retentiond
-- purges the row and, via the cascade, its messages.
CREATE TABLE conversations (
    id         bigint      PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz          -- NULL = still wanted by the user
);
CREATE INDEX conversations_user_id_idx ON conversations (user_id);
CREATE INDEX conversations_created_at_idx ON conversations (created_at);
CREATE INDEX conversations_deleted_at_idx ON conversations (deleted_at);

-- messages: the prompts and answers of a conversation; removed with it.
CREATE TABLE messages (
    id              bigserial   PRIMARY KEY,
    conversation_id bigint      NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role            text        NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    body            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation_id_idx ON messages (conversation_id);
CREATE INDEX messages_created_at_idx ON messages (created_at);

-- data_sources: InferLabs "Complete Control: When you delete a data source,
-- all traces of the data are completely and permanently removed from our
-- servers" (rule deleted-data-sources: the row, its chunks via the cascade,
-- and every object and object version under sources/<id>/).
-- user_id has NO cascade for the same reason as uploaded_files.owner_id.
CREATE TABLE data_sources (
    id         bigint      PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id),
    name       text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('csv', 'xlsx', 'postgres', 'bigquery')),
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz          -- NULL = connected
);
CREATE INDEX data_sources_user_id_idx ON data_sources (user_id);
CREATE INDEX data_sources_created_at_idx ON data_sources (created_at);
CREATE INDEX data_sources_deleted_at_idx ON data_sources (deleted_at);

-- data_source_chunks: parsed/indexed content of a data source; removed with it.
CREATE TABLE data_source_chunks (
    id             bigserial   PRIMARY KEY,
    data_source_id bigint      NOT NULL REFERENCES data_sources (id) ON DELETE CASCADE,
    chunk_no       integer     NOT NULL,
    content        text        NOT NULL,
    embedding      real[],
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (data_source_id, chunk_no)  -- its index also serves the FK (leading column)
);
CREATE INDEX data_source_chunks_created_at_idx ON data_source_chunks (created_at);
