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
