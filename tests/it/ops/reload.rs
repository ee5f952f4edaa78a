//! SIGHUP: a new certificate for new handshakes while an old connection
//! keeps its socket, routes added and changed, a broken file keeping the
//! running configuration, and the reload metrics.

use http::StatusCode;

use super::certs::Ca;
use super::tls_client::{connect, der_of, get_once, presented, Conn};
use crate::support::client::get;
use crate::support::fedgate::Builder;
use crate::support::Fedgate;

/// The value of the sample `name` (with its labels, as printed) in /metrics.
async fn metric(fedgate: &Fedgate, name: &str) -> Option<f64> {
    let (status, _, body) = get(fedgate.admin.expect("admin listener"), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

const OK: &str = "fedgate_config_reloads_total{result=\"ok\"}";
const FAILED: &str = "fedgate_config_reloads_total{result=\"failed\"}";
const LAST: &str = "fedgate_config_last_reload_success_timestamp_seconds";
const RELOADED: &str = "configuration reloaded";
const FAILED_LOG: &str = "configuration reload failed: the running configuration is kept";

#[tokio::test]
async fn a_new_certificate_serves_new_handshakes_and_old_connections_keep_working() {
    let server = || Builder::default().tls().admin().route("/whoami", "builtin:whoami", "");
    let fedgate = server().start();
    let addr = fedgate.tls.unwrap();
    let old_cert = fedgate.cert_path();
    let old_der = der_of(&old_cert);

    let stream = connect(addr, &old_cert, None).await.unwrap();
    assert_eq!(presented(&stream), old_der);
    let mut kept = Conn::new(stream).await.unwrap();
    assert_eq!(kept.get("/whoami").await.unwrap().0, StatusCode::OK);
    let started_at = metric(&fedgate, LAST).await.expect("last reload gauge");

    // A new pair from a CA, written over the configured files.
    let dir = fedgate.dir.path();
    let ca = Ca::new(dir, "reload test CA");
    let issued = ca.server(dir, "next");
    std::fs::copy(&issued.cert, dir.join("tls/cert.pem")).unwrap();
    std::fs::copy(&issued.key, dir.join("tls/key.pem")).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_events(RELOADED, 1);

    let fresh = connect(addr, &ca.file, None)
        .await
        .expect("a handshake trusting the new CA");
    assert_eq!(presented(&fresh), der_of(&issued.cert));
    let mut fresh = Conn::new(fresh).await.unwrap();
    assert_eq!(fresh.get("/whoami").await.unwrap().0, StatusCode::OK);
    let stale = get_once(addr, &old_cert, None, "/whoami").await;
    assert!(
        stale.is_err(),
        "a client trusting only the old certificate got through: {stale:?}"
    );

    // The connection opened before the reload, on its same socket.
    for _ in 0..3 {
        assert_eq!(kept.get("/whoami").await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(metric(&fedgate, OK).await, Some(1.0));
    assert_eq!(metric(&fedgate, FAILED).await, Some(0.0));
    assert!(metric(&fedgate, LAST).await.unwrap() >= started_at);
}

#[tokio::test]
async fn reloaded_routes_are_served_and_a_broken_file_keeps_the_running_ones() {
    let first = || Builder::default().admin().route("/whoami", "builtin:whoami", "");
    let fedgate = first().start();
    let plain = fedgate.plain;
    let config = fedgate.config_path().to_owned();
    let dir = fedgate.dir.path().to_owned();
    assert_eq!(get(plain, "/added").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(plain, "/whoami").await.0, StatusCode::OK);
    assert_eq!(metric(&fedgate, OK).await, Some(0.0));

    // /whoami now signs in (changed), /added is new, and one key that
    // needs a restart changed too.
    let second = Builder::default()
        .admin()
        .server("shutdown_grace = \"7s\"")
        .cloud_route("/whoami", "builtin:whoami", "")
        .route("/added", "builtin:whoami", "");
    std::fs::write(&config, second.config_text(&dir)).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_events(RELOADED, 1);
    assert_eq!(get(plain, "/added").await.0, StatusCode::OK);
    assert_eq!(get(plain, "/whoami").await.0, StatusCode::UNAUTHORIZED);
    let restart = fedgate.events("changed, needs a restart: the running value is kept");
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert_eq!(restart[0]["key"], "server.shutdown_grace");

    // A file that does not parse.
    std::fs::write(&config, "[server\nlisten_plain = ").unwrap();
    fedgate.signal("HUP");
    fedgate.wait_events(FAILED_LOG, 1);
    let failed = &fedgate.events(FAILED_LOG)[0];
    assert!(
        failed["error"].as_str().unwrap().contains("fedgate.toml"),
        "the error names the file: {failed}"
    );

    // A route that cannot be built: its CA file is missing.
    let missing_ca = dir.join("no-such-ca.pem");
    let bad = Builder::default().admin().route("/added", "builtin:whoami", "").route(
        "/secure",
        "https://127.0.0.1:9",
        &format!("upstream_ca_file = \"{}\"", missing_ca.display()),
    );
    std::fs::write(&config, bad.config_text(&dir)).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_events(FAILED_LOG, 2);
    let failed = &fedgate.events(FAILED_LOG)[1];
    assert!(
        failed["error"].as_str().unwrap().contains("no-such-ca.pem"),
        "the error names the file: {failed}"
    );

    // Still the routes of the last good reload, and the server still runs.
    assert_eq!(get(plain, "/added").await.0, StatusCode::OK);
    assert_eq!(get(plain, "/whoami").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(plain, "/secure").await.0, StatusCode::NOT_FOUND);
    assert_eq!(metric(&fedgate, OK).await, Some(1.0));
    assert_eq!(metric(&fedgate, FAILED).await, Some(2.0));
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_routes_it_started_with() {
    // The upstream holds the first request until the test lets it go.
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate = std::sync::Arc::clone(&release);
    let upstream = crate::support::upstream::serve(move |_req| {
        let (entered_tx, gate) = (entered_tx.clone(), std::sync::Arc::clone(&gate));
        async move {
            let _ = entered_tx.send(());
            gate.notified().await;
            http::Response::new(crate::support::client::full("held"))
        }
    })
    .await;
    let server = |with_slow: bool| {
        let b = Builder::default().admin().route("/whoami", "builtin:whoami", "");
        if with_slow {
            b.route("/slow", &upstream.url(), "")
        } else {
            b
        }
    };
    let fedgate = server(true).start();
    let plain = fedgate.plain;
    let held = tokio::spawn(async move { get(plain, "/slow").await });
    entered.recv().await.expect("the request reached the upstream");

    // /slow goes away while its request is in flight.
    std::fs::write(fedgate.config_path(), server(false).config_text(fedgate.dir.path())).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_events(RELOADED, 1);
    assert_eq!(get(plain, "/slow").await.0, StatusCode::NOT_FOUND, "a new request");

    release.notify_one();
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the request in flight");
    assert_eq!(&body[..], b"held");
}
