//! Mask rules: IP prefixes on inet/cidr/text, HMAC pseudonyms, null and
//! redact, unparsable values, idempotence.

use crate::chain;
use crate::util::*;
use retentiond::audit::key::load_public;
use sha2::{Digest, Sha256};

fn mask_rule(name: &str, table: &str, columns: &str, extra: &str) -> String {
    format!("[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\nage = \"at\"\nkeep = \"30d\"\naction = \"mask\"\nmax_fraction = 1.0\ncolumns = {columns}\n{extra}\n")
}

const SESSIONS: &str = "
    CREATE TABLE sessions (id int primary key, at timestamptz, ip inet, net cidr, ip_text text, ip_nn varchar(80) not null, ua text);
    INSERT INTO sessions VALUES
      (1, now() - interval '40 days', '203.0.113.77', '203.0.113.77/32', '198.51.100.9', '2001:db8:abcd:1234::1', 'Mozilla/5.0'),
      (2, now() - interval '40 days', '2001:db8:abcd:1234::5', '10.1.0.0/16', '2001:db8:ffff:1::9', '192.0.2.200', 'curl'),
      (3, now() - interval '40 days', '192.0.2.1', '192.0.2.0/24', 'unknown', 'not-an-ip', 'x'),
      (4, now() - interval '40 days', NULL, NULL, NULL, '192.0.2.7', NULL),
      (5, now() - interval '1 day',  '203.0.113.77', '203.0.113.77/32', '198.51.100.9', '198.51.100.9', 'young');";

#[tokio::test]
async fn mask_ip_prefix_on_inet_cidr_text_and_idempotent() {
    let env = Env::new().await;
    env.db.exec(SESSIONS).await;
    let cfg = env.config(&mask_rule(
        "ips",
        "sessions",
        "{ ip = \"ip_prefix\", net = \"ip_prefix\", ip_text = \"ip_prefix\", ip_nn = \"ip_prefix\", ua = \"null\" }",
        "",
    ));
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.rule("ips")["matched"], 4, "{plan}");
    assert_eq!(plan.rule("ips")["unparsable"], 1, "{plan}");
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("ips")["affected"], 4);
    assert_eq!(run.rule("ips")["unparsable"], 1);
    let rows = env
        .db
        .strings("SELECT concat_ws('|', id, ip, net, ip_text, ip_nn, coalesce(ua, 'NULL')) FROM sessions ORDER BY id")
        .await;
    assert_eq!(
        rows,
        [
            "1|203.0.113.0|203.0.113.0/32|198.51.100.0|2001:db8:abcd::|NULL",
            "2|2001:db8:abcd::|10.1.0.0/16|2001:db8:ffff::|192.0.2.0|NULL",
            "3|192.0.2.0|192.0.2.0/24|redacted|NULL",
            "4|192.0.2.0|NULL",
            "5|203.0.113.77|203.0.113.77/32|198.51.100.9|198.51.100.9|young",
        ],
        "masked values"
    );
    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(again.rule("ips")["matched"], 0, "{again}");
    assert_eq!(
        again.rule("ips")["affected"],
        0,
        "a second run touches nothing"
    );
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    assert_eq!(
        chain::of(&records, "run_outcome", "ips")[1]["counts"]["affected"],
        0
    );
}

#[tokio::test]
async fn mask_unparsable_kept_when_asked_and_still_counted() {
    let env = Env::new().await;
    env.db.exec(SESSIONS).await;
    // A kept unparsable value beside a column that does need masking: the
    // row is updated, and the kept value must survive it.
    env.db.exec("INSERT INTO sessions VALUES (7, now() - interval '40 days', NULL, NULL, 'garbage', '192.0.2.9', NULL)").await;
    let cfg = env.config(&mask_rule(
        "ips",
        "sessions",
        "{ ip_text = \"ip_prefix\", ip_nn = \"ip_prefix\" }",
        "on_unparsable = \"keep\"",
    ));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("ips")["affected"], 4);
    assert_eq!(run.rule("ips")["unparsable"], 2);
    assert_eq!(
        env.db
            .strings("SELECT ip_text || '|' || ip_nn FROM sessions WHERE id = 7")
            .await,
        ["garbage|192.0.2.0"]
    );
    assert_eq!(
        env.db
            .strings("SELECT ip_text || '|' || ip_nn FROM sessions WHERE id = 3")
            .await,
        ["unknown|not-an-ip"]
    );
    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(again.rule("ips")["affected"], 0, "{again}");
    assert_eq!(
        again.rule("ips")["unparsable"],
        2,
        "kept values stay visible in the counts"
    );
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let (ipad, opad) = retentiond::store::postgres::sql::hmac_pads(key);
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn pseudonym(key: &[u8], ip: &str) -> String {
    let h = hex::encode(&hmac_sha256(key, ip.as_bytes())[..12]);
    let groups: Vec<&str> = (0..6).map(|i| &h[i * 4..i * 4 + 4]).collect();
    let full: std::net::Ipv6Addr = format!("fd72:6574:{}", groups.join(":")).parse().unwrap();
    full.to_string()
}

#[tokio::test]
async fn mask_hmac_is_keyed_stable_and_idempotent() {
    // The helper is HMAC-SHA-256 itself: RFC 4231 test case 2.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE t (id int primary key, at timestamptz, ip inet, ip_text text);
         INSERT INTO t VALUES (1, now() - interval '40 days', '203.0.113.7', '203.0.113.7'),
                              (2, now() - interval '40 days', '203.0.113.7', '2001:db8::1'),
                              (3, now() - interval '40 days', '198.51.100.1', 'garbage');",
        )
        .await;
    let key_file = env.write("hmac.key", "correct horse battery staple\n");
    let cfg = env.config(&mask_rule(
        "h",
        "t",
        &format!("{{ ip = {{ strategy = \"hmac\", key_file = \"{}\" }}, ip_text = {{ strategy = \"hmac\", key_file = \"{}\" }} }}", key_file.display(), key_file.display()),
        "",
    ));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("h")["affected"], 3);
    let key = b"correct horse battery staple";
    let rows = env
        .db
        .strings("SELECT concat_ws('|', host(ip), coalesce(ip_text, 'NULL')) FROM t ORDER BY id")
        .await;
    assert_eq!(
        rows,
        [
            format!(
                "{}|{}",
                pseudonym(key, "203.0.113.7"),
                pseudonym(key, "203.0.113.7")
            ),
            format!(
                "{}|{}",
                pseudonym(key, "203.0.113.7"),
                pseudonym(key, "2001:db8::1")
            ),
            format!(
                "{}|hmac:{}",
                pseudonym(key, "198.51.100.1"),
                hex::encode(&hmac_sha256(key, b"garbage")[..16])
            ),
        ]
    );
    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(
        again.rule("h")["affected"],
        0,
        "pseudonyms are recognised as masked: {again}"
    );
}

#[tokio::test]
async fn mask_ip_prefix_refuses_a_column_that_is_not_ip_addresses() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE users (id int primary key, at timestamptz, email text, ip text);
         INSERT INTO users SELECT i, now() - interval '40 days', 'user' || i || '@example.com', '192.0.2.' || i FROM generate_series(1, 10) i;",
    )
    .await;
    let cfg = env.config(&format!(
        "{}{}",
        mask_rule("wrong", "users", "{ email = \"ip_prefix\" }", ""),
        mask_rule(
            "email-pseudonym",
            "users",
            "{ email = { strategy = \"hmac\", key_env = \"MASK_KEY\" } }",
            ""
        )
    ));
    let cfg_s = cfg.display().to_string();
    let run = retentiond(
        &["run", "-c", &cfg_s, "--format", "json", "--rule", "wrong"],
        &[("MASK_KEY", "k")],
    );
    assert_eq!(run.code, 3, "{run}");
    assert!(
        run.rule("wrong")["reason"]
            .as_str()
            .unwrap()
            .contains("not an IP address"),
        "{run}"
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM users WHERE email LIKE '%@example.com'")
            .await,
        10,
        "nothing wiped"
    );
    // hmac pseudonymises any text, stably.
    let run = retentiond(
        &[
            "run",
            "-c",
            &cfg_s,
            "--format",
            "json",
            "--rule",
            "email-pseudonym",
        ],
        &[("MASK_KEY", "k")],
    );
    assert_eq!(run.code, 0, "{run}");
    let expected = format!(
        "hmac:{}",
        hex::encode(&hmac_sha256(b"k", b"user1@example.com")[..16])
    );
    assert_eq!(
        env.db.strings("SELECT email FROM users WHERE id = 1").await,
        [expected]
    );
    let again = retentiond(
        &[
            "run",
            "-c",
            &cfg_s,
            "--format",
            "json",
            "--rule",
            "email-pseudonym",
        ],
        &[("MASK_KEY", "k")],
    );
    assert_eq!(again.rule("email-pseudonym")["affected"], 0, "{again}");
}

#[tokio::test]
async fn mask_rejects_wrong_column_types() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE t (id int primary key, at timestamptz, ip int, name text not null);
         INSERT INTO t VALUES (1, now() - interval '40 days', 1, 'a');",
        )
        .await;
    let cfg = env.config(&format!(
        "{}{}",
        mask_rule("int", "t", "{ ip = \"ip_prefix\" }", ""),
        mask_rule("nn", "t", "{ name = \"null\" }", "")
    ));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 3, "{run}");
    assert!(
        run.rule("int")["reason"]
            .as_str()
            .unwrap()
            .contains("masks inet, cidr or text columns"),
        "{run}"
    );
    assert!(
        run.rule("nn")["reason"]
            .as_str()
            .unwrap()
            .contains("NOT NULL"),
        "{run}"
    );
}

/// IP text as real columns hold it: an IPv4-mapped IPv6 address is masked
/// as IPv4; `ip:port` and `[v6]:port` lose the port (or keep it with
/// `keep_port`), a forwarded-for list is masked element by element, and an
/// empty string stays empty without counting as unparsable. Every form is
/// idempotent.
#[tokio::test]
async fn mask_ip_forms_real_columns_hold() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE hits (id int primary key, at timestamptz, addr text, addr_port text, mapped inet, mapped_net cidr);
             INSERT INTO hits VALUES
               (1, now() - interval '40 days', '::ffff:198.51.100.88', '198.51.100.88:52144', '::ffff:198.51.100.88', '::ffff:198.51.100.88/128'),
               (2, now() - interval '40 days', '[2001:db8:abcd:12::7]:443', '[2001:db8:abcd:12::7]:443', '2001:db8:abcd:12::7', NULL),
               (3, now() - interval '40 days', '203.0.113.9, 198.51.100.4,2001:db8:1:2::3', '203.0.113.9:80, [2001:db8:1:2::3]:8080', NULL, NULL),
               (4, now() - interval '40 days', '', '', NULL, NULL),
               (5, now() - interval '40 days', '[2001:db8:abcd:12::7]', 'unknown, 203.0.113.9', NULL, NULL);",
        )
        .await;
    let cfg = env.config(&mask_rule(
        "hits",
        "hits",
        "{ addr = \"ip_prefix\", addr_port = { strategy = \"ip_prefix\", keep_port = true }, mapped = \"ip_prefix\", mapped_net = \"ip_prefix\" }",
        "on_unparsable = \"keep\"",
    ));
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    assert_eq!(
        plan.rule("hits")["unparsable"],
        1,
        "only `unknown, 203.0.113.9`; the empty strings are not: {plan}"
    );
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("hits")["affected"], 4, "{run}");
    let rows = env
        .db
        .strings("SELECT concat_ws('|', id, addr, addr_port, coalesce(host(mapped), '-'), coalesce(mapped_net::text, '-')) FROM hits ORDER BY id")
        .await;
    assert_eq!(
        rows,
        [
            "1|::ffff:198.51.100.0|198.51.100.0:52144|::ffff:198.51.100.0|::ffff:198.51.100.0/128",
            "2|2001:db8:abcd::|[2001:db8:abcd::]:443|2001:db8:abcd::|-",
            "3|203.0.113.0, 198.51.100.0, 2001:db8:1::|203.0.113.0:80, [2001:db8:1::]:8080|-|-",
            "4|||-|-",
            "5|2001:db8:abcd::|unknown, 203.0.113.9|-|-",
        ]
    );
    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(again.rule("hits")["affected"], 0, "idempotent: {again}");

    // Without keep_port, the port goes; keep_port belongs to ip_prefix only.
    env.db
        .exec("UPDATE hits SET addr_port = '198.51.100.88:52144' WHERE id = 1")
        .await;
    let cfg = env.config(&mask_rule(
        "hits",
        "hits",
        "{ addr_port = \"ip_prefix\" }",
        "on_unparsable = \"keep\"",
    ));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        env.db
            .strings("SELECT addr_port FROM hits WHERE id IN (1, 2) ORDER BY id")
            .await,
        ["198.51.100.0", "2001:db8:abcd::"]
    );
    let bad = env.config(&mask_rule(
        "hits",
        "hits",
        "{ addr = { strategy = \"redact\", keep_port = true } }",
        "",
    ));
    let out = retentiond(&["check", "-c", &bad.display().to_string()], &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains("`redact` takes no `keep_port`"),
        "{out}"
    );
}

/// Personal data inside JSON: only the named paths change (a `json` value
/// keeps its key order), missing paths and JSON nulls are fine, `redact`
/// writes the string "redacted", the column keeps its type, and a second
/// run changes nothing.
#[tokio::test]
async fn mask_json_paths_change_only_what_they_name() {
    let env = Env::new().await;
    env.db
        .exec(
            r#"CREATE TABLE audit_log (id int primary key, at timestamptz, payload jsonb, raw json);
             INSERT INTO audit_log VALUES
               (1, now() - interval '40 days',
                '{"actor_username": "alice@example.com", "traits": {"ip": "198.51.100.88", "plan": "pro"}, "action": "login"}',
                '{"z": 1, "actor_username": "bob", "a": {"ip": "203.0.113.5:4711"}, "z": 2}'),
               (2, now() - interval '40 days', '{"action": "logout"}', '{"x": [1, 2]}'),
               (3, now() - interval '40 days', '{"actor_username": null, "traits": {"ip": "unknown"}}', NULL),
               (4, now(), '{"actor_username": "young@example.com"}', NULL);"#,
        )
        .await;
    let cfg = env.config(&mask_rule(
        "audit",
        "audit_log",
        r#"{ payload = { "$.actor_username" = "redact", "$.traits.ip" = "ip_prefix" }, raw = { "$.actor_username" = "redact", "$.a.ip" = { strategy = "ip_prefix", keep_port = true } } }"#,
        "",
    ));
    let check = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &[],
    );
    assert_eq!(check.code, 0, "{check}");
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.rule("audit")["matched"], 2, "rows 1 and 3: {plan}");
    assert_eq!(plan.rule("audit")["unparsable"], 1, "{plan}");
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("audit")["affected"], 2, "{run}");
    let same = |id: i32, json: &str| {
        format!("SELECT count(*) FROM audit_log WHERE id = {id} AND payload = '{json}'::jsonb")
    };
    assert_eq!(
        env.db
            .count(&same(
                1,
                r#"{"actor_username": "redacted", "traits": {"ip": "198.51.100.0", "plan": "pro"}, "action": "login"}"#
            ))
            .await,
        1
    );
    assert_eq!(env.db.count(&same(2, r#"{"action": "logout"}"#)).await, 1);
    assert_eq!(
        env.db
            .count(&same(
                3,
                r#"{"actor_username": null, "traits": {"ip": null}}"#
            ))
            .await,
        1,
        "an unparsable IP is replaced by null (on_unparsable = \"replace\")"
    );
    assert_eq!(
        env.db
            .count(&same(4, r#"{"actor_username": "young@example.com"}"#))
            .await,
        1
    );
    // json keeps its key order, duplicates included, and its type.
    let raw = env
        .db
        .strings("SELECT concat_ws('|', (SELECT string_agg(k, ',') FROM json_object_keys(raw) k), raw->>'actor_username', raw->'a'->>'ip', pg_typeof(raw)::text) FROM audit_log WHERE id = 1")
        .await;
    assert_eq!(raw, ["z,actor_username,a,z|redacted|203.0.113.0:4711|json"]);
    assert_eq!(
        env.db
            .strings("SELECT raw::text FROM audit_log WHERE id = 2")
            .await,
        [r#"{"x": [1, 2]}"#],
        "a document without the paths is not rewritten"
    );
    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(again.rule("audit")["affected"], 0, "idempotent: {again}");

    // A path that is not one, and a strategy the column type cannot take.
    for (columns, expected) in [
        (
            r#"{ payload = { "actor" = "redact" } }"#,
            "`actor` is not a JSON path",
        ),
        (
            r#"{ payload = "ip_prefix" }"#,
            "in a json column, name the paths",
        ),
    ] {
        let cfg = env.config(&mask_rule("audit", "audit_log", columns, ""));
        let out = retentiond(
            &["check", "--online", "-c", &cfg.display().to_string()],
            &[],
        );
        assert_eq!(out.code, 2, "{columns}: {out}");
        assert!(out.stderr.contains(expected), "{expected}: {out}");
    }
}

/// A chat server's `user_ips` has `UNIQUE (user_id, access_token, ip)`: two
/// IPs of one token in the same /24 collide when masked. The plan predicts
/// the conflicts; `skip` keeps them unmasked and counted (the run is ok),
/// `delete` deletes them (the row they duplicate carries all that may be
/// kept) unless a guard keeps them; every removal is in the records.
#[tokio::test]
async fn mask_unique_key_conflicts_are_predicted_then_skipped_or_deleted() {
    let env = Env::new().await;
    let ms = |age: &str| format!("(extract(epoch FROM now() - interval '{age}') * 1000)::int8");
    let (old, mid, young) = (ms("100 days"), ms("40 days"), ms("1 day"));
    for table in ["user_ips", "user_ips_d"] {
        env.db
            .exec(&format!(
                "CREATE TABLE {table} (id int, user_id text, access_token text, ip text, last_seen bigint,
                                       UNIQUE (user_id, access_token, ip));
                 INSERT INTO {table} VALUES
                   (1, 'u1', 'tokA', '198.51.100.7', {old}),
                   (2, 'u1', 'tokA', '198.51.100.9', {old}),   -- same /24, same token: conflict
                   (3, 'u1', 'tokA', '203.0.113.0', {young}),  -- not due; its value is taken
                   (4, 'u1', 'tokA', '203.0.113.5', {old}),    -- masks to row 3's value: conflict
                   (5, 'u2', 'tokB', '198.51.100.7', {old}),
                   (6, 'u1', 'tokC', '198.51.100.8', {old}),
                   (7, 'u4', 'tokE', '192.0.2.1', {mid}),
                   (8, 'u4', 'tokE', '192.0.2.2', {mid});      -- conflict; a guard keeps it from deletion"
            ))
            .await;
    }
    let rule = |name: &str, table: &str, on_conflict: &str| {
        format!(
            "[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\nage = \"last_seen\"\nage_unit = \"ms\"\nkeep = \"30d\"\naction = \"mask\"\nmax_fraction = 1.0\ncolumns = {{ ip = \"ip_prefix\" }}\n{on_conflict}\n\n"
        )
    };
    let body = [
        rule("skip", "user_ips", ""),
        rule("delete", "user_ips_d", "on_conflict = \"delete\""),
        "[[guards]]\nstore = \"app\"\ntable = \"user_ips_d\"\nage = \"last_seen\"\nage_unit = \"ms\"\nmin_keep = \"90d\"\nreason = \"abuse investigations\"\n".to_string(),
    ]
    .concat();
    let cfg = env.config(&body);
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    for r in ["skip", "delete"] {
        assert_eq!(
            (
                plan.rule(r)["matched"].as_i64(),
                plan.rule(r)["conflicts"].as_i64()
            ),
            (Some(4), Some(3)),
            "{r}: {plan}"
        );
    }
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "conflicts do not fail a run: {run}");
    let skip = run.rule("skip");
    assert_eq!(
        (skip["affected"].as_i64(), skip["conflicts"].as_i64()),
        (Some(4), Some(3)),
        "{run}"
    );
    assert!(skip.get("conflicts_deleted").is_none(), "{run}");
    let del = run.rule("delete");
    assert_eq!(
        (
            del["affected"].as_i64(),
            del["conflicts"].as_i64(),
            del["conflicts_deleted"].as_i64()
        ),
        (Some(4), Some(3), Some(2)),
        "{run}"
    );
    let rows = |table: &str| {
        let sql = format!("SELECT id || ':' || ip FROM {table} ORDER BY id");
        let env = &env;
        async move { env.db.strings(&sql).await }
    };
    assert_eq!(
        rows("user_ips").await,
        [
            "1:198.51.100.0",
            "2:198.51.100.9",
            "3:203.0.113.0",
            "4:203.0.113.5",
            "5:198.51.100.0",
            "6:198.51.100.0",
            "7:192.0.2.0",
            "8:192.0.2.2"
        ]
    );
    assert_eq!(
        rows("user_ips_d").await,
        [
            "1:198.51.100.0",
            "3:203.0.113.0",
            "5:198.51.100.0",
            "6:198.51.100.0",
            "7:192.0.2.0",
            "8:192.0.2.2"
        ],
        "rows 2 and 4 deleted; 8 kept by the guard"
    );
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let outcome = &chain::of(&records, "run_outcome", "delete")[0];
    assert_eq!(outcome["counts"]["conflicts"], 3, "{outcome}");
    assert_eq!(outcome["counts"]["conflicts_deleted"], 2, "{outcome}");
    let intent = &chain::of(&records, "run_intent", "delete")[0];
    assert_eq!(intent["planned"]["conflicts"], 3, "{intent}");

    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.rule("skip")["conflicts"], 3, "{again}");
    assert_eq!(again.rule("skip")["affected"], 0, "{again}");
    assert_eq!(again.rule("delete")["conflicts"], 1, "{again}");
    assert_eq!(again.rule("delete")["affected"], 0, "{again}");

    // Deleting a conflict must not take other tables' rows along.
    env.db
        .exec("CREATE TABLE sessions_ip (id int primary key, at timestamptz, ip text UNIQUE);
               CREATE TABLE session_notes (id int primary key, session_id int REFERENCES sessions_ip(id) ON DELETE CASCADE);")
        .await;
    let cfg = env.config(&mask_rule(
        "cascading",
        "sessions_ip",
        "{ ip = \"ip_prefix\" }",
        "on_conflict = \"delete\"",
    ));
    let plan = json_cmd("plan", &cfg, &[]);
    assert!(
        plan.rule("cascading")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("would cascade into public.session_notes"),
        "{plan}"
    );
    // Nor change them: ON DELETE SET NULL is refused as well.
    env.db
        .exec("DROP TABLE session_notes;
               CREATE TABLE session_tags (id int primary key, session_id int REFERENCES sessions_ip(id) ON DELETE SET NULL);")
        .await;
    let plan = json_cmd("plan", &cfg, &[]);
    assert!(
        plan.rule("cascading")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("would change public.session_tags (session_tags_session_id_fkey)"),
        "{plan}"
    );
}

/// `hmac` inside JSON paths: an email gets a text pseudonym, an IP an
/// address one, each path with its own key, stable across runs.
#[tokio::test]
async fn mask_json_paths_take_hmac_with_their_own_keys() {
    let env = Env::new().await;
    env.db
        .exec(
            r#"CREATE TABLE events (id int primary key, at timestamptz, meta jsonb);
             INSERT INTO events VALUES
               (1, now() - interval '40 days', '{"email": "a@example.com", "net": {"ip": "198.51.100.7"}, "n": 1}'),
               (2, now() - interval '40 days', '{"email": "a@example.com"}');"#,
        )
        .await;
    let cfg = env.config(&mask_rule(
        "meta",
        "events",
        r#"{ meta = { "$.email" = { strategy = "hmac", key_env = "K1" }, "$.net.ip" = { strategy = "hmac", key_env = "K2" } } }"#,
        "",
    ));
    let cfg_s = cfg.display().to_string();
    let keys = [("K1", "first key"), ("K2", "second key")];
    let run = retentiond(&["run", "-c", &cfg_s, "--format", "json"], &keys);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("meta")["affected"], 2, "{run}");
    let rows = env
        .db
        .strings("SELECT concat_ws('|', meta->>'email', coalesce(meta->'net'->>'ip', '-'), coalesce(meta->>'n', '-')) FROM events ORDER BY id")
        .await;
    let (email, ip) = rows[0].split_once('|').unwrap();
    assert!(email.starts_with("hmac:") && email.len() == 37, "{rows:?}");
    assert!(
        ip.starts_with("fd72:6574:") && ip.ends_with("|1"),
        "{rows:?}"
    );
    assert_eq!(
        rows[1],
        format!("{email}|-|-"),
        "same input, same pseudonym"
    );
    let again = retentiond(&["run", "-c", &cfg_s, "--format", "json"], &keys);
    assert_eq!(again.rule("meta")["affected"], 0, "idempotent: {again}");
}
