//! The admin listener over TLS with client certificates checked against
//! `[admin] client_ca_file`: probes stay open to clients without one, the
//! API needs one from that CA, and one from another CA fails the handshake.

use http::StatusCode;

use super::certs::Ca;
use super::tls_client::get_once;
use crate::support::Fedgate;

#[tokio::test]
async fn api_paths_need_a_client_certificate_from_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new(certs.path(), "admin clients CA");
    let trusted = ca.client(certs.path(), "operator");
    let other = Ca::new(certs.path(), "some other CA").client(certs.path(), "stranger");
    let fedgate = Fedgate::builder()
        .admin_line("tls = true")
        .admin_line(&format!("client_ca_file = \"{}\"", ca.file.display()))
        .route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fedgate.admin.unwrap();
    let server_cert = fedgate.cert_path();
    let with = |issued: &super::certs::Issued| (issued.cert.clone(), issued.key.clone());

    // No certificate: the probes answer, the API refuses.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = get_once(admin, &server_cert, None, path).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, body) = get_once(admin, &server_cert, None, "/api/v1/users").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "client_certificate_required", "{body}");
    assert!(body["message"].as_str().unwrap().contains("admin.client_ca_file"));

    // A certificate from the CA: past the check (this branch has no API
    // behind it yet, so 404), and the probes too.
    let (cert, key) = with(&trusted);
    let (status, body) = get_once(admin, &server_cert, Some((&cert, &key)), "/api/v1/users")
        .await
        .unwrap();
    assert_ne!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = get_once(admin, &server_cert, Some((&cert, &key)), "/healthz")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    // A certificate from another CA: the handshake fails, for every path.
    let (cert, key) = with(&other);
    for path in ["/healthz", "/api/v1/users"] {
        let refused = get_once(admin, &server_cert, Some((&cert, &key)), path).await;
        assert!(
            refused.is_err(),
            "{path} answered a certificate from another CA: {refused:?}"
        );
    }

    // Plain HTTP to the TLS listener gets no answer.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        crate::support::client::Client::plain(admin, crate::support::client::Proto::H1),
    )
    .await;
    if let Ok(mut client) = plain {
        let resp = client
            .send(
                http::Request::get("/healthz")
                    .body(crate::support::client::empty())
                    .unwrap(),
            )
            .await;
        assert!(resp.is_err(), "plain HTTP was answered on the TLS admin listener");
    }
}

#[tokio::test]
async fn without_a_client_ca_the_tls_admin_listener_takes_any_client() {
    let fedgate = Fedgate::builder()
        .admin_line("tls = true")
        .route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fedgate.admin.unwrap();
    let (status, _) = get_once(admin, &fedgate.cert_path(), None, "/healthz").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_once(admin, &fedgate.cert_path(), None, "/api/v1/users")
        .await
        .unwrap();
    assert_ne!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn sighup_swaps_the_admin_listeners_certificate_too() {
    let fedgate = Fedgate::builder()
        .admin_line("tls = true")
        .route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fedgate.admin.unwrap();
    let old = super::tls_client::connect(admin, &fedgate.cert_path(), None)
        .await
        .unwrap();
    assert_eq!(
        super::tls_client::presented(&old),
        super::tls_client::der_of(&fedgate.cert_path())
    );

    let dir = fedgate.dir.path();
    let ca = Ca::new(dir, "admin reload CA");
    let issued = ca.server(dir, "admin-next");
    std::fs::copy(&issued.cert, dir.join("tls/cert.pem")).unwrap();
    std::fs::copy(&issued.key, dir.join("tls/key.pem")).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_log(std::time::Duration::from_secs(20), |v| {
        v["message"] == "configuration reloaded"
    });

    let new = super::tls_client::connect(admin, &ca.file, None).await.unwrap();
    assert_eq!(
        super::tls_client::presented(&new),
        super::tls_client::der_of(&issued.cert)
    );
    let mut kept = super::tls_client::Conn::new(old).await.unwrap();
    assert_eq!(kept.get("/healthz").await.unwrap().0, StatusCode::OK);
}
