//! The admin API through the real admin listener: tokens, every endpoint's
//! success and bad input, all-or-nothing bulk changes, pagination under
//! concurrent writes, changes reaching the running server's sign-ins, the
//! admin event log, the OpenAPI document against the router, and
//! schemathesis against the document.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::support::client::{self, basic, get_with, Client, Proto};
use crate::support::fedgate::{run_cli, Fedgate};

const TOKEN: &str = "6d1f0a3c9b8e7d6c5b4a39281706f5e4d3c2b1a0";
const CI_TOKEN: &str = "ci-token-0123456789abcdefghijklmnopqrstuv";

fn server() -> Fedgate {
    Fedgate::builder()
        .admin_tokens(&[("ops", TOKEN), ("ci", CI_TOKEN)])
        .cloud_route("/whoami", "builtin:whoami", "")
        .start()
}

/// One answer: status, headers, body parsed as JSON (`Null` if it is not).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

/// A request to the admin listener: method, path, token, content type,
/// body bytes.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(ctype) = ctype {
        req = req.header("content-type", ctype);
    }
    let req = req.body(client::full(body)).unwrap();
    let resp = Client::plain(addr, Proto::H1).await.send(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, Method::GET, path, Some(TOKEN), None, Vec::new()).await
}

async fn send(addr: SocketAddr, method: Method, path: &str, body: Value) -> Answer {
    call(
        addr,
        method,
        path,
        Some(TOKEN),
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await
}

async fn post(addr: SocketAddr, path: &str) -> Answer {
    call(addr, Method::POST, path, Some(TOKEN), None, Vec::new()).await
}

fn expect(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "{answer:?}");
    assert_eq!(answer.body["error"], code, "{answer:?}");
    assert!(
        answer.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
}

async fn all_upns(addr: SocketAddr) -> Vec<String> {
    let page = get(addr, "/api/v1/users?limit=1000").await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    page.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["upn"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_api_needs_a_token_and_health_and_metrics_stay_open() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();

    for token in [None, Some("wrong-token-wrong-token-wrong-token-xx"), Some(&TOKEN[..20])] {
        let answer = call(
            admin,
            Method::POST,
            "/api/v1/users",
            token,
            Some("application/json"),
            json!({"upn": "eve@x.example"}).to_string().into_bytes(),
        )
        .await;
        expect(&answer, 401, "unauthorized");
        assert!(
            answer.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{answer:?}"
        );
    }
    // A Basic header is no bearer token either.
    let (status, _, _) = get_with(admin, "/api/v1/users", &[("authorization", basic("ops", TOKEN))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(all_upns(admin).await.is_empty(), "a refused call changed nothing");

    for token in [TOKEN, CI_TOKEN] {
        let answer = call(admin, Method::GET, "/api/v1/users", Some(token), None, Vec::new()).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, _) = client::get(admin, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn without_a_token_file_the_api_says_how_to_turn_it_on() {
    let fedgate = Fedgate::builder().admin().route("/", "builtin:whoami", "").start();
    let answer = get(fedgate.admin.unwrap(), "/api/v1/users").await;
    expect(&answer, 404, "api_disabled");
    assert!(answer.text.contains("token_file"), "{answer:?}");
}

#[test]
fn a_token_file_others_can_read_or_with_a_short_token_stops_start_up() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin.tokens");
    let config = dir.path().join("fedgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n[store]\nurl = \"sqlite://{}\"\nkey_file = \"{}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             [[route]]\npath = \"/\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"\n",
            dir.path().join("fedgate.db").display(),
            dir.path().join("fedgate.key").display(),
            tokens.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    std::fs::write(&tokens, format!("ops {TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A configuration error: exit 2, and check-config finds it first.
    for command in ["serve", "check-config"] {
        let (code, _, err) = run_cli(&[command, "--config", config]);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(err.contains("admin.token_file") && err.contains("chmod 600"), "{err}");
    }

    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&tokens, format!("ops {TOKEN}\n# spare\nops short\n")).unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", config]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 3") && err.contains("at least 32"), "{err}");
}

#[tokio::test]
async fn users_are_added_shown_changed_and_deleted_and_bad_input_changes_nothing() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();

    let added = send(
        admin,
        Method::POST,
        "/api/v1/users",
        json!({"upn": "Alice@X.example", "state": "enabled", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{added:?}");
    assert_eq!(added.body["upn"], "alice@x.example");
    assert_eq!(added.body["mfa_state"], "enabled");
    assert!(added.body.get("password_hash").is_none(), "{added:?}");
    let created = added.body["created_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(created).is_ok(), "RFC 3339: {created}");

    expect(
        &send(admin, Method::POST, "/api/v1/users", json!({"upn": "alice@x.example"})).await,
        409,
        "user_exists",
    );
    let shown = get(admin, "/api/v1/users/alice%40x.example").await;
    assert_eq!(shown.status, StatusCode::OK, "{shown:?}");
    assert_eq!(shown.body["app_passwords"], json!([]));
    expect(&get(admin, "/api/v1/users/nobody@x.example").await, 404, "unknown_user");
    expect(&get(admin, "/api/v1/users/not-a-upn").await, 400, "bad_request");

    // Bad input of every kind: a 4xx naming what is wrong, nothing changed.
    let before = all_upns(admin).await;
    let bad_state = send(
        admin,
        Method::POST,
        "/api/v1/users",
        json!({"upn": "b@x.example", "state": "required"}),
    )
    .await;
    expect(&bad_state, 400, "bad_state");
    assert_eq!(bad_state.body["field"], "state");
    let unknown_field = send(
        admin,
        Method::POST,
        "/api/v1/users",
        json!({"upn": "b@x.example", "stat": "enabled"}),
    )
    .await;
    expect(&unknown_field, 400, "bad_request");
    assert!(
        unknown_field.body["message"].as_str().unwrap().contains("stat"),
        "{unknown_field:?}"
    );
    let wrong_type = send(admin, Method::POST, "/api/v1/users", json!({"upn": 7})).await;
    expect(&wrong_type, 400, "bad_request");
    assert_eq!(wrong_type.body["field"], "upn", "{wrong_type:?}");
    let malformed = call(
        admin,
        Method::POST,
        "/api/v1/users",
        Some(TOKEN),
        Some("application/json"),
        b"{\"upn\": ".to_vec(),
    )
    .await;
    expect(&malformed, 400, "bad_request");
    let form = call(
        admin,
        Method::POST,
        "/api/v1/users",
        Some(TOKEN),
        Some("application/x-www-form-urlencoded"),
        b"upn=b@x.example".to_vec(),
    )
    .await;
    expect(&form, 415, "unsupported_media_type");
    let mut huge = json!({"upn": "b@x.example", "password": ""}).to_string().into_bytes();
    huge.splice(huge.len() - 2..huge.len() - 2, std::iter::repeat_n(b'a', 1 << 20));
    let oversized = call(
        admin,
        Method::POST,
        "/api/v1/users",
        Some(TOKEN),
        Some("application/json"),
        huge,
    )
    .await;
    expect(&oversized, 413, "payload_too_large");
    assert!(oversized.text.contains("1 MiB"), "{oversized:?}");
    let shaped = send(
        admin,
        Method::POST,
        "/api/v1/users",
        json!({"upn": "b@x.example", "password": "abcd-efgh-ijkl-mnop"}),
    )
    .await;
    expect(&shaped, 400, "bad_request");
    expect(
        &send(
            admin,
            Method::PUT,
            "/api/v1/users/alice@x.example/state",
            json!({"state": "sometimes"}),
        )
        .await,
        400,
        "bad_state",
    );
    expect(&get(admin, "/api/v1/users?limit=0").await, 400, "bad_request");
    expect(&get(admin, "/api/v1/users?color=red").await, 400, "bad_request");
    assert_eq!(all_upns(admin).await, before, "refused calls changed nothing");
    let alice = get(admin, "/api/v1/users/alice@x.example").await;
    assert_eq!(alice.body["mfa_state"], "enabled");

    // Changes.
    let enforced = send(
        admin,
        Method::PUT,
        "/api/v1/users/alice@x.example/state",
        json!({"state": "enforced"}),
    )
    .await;
    assert_eq!(enforced.body["mfa_state"], "enforced", "{enforced:?}");
    let disabled = post(admin, "/api/v1/users/alice@x.example/disable").await;
    assert_eq!(disabled.body["enabled"], false, "{disabled:?}");
    let enabled = post(admin, "/api/v1/users/alice@x.example/enable").await;
    assert_eq!(enabled.body["enabled"], true, "{enabled:?}");
    let again = post(admin, "/api/v1/users/alice@x.example/require-registration").await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    let cleared = call(
        admin,
        Method::DELETE,
        "/api/v1/users/alice@x.example/password",
        Some(TOKEN),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(cleared.status, StatusCode::OK, "{cleared:?}");
    let set = send(
        admin,
        Method::PUT,
        "/api/v1/users/alice@x.example/password",
        json!({"password": "another secret"}),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{set:?}");

    let deleted = call(
        admin,
        Method::DELETE,
        "/api/v1/users/alice@x.example",
        Some(TOKEN),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    assert_eq!(deleted.body["federated"], false);
    expect(&get(admin, "/api/v1/users/alice@x.example").await, 404, "user_deleted");

    // Unknown paths and wrong methods.
    let nowhere = get(admin, "/api/v1/nowhere").await;
    expect(&nowhere, 404, "not_found");
    let wrong = call(admin, Method::PATCH, "/api/v1/users", Some(TOKEN), None, Vec::new()).await;
    expect(&wrong, 405, "method_not_allowed");
    assert_eq!(wrong.headers["allow"], "GET, POST");
}

#[tokio::test]
async fn bulk_changes_apply_every_line_or_none() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    let imported = send(
        admin,
        Method::POST,
        "/api/v1/bulk/user-import",
        json!({"lines": [{"upn": "a@x.example", "state": "enabled"}, {"upn": "b@x.example"}]}),
    )
    .await;
    assert_eq!(imported.status, StatusCode::CREATED, "{imported:?}");
    assert_eq!(imported.body.as_array().unwrap().len(), 2);

    let refused = send(
        admin,
        Method::POST,
        "/api/v1/bulk/user-import",
        json!({"lines": [{"upn": "c@x.example"}, {"upn": "a@x.example"}, {"upn": "d@x.example", "state": "maybe"}]}),
    )
    .await;
    expect(&refused, 422, "bulk_rejected");
    let lines: Vec<u64> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3], "{refused:?}");
    assert_eq!(all_upns(admin).await, ["a@x.example", "b@x.example"], "nothing created");

    let refused = send(
        admin,
        Method::POST,
        "/api/v1/bulk/user-states",
        json!({"lines": [{"upn": "a@x.example", "state": "enforced"}, {"upn": "nobody@x.example", "state": "enforced"}]}),
    )
    .await;
    expect(&refused, 422, "bulk_rejected");
    assert_eq!(refused.body["errors"][0]["line"], 2, "{refused:?}");
    assert_eq!(
        get(admin, "/api/v1/users/a@x.example").await.body["mfa_state"],
        "enabled"
    );

    let applied = send(
        admin,
        Method::POST,
        "/api/v1/bulk/user-states",
        json!({"lines": [{"upn": "a@x.example", "state": "enforced"}, {"upn": "b@x.example", "state": "disabled"}]}),
    )
    .await;
    assert_eq!(applied.body, json!({"changed": 1, "unchanged": 1}), "{applied:?}");
    let filtered = get(admin, "/api/v1/users?state=enforced").await;
    assert_eq!(filtered.body["users"].as_array().unwrap().len(), 1, "{filtered:?}");
}

#[tokio::test]
async fn pages_stay_stable_while_users_are_added() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    let lines: Vec<Value> = (0..40).map(|i| json!({"upn": format!("u{i:02}@x.example")})).collect();
    let imported = send(
        admin,
        Method::POST,
        "/api/v1/bulk/user-import",
        json!({ "lines": lines }),
    )
    .await;
    assert_eq!(imported.status, StatusCode::CREATED, "{imported:?}");
    let existing: HashSet<String> = all_upns(admin).await.into_iter().collect();

    // Another client adds users, before and after the cursor, meanwhile.
    let writer = tokio::spawn(async move {
        for i in 0..30 {
            let upn = if i % 2 == 0 {
                format!("a{i:02}@x.example")
            } else {
                format!("z{i:02}@x.example")
            };
            let added = send(admin, Method::POST, "/api/v1/users", json!({ "upn": upn })).await;
            assert_eq!(added.status, StatusCode::CREATED, "{added:?}");
        }
    });
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/api/v1/users?limit=7&contains=%40x.example".to_owned(),
            Some(c) => format!("/api/v1/users?limit=7&contains=%40x.example&cursor={c}"),
        };
        let page = get(admin, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        seen.extend(
            page.body["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["upn"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    writer.await.unwrap();
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a user was shown twice: {seen:?}");
    assert!(existing.is_subset(&unique), "a user that existed was missed: {seen:?}");
    assert!(pages >= 6, "{pages} pages");
    expect(&get(admin, "/api/v1/users?cursor=forged").await, 400, "bad_request");
}

#[tokio::test]
async fn app_passwords_made_and_revoked_through_the_api_reach_sign_in() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    send(
        admin,
        Method::POST,
        "/api/v1/users",
        json!({"upn": "kim@x.example", "state": "enforced"}),
    )
    .await;
    let settings = send(
        admin,
        Method::PUT,
        "/api/v1/settings",
        json!({"allow_app_passwords": true}),
    )
    .await;
    assert_eq!(settings.body, json!({"allow_app_passwords": true}), "{settings:?}");
    expect(
        &send(
            admin,
            Method::PUT,
            "/api/v1/settings",
            json!({"allow_app_passwords": "yes"}),
        )
        .await,
        400,
        "bad_request",
    );

    let created = send(
        admin,
        Method::POST,
        "/api/v1/users/kim@x.example/app-passwords",
        json!({"name": "phone"}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let password = created.body["password"].as_str().unwrap().to_owned();
    expect(
        &send(
            admin,
            Method::POST,
            "/api/v1/users/kim@x.example/app-passwords",
            json!({"name": "PHONE"}),
        )
        .await,
        409,
        "duplicate_name",
    );
    let listed = get(admin, "/api/v1/users/kim@x.example/app-passwords").await;
    assert_eq!(listed.body[0]["name"], "phone", "{listed:?}");
    assert!(!listed.text.contains(&password), "listings never show the password");

    let sign_in = || async {
        get_with(
            fedgate.plain,
            "/whoami",
            &[("authorization", basic("kim@x.example", &password))],
        )
        .await
        .0
    };
    assert_eq!(sign_in().await, StatusCode::OK);
    let revoked = post(admin, "/api/v1/users/kim@x.example/revoke-app-passwords").await;
    assert_eq!(revoked.body["revoked"], 1, "{revoked:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sign_in().await != StatusCode::UNAUTHORIZED {
        assert!(Instant::now() < deadline, "the revoked app password still signs in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect(
        &call(
            admin,
            Method::DELETE,
            "/api/v1/users/kim@x.example/app-passwords/phone",
            Some(TOKEN),
            None,
            Vec::new(),
        )
        .await,
        404,
        "unknown_app_password",
    );

    let signins = get(admin, "/api/v1/signins?user=kim@x.example&result=failure&limit=5").await;
    assert_eq!(signins.status, StatusCode::OK, "{signins:?}");
    expect(&get(admin, "/api/v1/signins?since=yesterday").await, 400, "bad_request");
    expect(&post(admin, "/api/v1/sync/run").await, 409, "sync_not_configured");
    assert_eq!(get(admin, "/api/v1/sync").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_passwords_get_limits_through_the_api_and_can_only_be_narrowed() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    send(
        admin,
        Method::POST,
        "/api/v1/users",
        json!({"upn": "lee@x.example", "state": "enforced"}),
    )
    .await;
    send(
        admin,
        Method::PUT,
        "/api/v1/settings",
        json!({"allow_app_passwords": true}),
    )
    .await;
    let path = "/api/v1/users/lee@x.example/app-passwords";
    let created = send(
        admin,
        Method::POST,
        path,
        json!({"name": "phone", "scope": ["/whoami"], "expires": "90d", "from": ["127.0.0.1", "192.0.2.0/24"]}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let limits = &created.body["limits"];
    assert_eq!(limits["scope"], json!(["/whoami"]), "{created:?}");
    assert_eq!(
        limits["networks"],
        json!(["127.0.0.1/32", "192.0.2.0/24"]),
        "{created:?}"
    );
    assert!(
        limits["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{created:?}"
    );
    let password = created.body["password"].as_str().unwrap().to_owned();
    let sign_in = || async {
        get_with(
            fedgate.plain,
            "/whoami",
            &[("authorization", basic("lee@x.example", &password))],
        )
        .await
        .0
    };
    assert_eq!(sign_in().await, StatusCode::OK);

    // Bad limits are refused by field and create nothing.
    for (body, field) in [
        (json!({"name": "a", "scope": ["nowhere"]}), "scope"),
        (json!({"name": "b", "expires": "forever"}), "expires"),
        (json!({"name": "c", "from": ["10.0.0.0/33"]}), "from"),
    ] {
        let refused = send(admin, Method::POST, path, body).await;
        expect(&refused, 400, "bad_request");
        assert!(refused.text.contains(field), "{refused:?}");
    }
    assert_eq!(get(admin, path).await.body.as_array().unwrap().len(), 1);

    // Narrowed to a network the client is not in: refused at sign-in.
    let phone = format!("{path}/phone");
    let narrowed = send(admin, Method::PATCH, &phone, json!({"from": ["192.0.2.0/25"]})).await;
    assert_eq!(narrowed.status, StatusCode::OK, "{narrowed:?}");
    assert_eq!(
        narrowed.body["limits"]["networks"],
        json!(["192.0.2.0/25"]),
        "{narrowed:?}"
    );
    assert_eq!(
        narrowed.body["limits"]["scope"],
        json!(["/whoami"]),
        "kept: {narrowed:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sign_in().await != StatusCode::UNAUTHORIZED {
        assert!(Instant::now() < deadline, "the narrowed app password still signs in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Widening is refused and changes nothing.
    let widened = send(admin, Method::PATCH, &phone, json!({"from": ["0.0.0.0/0"]})).await;
    expect(&widened, 400, "bad_request");
    assert!(widened.text.contains("narrowed"), "{widened:?}");
    expect(
        &send(admin, Method::PATCH, &format!("{path}/tablet"), json!({"scope": []})).await,
        404,
        "unknown_app_password",
    );
    let listed = get(admin, path).await;
    assert_eq!(
        listed.body[0]["limits"]["networks"],
        json!(["192.0.2.0/25"]),
        "{listed:?}"
    );
}

#[tokio::test]
async fn every_change_is_recorded_with_the_token_name_and_the_client_address() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    let added = call(
        admin,
        Method::POST,
        "/api/v1/users",
        Some(CI_TOKEN),
        Some("application/json"),
        json!({"upn": "lee@x.example", "password": "a password to hide"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{added:?}");
    get(admin, "/api/v1/users/lee@x.example").await;
    fedgate.admin().run(&["user", "disable", "lee@x.example"]).success();

    let events = get(admin, "/api/v1/admin-events?limit=10").await;
    let list = events.body.as_array().unwrap();
    assert_eq!(list.len(), 2, "reads are not recorded: {events:?}");
    let (cli, api) = (&list[0], &list[1]);
    assert_eq!(api["actor"], "token:ci");
    assert_eq!(api["action"], "user.add");
    assert_eq!(api["target"], "lee@x.example");
    assert!(api["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{api}");
    assert!(humantime::parse_rfc3339(api["at"].as_str().unwrap()).is_ok(), "{api}");
    assert!(!events.text.contains("a password to hide"), "{events:?}");
    assert!(cli["actor"].as_str().unwrap().starts_with("cli"), "{cli}");
    assert_eq!(cli["action"], "user.disable");

    let printed = fedgate.admin().run(&["--json", "admin-events", "--limit", "1"]).json();
    assert_eq!(printed[0]["action"], "user.disable", "{printed}");
    let logged = fedgate.wait_log(Duration::from_secs(5), |v| {
        v["target"] == "fedgate::audit" && v["action"] == "user.add"
    });
    assert_eq!(logged["actor"], "token:ci", "{logged}");
}

/// Every operation of the document, called with a valid token on a user
/// and an app password that exist: none is unrouted (a router 404 or a
/// 405), and every routed endpoint is documented (the unit test of the
/// router holds the other half).
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    send(admin, Method::POST, "/api/v1/users", json!({"upn": "route@x.example"})).await;
    send(
        admin,
        Method::PUT,
        "/api/v1/settings",
        json!({"allow_app_passwords": true}),
    )
    .await;
    let doc = get(admin, "/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK, "{doc:?}");
    let mut operations = Vec::new();
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_some() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Deletions last, so each call finds what it names.
    operations.sort_by_key(|(m, p)| (m == "DELETE", p.len()));
    assert!(operations.len() >= 20, "{operations:?}");
    for (method, path) in operations {
        if method == "POST" && path.ends_with("/app-passwords") {
            let name = send(
                admin,
                Method::POST,
                "/api/v1/users/route@x.example/app-passwords",
                json!({"name": "phone"}),
            )
            .await;
            assert_eq!(name.status, StatusCode::CREATED, "{name:?}");
            continue;
        }
        let concrete = path.replace("{upn}", "route@x.example").replace("{name}", "phone");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = if path.ends_with("/state") {
            json!({"state": "enabled"})
        } else if path.ends_with("/password") {
            json!({"password": "some password"})
        } else if path.starts_with("/api/v1/bulk/") {
            json!({"lines": [{"upn": "bulk@x.example", "state": "enabled"}]})
        } else if path.ends_with("/settings") {
            json!({})
        } else {
            Value::Null
        };
        let answer = if body.is_null() {
            call(admin, method.clone(), &concrete, Some(TOKEN), None, Vec::new()).await
        } else {
            send(admin, method.clone(), &concrete, body).await
        };
        assert_ne!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {answer:?}"
        );
        assert_ne!(answer.body["error"], "not_found", "{method} {path}: {answer:?}");
        assert!(answer.status.as_u16() < 500, "{method} {path}: {answer:?}");
    }
}

fn python() -> String {
    std::env::var("FEDGATE_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/test-venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

/// schemathesis fuzzes every operation of the document (the mutating ones
/// against this throwaway store) and checks that no answer is a server
/// error, that every answer has a documented status and matches its
/// schema.
#[test]
fn schemathesis_finds_no_server_error_or_schema_mismatch() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    let base = format!("http://{admin}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for upn in ["alice@x.example", "bob@x.example"] {
            send(
                admin,
                Method::POST,
                "/api/v1/users",
                json!({ "upn": upn, "state": "enabled" }),
            )
            .await;
        }
    });
    let started = Instant::now();
    let out = std::process::Command::new(python())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--url", &base])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        .args(["--max-examples", "25", "--seed", "1", "--no-color"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "10"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(fedgate.dir.path())
        .output()
        .expect("run schemathesis (scripts/install-test-deps installs it into target/test-venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("schemathesis took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test]
async fn sighup_reads_the_token_file_again_and_a_bad_one_keeps_the_running_tokens() {
    use std::os::unix::fs::PermissionsExt;
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    let file = fedgate.dir.path().join("admin.tokens");
    const NEXT: &str = "next-token-abcdefghijklmnopqrstuvwxyz012345";

    // "ci" is taken out and "next" comes in; "ops" stays.
    std::fs::write(&file, format!("ops {TOKEN}\nnext {NEXT}\n")).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_events("configuration reloaded", 1);
    let status = |token: &'static str| async move {
        call(admin, Method::GET, "/api/v1/users", Some(token), None, Vec::new())
            .await
            .status
    };
    assert_eq!(status(TOKEN).await, StatusCode::OK);
    assert_eq!(status(NEXT).await, StatusCode::OK);
    assert_eq!(
        status(CI_TOKEN).await,
        StatusCode::UNAUTHORIZED,
        "a removed token still works"
    );

    // A file others can read is refused on reload as at start: the
    // running tokens stay, and the reload counts as failed.
    std::fs::write(&file, format!("ops {TOKEN}\nci {CI_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_events("configuration reload failed: the running configuration is kept", 1);
    assert_eq!(status(NEXT).await, StatusCode::OK);
    assert_eq!(status(CI_TOKEN).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_usage_report_counts_todays_sign_ins_and_refuses_bad_days() {
    let fedgate = server();
    let admin = fedgate.admin.unwrap();
    let added = send(
        admin,
        Method::POST,
        "/api/v1/users",
        json!({"upn": "rita@contoso.example", "state": "enabled"}),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{added:?}");

    let report = get(admin, "/api/v1/reports/usage").await;
    assert_eq!(report.status, StatusCode::OK, "{report:?}");
    let days = report.body["days"].as_array().unwrap();
    assert_eq!(days.len(), 30, "the last 30 days by default: {report:?}");
    assert_eq!(days.last().unwrap()["enabled_users"], 1, "{report:?}");
    assert_eq!(report.body["enabled_users"], 1, "{report:?}");
    let today = days.last().unwrap()["date"].as_str().unwrap().to_owned();
    let one = get(admin, &format!("/api/v1/reports/usage?from={today}&to={today}")).await;
    assert_eq!(one.body["days"].as_array().unwrap().len(), 1, "{one:?}");

    let bad = get(admin, "/api/v1/reports/usage?from=2026-02-30").await;
    expect(&bad, 400, "bad_request");
    assert_eq!(bad.body["field"], "from", "{bad:?}");
    let reversed = get(admin, "/api/v1/reports/usage?from=2026-03-02&to=2026-03-01").await;
    expect(&reversed, 400, "bad_request");
    let long = get(admin, "/api/v1/reports/usage?from=2024-01-01&to=2026-01-01").await;
    expect(&long, 400, "bad_request");
}
