use crate::util::*;

#[tokio::test]
async fn smoke_plan_then_run() {
    let env = Env::new().await;
    env.db.exec("CREATE TABLE session_logs (id bigserial primary key, created_at timestamptz, body text);
        INSERT INTO session_logs (created_at, body) SELECT now() - (i || ' days')::interval, 'x' FROM generate_series(1, 60) i;").await;
    let cfg = env.config("[[rules]]\nname = \"s\"\nstore = \"app\"\ntable = \"session_logs\"\nage = \"created_at\"\nkeep = \"30d\"\naction = \"delete\"\nmax_fraction = 0.6\n");
    let plan = json_cmd("plan", &cfg, &[]);
    println!("{plan}");
    let run = json_cmd("run", &cfg, &[]);
    println!("{run}");
    assert_eq!(run.code, 0);
    let out = retentiond(&["audit", "log", "-c", &cfg.display().to_string()], &[]);
    println!("{out}");
}
