-- examples/real-schemas.sql: tables shaped the way widely used open-source
-- systems store time, for examples/real-schemas.toml. Column names and types
-- follow their published schemas (a chat server's epoch-millisecond presence
-- and epoch-second rooms, an auth server's sessions and refresh tokens, a
-- daily rollup keyed by date); the data is yours to load.

CREATE SCHEMA IF NOT EXISTS auth;

-- Chat server: times as integers.
CREATE TABLE presence_stream (
    stream_id      bigint PRIMARY KEY,
    user_id        text NOT NULL,
    state          text NOT NULL,
    last_active_ts bigint NOT NULL          -- milliseconds since the epoch
);

CREATE TABLE room_stats_state (
    room_id     text PRIMARY KEY,
    name        text,
    creation_ts bigint                      -- milliseconds; NULL for old rooms
);

-- Auth server: a session ages by its newest activity.
CREATE TABLE auth.sessions (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz,
    refreshed_at timestamp without time zone,
    not_after    timestamptz
);

CREATE TABLE auth.refresh_tokens (
    id         bigserial PRIMARY KEY,
    token      text NOT NULL UNIQUE,
    session_id uuid REFERENCES auth.sessions(id) ON DELETE CASCADE,
    revoked    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz
);

-- A daily rollup: the age is a day.
CREATE TABLE usage_daily (
    day      date NOT NULL,
    user_id  uuid NOT NULL,
    requests bigint NOT NULL,
    PRIMARY KEY (day, user_id)
);

-- Per-plan retention: the period is data.
CREATE TABLE plans (
    id         text PRIMARY KEY,
    upload_ttl interval                     -- '1 hour' free, '7 days' paid
);

CREATE TABLE accounts (
    id      bigint PRIMARY KEY,
    plan_id text REFERENCES plans(id)
);

CREATE TABLE uploads (
    id          bigserial PRIMARY KEY,
    account_id  bigint REFERENCES accounts(id),
    uploaded_at timestamptz NOT NULL
);

-- Chat server: client IPs per access token, unique per (user, token, ip);
-- two IPs of one token in the same /24 collide when masked.
CREATE TABLE user_ips (
    user_id      text NOT NULL,
    access_token text NOT NULL,
    device_id    text,
    ip           text NOT NULL,          -- 'a.b.c.d', '::ffff:a.b.c.d', 'a.b.c.d:port'
    user_agent   text,
    last_seen    bigint NOT NULL,        -- milliseconds since the epoch
    UNIQUE (user_id, access_token, ip)
);

-- Identity provider: an audit log whose payload holds personal data.
CREATE TABLE audit_log_entries (
    id          uuid PRIMARY KEY,
    payload     json,                    -- {"actor_username": ..., "traits": {"ip": ...}, ...}
    created_at  timestamptz NOT NULL,
    ip_address  varchar(64) NOT NULL DEFAULT ''   -- '' when unknown; may be 'a, b' (forwarded-for)
);
