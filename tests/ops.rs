//! The operator's view of a running node: `--http-listen` serves
//! `/metrics` (Prometheus text with every metric the README names, values
//! that follow the puts), `/healthz` and `/readyz`; readiness names its
//! reason (recovering, quarantined table, shutting down); the Flight
//! `metrics` action renders the same registry; `--log-format json` gives
//! one JSON object per line and the default filter keeps dependencies'
//! `info` lines out. Also TLS with bearer tokens through `pyarrow.flight`.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::python::{python_with, run_bounded, script, PYARROW};
use common::{command, http_get, put_inserts, sample, wait_durable, InProcessNode, ServeProcess};

/// Every metric the issue asks for, by the name Prometheus shows.
const REQUIRED_METRICS: [&str; 14] = [
    "flightlog_put_requests_total",
    "flightlog_ack_seconds_bucket",
    "flightlog_wal_fsyncs_total",
    "flightlog_wal_fsync_seconds_bucket",
    "flightlog_wal_bytes_total",
    "flightlog_wal_segments",
    "flightlog_pending_bytes",
    "flightlog_flush_commits_total",
    "flightlog_flush_failures_total",
    "flightlog_flush_seconds_bucket",
    "flightlog_flush_rows_total",
    "flightlog_origin_memory_sequence",
    "flightlog_origin_durable_sequence",
    "flightlog_durable_lag_seconds",
];

// terminate() blocks a thread; the client needs another to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let node = ServeProcess::start(
        &data,
        &["--http-listen", "127.0.0.1:0", "--max-lag-ms", "20"],
    );
    let http: SocketAddr = node.start_field("http").parse().expect("http address");
    assert_eq!(http_get(http, "/healthz").0, 200);
    let (status, body) = http_get(http, "/readyz");
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));

    let mut client = node.client().await;
    for sequence in 1..=3u64 {
        let ids = (sequence as i64 * 10)..(sequence as i64 * 10 + 5);
        put_inserts(
            &mut client,
            &command("ops/metrics", "ops-origin", Some(sequence)),
            ids,
        )
        .await;
    }
    wait_durable(&mut client, "ops/metrics", "ops-origin", 3).await;

    let (status, text) = http_get(http, "/metrics");
    assert_eq!(status, 200, "{text}");
    for name in REQUIRED_METRICS {
        assert!(
            text.lines().any(|line| line.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let ok = sample(&text, r#"flightlog_put_requests_total{code="ok"}"#).expect("ok puts counted");
    assert!(ok >= 3.0, "3 puts and the probes answered ok, counted {ok}");
    assert_eq!(
        sample(
            &text,
            r#"flightlog_origin_memory_sequence{origin="ops-origin"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"flightlog_origin_durable_sequence{origin="ops-origin"}"#
        ),
        Some(3.0)
    );
    assert!(
        sample(&text, "flightlog_flush_rows_total").is_some_and(|rows| rows >= 15.0),
        "{text}"
    );
    assert!(
        sample(&text, "flightlog_wal_fsyncs_total").is_some_and(|n| n >= 3.0),
        "{text}"
    );
    assert!(
        sample(&text, "flightlog_ack_seconds_count").is_some_and(|n| n >= 3.0),
        "{text}"
    );
    assert_eq!(sample(&text, "flightlog_tables_quarantined"), Some(0.0));
    assert_eq!(http_get(http, "/nothing-here").0, 404);

    // The Flight action renders the same registry.
    let action = arrow_flight::Action::new(
        flightlog::flight::METRICS_ACTION,
        flightlog::flight::METRICS_PROMETHEUS_BODY.to_vec(),
    );
    let results: Vec<bytes::Bytes> =
        futures::TryStreamExt::try_collect(client.do_action(action).await.expect("metrics action"))
            .await
            .expect("metrics action results");
    let flight_text = String::from_utf8(results[0].to_vec()).expect("utf-8");
    for name in REQUIRED_METRICS {
        assert!(
            flight_text.contains(name),
            "{name} missing from the Flight action:\n{flight_text}"
        );
    }
    // The client's connection is driven by this test's runtime, which
    // terminate() blocks: close it first so the graceful stop can finish.
    drop(client);
    let status = node.terminate();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn readiness_names_quarantine_and_shutdown() {
    let node = InProcessNode::start(|_| {}).await;
    let health = flightlog::ops::http::Health::new();
    assert_eq!(
        health.readiness().expect_err("not set yet")["reason"],
        "recovering"
    );
    health.set_node(node.node.clone());
    assert!(health.readiness().is_ok());

    let table = node
        .node
        .admission()
        .table_id(&command("ops/stuck", "o", None), true)
        .expect("table id");
    node.node.pending().quarantine(
        &table,
        flightlog::pending::Quarantine {
            reason: "the store refuses writes".into(),
            since: tokio::time::Instant::now(),
            failures: 3,
        },
    );
    let reason = health.readiness().expect_err("quarantined");
    assert_eq!(reason["reason"], "table_quarantined");
    assert_eq!(reason["tables"][0]["table"], table.to_string());
    assert_eq!(reason["tables"][0]["reason"], "the store refuses writes");
    assert!(node.node.pending().lift_quarantine(&table));
    assert!(health.readiness().is_ok());

    node.node.begin_shutdown();
    assert_eq!(
        health.readiness().expect_err("stopping")["reason"],
        "shutting_down"
    );
}

// terminate() blocks a thread; the client needs another to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_keep_dependencies_info_lines_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let node = ServeProcess::start(&data, &["--log-format", "json", "--max-lag-ms", "20"]);
    let mut client = node.client().await;
    put_inserts(
        &mut client,
        &command("ops/logs", "log-origin", Some(1)),
        0..10,
    )
    .await;
    wait_durable(&mut client, "ops/logs", "log-origin", 1).await;
    let log_path = node.log_path.clone();
    drop(client);
    assert!(node.terminate().success());
    let log = std::fs::read_to_string(&log_path).expect("the node's log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(
        lines.iter().any(|line| line["message"] == "flushed"
            && line["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("flightlog"))),
        "the node's own flush line is there:\n{log}"
    );
    for line in &lines {
        let target = line["target"].as_str().unwrap_or_default();
        let level = line["level"].as_str().unwrap_or_default();
        assert!(
            target.starts_with("flightlog") || matches!(level, "WARN" | "ERROR"),
            "a dependency's {level} line passed the default filter: {line}"
        );
    }
}

/// `openssl req` for a CA, and a server (127.0.0.1) and a client certificate signed by it.
fn make_certificates(dir: &std::path::Path) -> Result<(), String> {
    let run = |args: &[&str]| {
        run_bounded(
            Command::new("openssl").args(args).current_dir(dir),
            std::time::Duration::from_secs(60),
        )
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flightlog test CA",
    ])?;
    // One leaf certificate signed by the CA: `<name>.key`, `<name>.pem`.
    let issue = |name: &str, subject: &str, extensions: &str| {
        let (key, csr, ext, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
            format!("{name}.pem"),
        );
        run(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ])?;
        std::fs::write(dir.join(&ext), extensions).map_err(|e| e.to_string())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])
    };
    issue(
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    issue(
        "client",
        "/CN=flightlog test client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
}

// terminate() blocks a thread; the client needs another to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_writes_over_tls_with_a_token_or_a_client_certificate_and_is_refused_without() {
    let python = match python_with(&[PYARROW]) {
        Ok(python) => python,
        Err(reason) => {
            eprintln!("SKIPPED: no Python with pyarrow: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    if let Err(reason) = make_certificates(dir.path()) {
        eprintln!("SKIPPED: cannot make test certificates with openssl: {reason}");
        return;
    }
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# test tokens\nwriter-token-1\nlimited-token-2 s3://elsewhere/only\n",
    )
    .expect("write tokens");
    let data = dir.path().join("node");
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let node = ServeProcess::start(
        &data,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8 path"),
            "--tls-key",
            key.to_str().expect("utf-8 path"),
            "--auth-token-file",
            tokens.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(node.start_field("tls"), "on");
    assert_eq!(node.start_field("auth"), "tokens");
    let ca = dir.path().join("ca.pem");
    let output = Command::new(&python)
        .arg(script("ops_tls.py"))
        .arg(node.addr.to_string())
        .arg(&ca)
        .args(["writer-token-1", "limited-token-2"])
        .output()
        .expect("run ops_tls.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("ok"),
        "ops_tls.py failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    // SIGHUP re-reads the token file: the old token stops working.
    std::fs::write(&tokens, "rotated-token-3\n").expect("rotate tokens");
    let hup = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    common::poll_until("the node to log the token reload", || {
        let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        async move { log.contains("token file re-read").then_some(()) }
    })
    .await;
    let output = Command::new(&python)
        .arg(script("ops_tls.py"))
        .args(["rotated", &node.addr.to_string()])
        .arg(&ca)
        .args(["rotated-token-3", "writer-token-1"])
        .output()
        .expect("run ops_tls.py rotated");
    assert!(
        output.status.success(),
        "ops_tls.py rotated failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let log = std::fs::read_to_string(&node.log_path).expect("log");
    for token in ["writer-token-1", "limited-token-2", "rotated-token-3"] {
        assert!(!log.contains(token), "a token is in the log:\n{log}");
    }
    assert!(node.terminate().success());

    // Client certificates: --tls-client-ca.
    let node = ServeProcess::start(
        &dir.path().join("mtls-node"),
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8 path"),
            "--tls-key",
            key.to_str().expect("utf-8 path"),
            "--tls-client-ca",
            ca.to_str().expect("utf-8 path"),
        ],
    );
    let output = Command::new(&python)
        .arg(script("ops_tls.py"))
        .args(["mtls", &node.addr.to_string()])
        .arg(&ca)
        .arg(dir.path().join("client.pem"))
        .arg(dir.path().join("client.key"))
        .output()
        .expect("run ops_tls.py mtls");
    assert!(
        output.status.success(),
        "ops_tls.py mtls failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(node.terminate().success());
}
