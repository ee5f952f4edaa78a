//! The self-service portal in a real browser: headless Chromium, driven
//! through chromedriver, against fedgate's TLS listener. Users sign in
//! with their password, register an authenticator from the key on the
//! page (the test computes the codes as an app would), manage their app
//! passwords, and are sent through the portal by `browser = "mfa"` routes.
//! Every page is also saved as a screenshot, desktop and phone sized,
//! under `target/screenshots/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fedgate::totp::{format_code, TotpSecret, PERIOD_SECS};
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use crate::signin::{assert_unauthorized, expect_reasons, signed_in, SignIn};
use crate::support::admin::Admin;
use crate::support::browser::{screenshot_dir, Browser};
use crate::support::client::{basic, get_with};
use crate::support::fedgate::Builder;
use crate::support::upstream;
use crate::support::Fedgate;

const P: &str = "/portal";
const PASSWORD: &str = "Correct horse 7";
const POLL: Duration = Duration::from_millis(50);
/// DESIGN.md: a revoking change takes effect on a running server within 1 s.
const REVOCATION_LIMIT: Duration = Duration::from_secs(1);
const SIGN_IN_FAILED: &str = "Sign-in failed: check your user name and password.";
const WRONG_CODE: &str = "That code is wrong or was already used.";
const FORM_EXPIRED: &str = "This form has expired";
const SESSION_COOKIE: &str = "fedgate_session";

/// A fedgate with the portal on, and where its pages are.
struct Portal {
    fg: Fedgate,
    /// `https://localhost:PORT`: the TLS listener, whose self-signed
    /// certificate is for `localhost`.
    origin: String,
    _keys: tempfile::TempDir,
}

impl Portal {
    /// Starts `builder` with a TLS listener, the `[portal]` section and a
    /// `cloud` route `/whoami` (for Basic sign-ins on the plain listener).
    fn start(builder: Builder) -> Portal {
        let keys = tempfile::tempdir().expect("temp dir");
        let section = format!(
            "[portal]\nenabled = true\npath = \"{P}\"\nissuer = \"Contoso\"\nsecret_key_file = \"{}\"\n",
            keys.path().join("portal.key").display()
        );
        let fg = builder
            .tls()
            .section(&section)
            .cloud_route("/whoami", "builtin:whoami", "")
            .start();
        let origin = format!("https://localhost:{}", fg.tls.expect("a TLS listener").port());
        Portal {
            fg,
            origin,
            _keys: keys,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    fn admin(&self) -> Admin {
        self.fg.admin()
    }

    /// Adds a user and waits until the running server knows them (their
    /// password signs in over Basic: MFA state `disabled` or `enabled`).
    async fn user(&self, upn: &str, state: &str) {
        self.admin().add_user(upn, state, Some(PASSWORD));
        SignIn::new(self.fg.plain, upn, PASSWORD)
            .agent("setup")
            .until(StatusCode::OK, POLL)
            .await;
    }

    fn mfa_state(&self, upn: &str) -> String {
        let user = self.admin().run(&["--json", "user", "show", upn]).json();
        user["mfa_state"]
            .as_str()
            .unwrap_or_else(|| panic!("no mfa_state in {user}"))
            .to_owned()
    }

    fn app_password_names(&self, upn: &str) -> Vec<String> {
        let list = self.admin().run(&["--json", "app-password", "list", upn]).json();
        list.as_array()
            .unwrap_or_else(|| panic!("app-password list printed {list}"))
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An authenticator app holding the key shown on the register page. It
/// never gives a code twice: after a code of the current step it gives the
/// next step's (the server accepts one step of skew), and only when that is
/// used too does it wait for the clock.
struct Authenticator {
    secret: TotpSecret,
    last_step: Option<u64>,
}

impl Authenticator {
    /// From the text key as shown (`ABCD EFGH ...`).
    fn from_text_key(text: &str) -> Authenticator {
        let compact: String = text.split_whitespace().collect::<String>().to_uppercase();
        assert_eq!(compact.len(), 32, "a 20-byte key is 32 base32 characters: {text:?}");
        let groups: Vec<&str> = text.split_whitespace().collect();
        assert!(
            groups.len() == 8 && groups.iter().all(|g| g.len() == 4),
            "the key is shown in groups of 4: {text:?}"
        );
        let bytes = data_encoding::BASE32_NOPAD
            .decode(compact.as_bytes())
            .unwrap_or_else(|e| panic!("the text key {text:?} is not base32: {e}"));
        Authenticator {
            secret: TotpSecret::from_bytes(&bytes).expect("a 20-byte secret"),
            last_step: None,
        }
    }

    fn code_for_step(&self, step: u64) -> String {
        format_code(self.secret.code_at(step * PERIOD_SECS))
    }

    /// A code the server has not seen, to be used now.
    async fn next_code(&mut self) -> String {
        loop {
            let now = unix_now();
            let current = now / PERIOD_SECS;
            let step = self.last_step.map_or(current, |last| (last + 1).max(current));
            if step <= current + 1 {
                self.last_step = Some(step);
                return self.code_for_step(step);
            }
            let wait = (current + 1) * PERIOD_SECS - now;
            tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
        }
    }

    /// The code given last (already used, if the server took it).
    fn last_code(&self) -> String {
        self.code_for_step(self.last_step.expect("a code was given"))
    }

    /// A 6-digit code that matches none of the steps the server accepts
    /// now (nor the next minute's).
    fn wrong_code(&self) -> String {
        let current = unix_now() / PERIOD_SECS;
        let valid: Vec<String> = (current.saturating_sub(2)..=current + 2)
            .map(|s| self.code_for_step(s))
            .collect();
        (0..)
            .map(|n| format!("{:06}", (123_456 + n * 7919) % 1_000_000))
            .find(|c| !valid.contains(c))
            .unwrap()
    }
}

/// Checks that every visible input of the page has a `<label for=...>`.
async fn assert_labelled(b: &Browser) {
    let unlabelled = b
        .execute(
            r#"return [...document.querySelectorAll('input:not([type=hidden]):not([type=submit])')]
                .filter(i => !i.id || !document.querySelector('label[for="' + CSS.escape(i.id) + '"]'))
                .map(i => i.outerHTML);"#,
            vec![],
        )
        .await;
    assert_eq!(
        unlabelled,
        Value::Array(vec![]),
        "inputs without a label on {}",
        b.path().await
    );
}

/// The value of the hidden field `name` of form `form`.
async fn hidden(b: &Browser, form: &str, name: &str) -> String {
    let css = format!("{form} input[type=hidden][name={name}]");
    b.prop(&css, "value").await.unwrap_or_default()
}

/// Asserts the page shown is `path` (path and query).
async fn assert_at(b: &Browser, path: &str, case: &str) {
    let at = b.path().await;
    assert_eq!(at, path, "{case}; {}", b.describe().await);
}

/// The text of the page's `.error`, if it has one.
async fn error_text(b: &Browser) -> Option<String> {
    match b.try_find(".error").await {
        Some(e) => Some(e.text().await.expect("error text")),
        None => None,
    }
}

/// Fills and sends the sign-in form of the page shown.
async fn enter_password(b: &Browser, upn: &str, password: &str) {
    b.find("#sign-in-form").await;
    b.fill("#upn", upn).await;
    b.fill("#password", password).await;
    b.submit("#sign-in").await;
}

/// Sends `code` with the verify form of the page shown.
async fn enter_code(b: &Browser, code: &str) {
    b.find("#verify-form").await;
    b.fill("#code", code).await;
    b.submit("#verify").await;
}

/// From the register page shown: reads the key, registers it with a
/// fresh code and checks the confirmation. Returns the authenticator.
async fn register(b: &Browser, shots: bool) -> Authenticator {
    assert_at(b, &format!("{P}/register"), "the password leads to registration").await;
    let svg = b.find("#qr svg").await;
    let (_, _, w, h) = svg.rectangle().await.expect("QR size");
    assert!(w >= 100.0 && h >= 100.0, "the QR code is large enough to scan: {w}x{h}");
    let key = b.text("#text-key").await;
    let mut app = Authenticator::from_text_key(&key);
    assert_labelled(b).await;
    assert!(
        !hidden(b, "#register-form", "csrf").await.is_empty(),
        "register form has a csrf token"
    );
    if shots {
        b.screenshot("register").await;
    }
    let code = app.next_code().await;
    b.fill("#register-form #code", &code).await;
    b.submit("#register").await;
    assert_at(
        b,
        &format!("{P}/registered"),
        "a valid code registers the authenticator",
    )
    .await;
    app
}

/// The session cookie as the contract has it.
async fn assert_session_cookie(b: &Browser) {
    let cookies = b.cookies().await;
    let cookie = cookies
        .iter()
        .find(|c| c.name == SESSION_COOKIE)
        .unwrap_or_else(|| panic!("no {SESSION_COOKIE} cookie among {cookies:?}"));
    assert!(cookie.secure, "{cookie:?}");
    assert!(cookie.http_only, "{cookie:?}");
    assert_eq!(cookie.same_site.as_deref(), Some("Lax"), "{cookie:?}");
}

/// The submit button of the delete form in the row of app password `name`.
fn delete_button(name: &str) -> String {
    let form = format!("tr[data-name=\"{name}\"] form.delete-app-password");
    format!("{form} button, {form} input[type=submit]")
}

/// The JSON an `upstream::echo()` answered, as Chromium shows it.
async fn echoed(b: &Browser) -> Value {
    let text = b
        .execute(
            "return [...document.querySelectorAll('pre')].map(p => p.textContent).concat([document.body.innerText]);",
            vec![],
        )
        .await;
    text.as_array()
        .unwrap()
        .iter()
        .filter_map(|t| {
            let t = t.as_str()?;
            let json = &t[t.find('{')?..=t.rfind('}')?];
            serde_json::from_str(json).ok()
        })
        .next()
        .unwrap_or_else(|| panic!("no echo JSON in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_harness_drives_headless_chromium() {
    let fg = Fedgate::builder().tls().route("/whoami", "builtin:whoami", "").start();
    let b = Browser::start("browser_harness").await;

    let page = "data:text/html,<!doctype html><title>Harness</title><form id=f action=javascript:void(0)>\
        <label for=n>Name</label><input id=n name=n><button id=go>Go</button></form><p id=out></p>\
        <script>document.getElementById('f').onsubmit=()=>{document.getElementById('out').textContent='hi '+document.getElementById('n').value}</script>";
    b.goto(page).await;
    assert_eq!(b.title().await, "Harness");
    b.fill("#n", "Mallory").await;
    b.fill("#n", "Alice").await;
    b.click("#go").await;
    assert_eq!(b.text("#out").await, "hi Alice");
    assert_eq!(b.prop("#n", "value").await.as_deref(), Some("Alice"));
    assert_eq!(b.execute("return arguments[0] + 1;", vec![Value::from(41)]).await, 42);
    assert!(b.try_find("#missing").await.is_none());
    assert_labelled(&b).await;
    let (desktop, phone) = b.screenshot("data-url").await;

    // fedgate's own certificate is self-signed: Chromium must take it.
    let origin = format!("https://localhost:{}", fg.tls.unwrap().port());
    b.goto(&format!("{origin}/whoami?x=1")).await;
    assert_eq!(b.path().await, "/whoami?x=1");
    assert_eq!(b.status().await, 200);
    // builtin:whoami answers a browser with an HTML table.
    let text = b.text("body").await;
    assert!(text.contains("Who am I") && text.contains("Realm"), "{text}");
    assert!(b.source().await.contains("<table"), "{}", b.describe().await);
    assert!(b.cookies().await.is_empty());
    b.execute("document.cookie = 'probe=1; path=/';", vec![]).await;
    assert_eq!(b.cookie("probe").await.map(|c| c.value).as_deref(), Some("1"));
    b.delete_cookies().await;
    assert!(b.cookie("probe").await.is_none());
    b.screenshot("whoami").await;

    for path in [desktop, phone] {
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is a PNG", path.display());
        assert!(png.len() > 1000, "{} has content", path.display());
        assert!(path.starts_with(screenshot_dir()));
    }
    b.close().await;

    // A browser dropped without `close` (a failed test) leaves no
    // Chromium process behind.
    let b = Browser::start("browser_harness_dropped").await;
    b.goto("data:text/html,<p>bye</p>").await;
    assert!(!b.chromium_pids().is_empty());
    let pids = b.chromium_pids();
    drop(b);
    let running: Vec<u32> = pids
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
        })
        .collect();
    assert!(running.is_empty(), "Chromium processes left running: {running:?}");
}

/// The issue's story: a user in MFA state `enabled` signs in, is led to
/// register an authenticator, creates an app password for a mail client,
/// which then signs in over Basic while the org password no longer does,
/// and deletes it again, which the server applies within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_service_registers_an_authenticator_and_manages_app_passwords() {
    const ERIN: &str = "erin@contoso.example";
    const NAME: &str = "iPhone Mail";
    let portal = Portal::start(Fedgate::builder());
    let admin = portal.admin();
    admin.allow_app_passwords(true);
    portal.user(ERIN, "enabled").await;
    let b = Browser::start("main_story").await;

    b.goto(&portal.url(&format!("{P}/sign-in"))).await;
    assert_eq!(b.status().await, 200, "{}", b.describe().await);
    let form = b.find("#sign-in-form").await;
    assert_eq!(
        form.attr("method").await.unwrap().map(|m| m.to_lowercase()).as_deref(),
        Some("post")
    );
    let action = form.attr("action").await.unwrap().unwrap_or_default();
    assert!(action.ends_with(&format!("{P}/sign-in")), "action {action}");
    assert_eq!(b.attr("#password", "type").await.as_deref(), Some("password"));
    assert_eq!(b.attr("#upn", "name").await.as_deref(), Some("upn"));
    assert!(
        !hidden(&b, "#sign-in-form", "csrf").await.is_empty(),
        "sign-in form has a csrf token"
    );
    b.find("#sign-in-form input[type=hidden][name=return]").await;
    assert_labelled(&b).await;
    b.screenshot("sign-in").await;

    enter_password(&b, ERIN, PASSWORD).await;
    assert_session_cookie(&b).await;
    let _app = register(&b, true).await;
    assert_eq!(portal.mfa_state(ERIN), "enforced", "registering enforces MFA");
    b.screenshot("registered").await;

    // The confirmation offers an app password at once (the setting is on).
    b.fill("#create-app-password-form #app-password-name", NAME).await;
    assert_labelled(&b).await;
    b.submit("#create-app-password").await;
    let password = b.text("#new-app-password").await.trim().to_owned();
    assert!(
        password.len() >= 16 && !password.contains(char::is_whitespace),
        "an app password: {password:?}"
    );
    b.find("#copy").await;
    b.find(&format!("a[href$=\"{P}/security\"]")).await;
    b.screenshot("new-app-password").await;
    assert_eq!(portal.app_password_names(ERIN), [NAME]);

    // A mail client over Basic: the app password works, the org password
    // no longer does now that MFA is enforced.
    // (Registering is a revoking change for the org password: the server
    // applies it within a second.)
    let mail = SignIn::new(portal.fg.plain, ERIN, &password).agent("app-password");
    mail.until(StatusCode::OK, POLL).await;
    let who = signed_in(&mail.send().await, "the new app password");
    assert_eq!(who["user"], ERIN);
    assert_eq!(who["credential"], "app_password");
    let org = SignIn::new(portal.fg.plain, ERIN, PASSWORD).agent("org-password");
    let took = org.until(StatusCode::UNAUTHORIZED, POLL).await;
    assert!(
        took <= REVOCATION_LIMIT,
        "the org password still worked {took:?} after registering"
    );
    assert_unauthorized(&org.send().await, "the org password of an enforced user");
    expect_reasons(
        &admin,
        &[
            ("app-password", "app_password"),
            ("org-password", "app_password_required"),
        ],
    );

    b.goto(&portal.url(&format!("{P}/security"))).await;
    assert_at(&b, &format!("{P}/security"), "signed in").await;
    let row = format!("#app-passwords tr[data-name=\"{NAME}\"]");
    let cells = b.find_all(&format!("{row} td")).await;
    assert!(
        cells.len() >= 5,
        "name, created, last used, last IP, client: {}",
        b.describe().await
    );
    // The Basic sign-in above was its last use, from loopback (written to
    // the store every few seconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row_text = b.text(&row).await;
        assert!(row_text.contains(NAME), "{row_text}");
        if row_text.contains("127.0.0.1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no last use after 10 s: {row_text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.goto(&portal.url(&format!("{P}/security"))).await;
    }
    assert!(!hidden(&b, &format!("{row} form.delete-app-password"), "csrf")
        .await
        .is_empty());
    assert_eq!(
        hidden(&b, &format!("{row} form.delete-app-password"), "name").await,
        NAME
    );
    b.find("#change-authenticator").await;
    b.find("#sign-out-form #sign-out").await;
    b.screenshot("security").await;

    b.submit(&delete_button(NAME)).await;
    assert_at(&b, &format!("{P}/security"), "deleting leads back to the security page").await;
    assert!(b.try_find(&row).await.is_none(), "{}", b.describe().await);
    assert!(portal.app_password_names(ERIN).is_empty());
    let took = mail.agent("deleted").until(StatusCode::UNAUTHORIZED, POLL).await;
    assert!(
        took <= REVOCATION_LIMIT,
        "the deleted app password still worked {took:?} later"
    );
    b.close().await;
}

/// A `browser = "mfa"` route sends a browser through the portal (password,
/// then code) and back to where it was going, signed in; Basic clients on
/// the same route keep the decision table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_mfa_round_trip_to_a_proxied_route() {
    const DANA: &str = "dana@contoso.example";
    let up = upstream::echo().await;
    let portal = Portal::start(Fedgate::builder().route_in("cloud", "/app", &up.url(), "browser = \"mfa\""));
    portal.user(DANA, "enabled").await;
    let b = Browser::start("mfa_round_trip").await;
    let target = "/app/inbox?folder=a%20b&x=1";

    // Not signed in: to the portal, remembering where it was going.
    b.goto(&portal.url(target)).await;
    assert!(
        b.path().await.starts_with(&format!("{P}/sign-in?")),
        "{}",
        b.describe().await
    );
    assert_eq!(hidden(&b, "#sign-in-form", "return").await, target);
    enter_password(&b, DANA, PASSWORD).await;
    // No authenticator yet: registration first.
    let mut app = register(&b, false).await;
    // App passwords are not allowed here: nothing offers to create one.
    assert!(
        b.try_find("#create-app-password-form").await.is_none(),
        "{}",
        b.describe().await
    );
    b.goto(&portal.url(&format!("{P}/security"))).await;
    b.find("#app-passwords").await;
    assert!(
        b.try_find("#create-app-password-form").await.is_none(),
        "{}",
        b.describe().await
    );

    // Signed in (password and code): the route now serves this browser.
    b.goto(&portal.url(target)).await;
    assert_at(&b, target, "a signed-in browser is served").await;
    let echo = echoed(&b).await;
    assert_eq!(echo["headers"]["x-remote-user"], serde_json::json!([DANA]), "{echo}");
    assert_eq!(echo["uri"], target, "{echo}");
    assert!(
        echo["headers"]
            .get("cookie")
            .is_none_or(|c| !c.to_string().contains(SESSION_COOKIE)),
        "the portal's session cookie is not passed upstream: {echo}"
    );

    // Signed out: the next visit asks for the password and the code, and
    // lands on the original URL.
    b.goto(&portal.url(&format!("{P}/security"))).await;
    b.submit("#sign-out").await;
    assert_at(&b, &format!("{P}/sign-in"), "signing out leads to the sign-in page").await;
    b.goto(&portal.url(target)).await;
    assert!(
        b.path().await.starts_with(&format!("{P}/sign-in?")),
        "{}",
        b.describe().await
    );
    enter_password(&b, DANA, PASSWORD).await;
    assert_at(&b, &format!("{P}/verify"), "a registered user is asked for a code").await;
    assert_labelled(&b).await;
    assert!(
        !hidden(&b, "#verify-form", "csrf").await.is_empty(),
        "verify form has a csrf token"
    );
    b.screenshot("verify").await;
    enter_code(&b, &app.next_code().await).await;
    assert_at(&b, target, "after the code, back where the browser was going").await;
    let echo = echoed(&b).await;
    assert_eq!(echo["headers"]["x-remote-user"], serde_json::json!([DANA]), "{echo}");
    b.screenshot("proxied-page").await;
    // The page's own resources (scripts, styles, API calls) do not ask for
    // HTML; the session signs them in too.
    let fetched = b
        .execute(
            "return fetch('/app/api/items', {headers: {'Accept': 'application/json'}})
                 .then(r => r.text().then(t => [r.status, t]));",
            vec![],
        )
        .await;
    assert_eq!(fetched[0], 200, "a subresource of a signed-in page: {fetched}");
    let echo: serde_json::Value = serde_json::from_str(fetched[1].as_str().unwrap()).unwrap();
    assert_eq!(echo["headers"]["x-remote-user"], serde_json::json!([DANA]), "{echo}");

    // Other clients on the same route: no redirect without a browser's
    // Accept, and the org password of a now-enforced user is refused.
    let addr = portal.fg.plain;
    let answer = get_with(addr, "/app/inbox", &[("accept", HeaderValue::from_static("*/*"))]).await;
    assert_unauthorized(&answer, "no credentials, not a browser");
    let answer = get_with(addr, "/app/inbox", &[("authorization", basic(DANA, PASSWORD))]).await;
    assert_unauthorized(&answer, "Basic with the org password of an enforced user");
    let (status, headers, _) = get_with(
        addr,
        "/app/inbox?x=1",
        &[(
            "accept",
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = headers[header::LOCATION].to_str().unwrap();
    assert!(location.contains(&format!("{P}/sign-in?return=")), "{location}");
    b.close().await;
}

/// A return URL that leaves fedgate's routes is ignored: the user ends on
/// the security page. (MFA `disabled`: the password alone signs in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_urls_outside_the_routes_are_ignored() {
    const ALICE: &str = "alice@contoso.example";
    let up = upstream::echo().await;
    let portal = Portal::start(Fedgate::builder().route_in("cloud", "/app", &up.url(), "browser = \"mfa\""));
    portal.user(ALICE, "disabled").await;
    let b = Browser::start("return_urls").await;
    for evil in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example/",
        "javascript:alert(1)",
    ] {
        let escaped: String = url::form_urlencoded::byte_serialize(evil.as_bytes()).collect();
        b.goto(&portal.url(&format!("{P}/sign-in?return={escaped}"))).await;
        enter_password(&b, ALICE, PASSWORD).await;
        let url = b.url().await;
        assert_eq!(url.host_str(), Some("localhost"), "return={evil}: {url}");
        assert_eq!(
            url.path(),
            format!("{P}/security"),
            "return={evil}; {}",
            b.describe().await
        );
        b.submit("#sign-out").await;
    }
    // One inside a route is followed. The route asks browsers for a
    // second factor, which Alice has yet to register: that comes first,
    // then the confirmation leads on to the route.
    b.goto(&portal.url(&format!("{P}/sign-in?return=%2Fapp%2Fhome"))).await;
    enter_password(&b, ALICE, PASSWORD).await;
    register(&b, false).await;
    b.submit("a[href=\"/app/home\"]").await;
    assert_at(&b, "/app/home", "a return URL on a route").await;
    assert_eq!(echoed(&b).await["headers"]["x-remote-user"], serde_json::json!([ALICE]));
    b.close().await;
}

/// Forms need their csrf token (a missing or altered one changes nothing),
/// and a code is good for one sign-in only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_their_token_and_codes_are_single_use() {
    const FRANK: &str = "frank@contoso.example";
    let portal = Portal::start(Fedgate::builder());
    portal.admin().allow_app_passwords(true);
    portal.user(FRANK, "enabled").await;
    let b = Browser::start("csrf_and_replay").await;
    b.goto(&portal.url(&format!("{P}/sign-in"))).await;
    enter_password(&b, FRANK, PASSWORD).await;
    // Registering without the token registers nothing.
    assert_at(&b, &format!("{P}/register"), "the password leads to registration").await;
    let unused = Authenticator::from_text_key(&b.text("#text-key").await);
    b.execute(
        "document.querySelector('#register-form input[name=csrf]').remove();",
        vec![],
    )
    .await;
    let code = unused.code_for_step(unix_now() / PERIOD_SECS);
    b.fill("#register-form #code", &code).await;
    b.submit("#register").await;
    assert_eq!(
        b.status().await,
        403,
        "register without a token; {}",
        b.describe().await
    );
    assert_eq!(portal.mfa_state(FRANK), "enabled", "nothing was registered");
    b.goto(&portal.url(&format!("{P}/register"))).await;
    let mut app = register(&b, false).await;

    let security = portal.url(&format!("{P}/security"));
    for (case, script, name) in [
        (
            "missing",
            "document.querySelector('#create-app-password-form input[name=csrf]').remove();",
            "No token",
        ),
        (
            "altered",
            "const t = document.querySelector('#create-app-password-form input[name=csrf]'); \
             t.value = t.value.slice(0, -2) + (t.value.endsWith('AA') ? 'BB' : 'AA');",
            "Altered token",
        ),
        (
            "empty",
            "document.querySelector('#create-app-password-form input[name=csrf]').value = '';",
            "Empty token",
        ),
    ] {
        b.goto(&security).await;
        b.execute(script, vec![]).await;
        b.fill("#app-password-name", name).await;
        b.submit("#create-app-password").await;
        assert_eq!(b.status().await, 403, "{case} token; {}", b.describe().await);
        let error = error_text(&b).await.unwrap_or_default();
        assert!(error.contains(FORM_EXPIRED), "{case} token: {error:?}");
        assert!(b.try_find("#new-app-password").await.is_none(), "{case} token");
        if case == "missing" {
            b.screenshot("form-expired").await;
        }
    }
    assert!(
        portal.app_password_names(FRANK).is_empty(),
        "no app password was created"
    );

    // Signing out with a bad token does not sign out.
    b.goto(&security).await;
    b.execute(
        "document.querySelector('#sign-out-form input[name=csrf]').value = 'x';",
        vec![],
    )
    .await;
    b.submit("#sign-out").await;
    assert_eq!(b.status().await, 403, "{}", b.describe().await);
    b.goto(&security).await;
    assert_at(&b, &format!("{P}/security"), "still signed in").await;

    // The token did not go stale: the untouched form works.
    b.fill("#app-password-name", "Thunderbird").await;
    b.submit("#create-app-password").await;
    b.find("#new-app-password").await;
    assert_eq!(portal.app_password_names(FRANK), ["Thunderbird"]);

    // The code used to register, again, after signing in again: refused.
    b.goto(&security).await;
    b.submit("#sign-out").await;
    assert_at(&b, &format!("{P}/sign-in"), "signed out").await;
    b.goto(&security).await;
    assert!(
        b.path().await.starts_with(&format!("{P}/sign-in")),
        "signed out: {}",
        b.describe().await
    );
    enter_password(&b, FRANK, PASSWORD).await;
    assert_at(&b, &format!("{P}/verify"), "a registered user is asked for a code").await;
    enter_code(&b, &app.last_code()).await;
    assert_eq!(
        error_text(&b).await.as_deref(),
        Some(WRONG_CODE),
        "{}",
        b.describe().await
    );
    b.find("#verify-form").await;
    b.screenshot("verify-error").await;
    // A code of the next step (one step of skew) signs in.
    enter_code(&b, &app.next_code().await).await;
    assert_at(&b, &format!("{P}/security"), "a fresh code signs in").await;

    // Changing the authenticator asks for a current code too.
    b.click("#change-authenticator").await;
    b.find("#register-form #current-code").await;
    b.find("#register-form #code").await;
    assert_labelled(&b).await;
    b.screenshot("change-authenticator").await;
    b.close().await;
}

/// The sign-in page tells nothing about which users exist: an unknown
/// user, a wrong password and an app password get the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_errors_do_not_reveal_users() {
    const GRACE: &str = "grace@contoso.example";
    let portal = Portal::start(Fedgate::builder());
    let admin = portal.admin();
    admin.allow_app_passwords(true);
    portal.user(GRACE, "disabled").await;
    let app = admin.create_app_password(GRACE, "Outlook");
    SignIn::new(portal.fg.plain, GRACE, &app)
        .until(StatusCode::OK, POLL)
        .await;
    let b = Browser::start("no_enumeration").await;

    let mut answers = Vec::new();
    for (case, upn, password) in [
        ("unknown user", "nobody@contoso.example", PASSWORD),
        ("wrong password", GRACE, "Wrong horse 7"),
        ("app password", GRACE, app.as_str()),
    ] {
        b.goto(&portal.url(&format!("{P}/sign-in"))).await;
        enter_password(&b, upn, password).await;
        let status = b.status().await;
        let path = b.path().await;
        let error = b.find(".error").await;
        let role = error.attr("role").await.unwrap();
        let text = error.text().await.unwrap();
        assert_eq!(text, SIGN_IN_FAILED, "{case}");
        assert_eq!(role.as_deref(), Some("alert"), "{case}");
        b.find("#sign-in-form #password").await;
        assert_eq!(
            b.prop("#password", "value").await.as_deref(),
            Some(""),
            "{case}: the password is not sent back"
        );
        if case == "unknown user" {
            assert_labelled(&b).await;
            b.screenshot("sign-in-error").await;
        }
        answers.push((case, status, path, text));
    }
    let (_, status, path, text) = &answers[0];
    for (case, s, p, t) in &answers[1..] {
        assert_eq!(
            (s, p, t),
            (status, path, text),
            "{case} answers as an unknown user does"
        );
    }
    // The right password without the form's token: refused, not signed in.
    b.goto(&portal.url(&format!("{P}/sign-in"))).await;
    b.execute(
        "document.querySelector('#sign-in-form input[name=csrf]').remove();",
        vec![],
    )
    .await;
    enter_password(&b, GRACE, PASSWORD).await;
    assert_eq!(b.status().await, 403, "sign-in without a token; {}", b.describe().await);
    let error = error_text(&b).await.unwrap_or_default();
    assert!(error.contains(FORM_EXPIRED), "sign-in without a token: {error:?}");
    // None of them left the browser signed in.
    b.goto(&portal.url(&format!("{P}/security"))).await;
    assert!(
        b.path().await.starts_with(&format!("{P}/sign-in")),
        "{}",
        b.describe().await
    );
    b.close().await;
}

/// Five wrong codes in a row stop the verify form for a while, the right
/// code included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_wrong_codes_stop_verification() {
    const HEIDI: &str = "heidi@contoso.example";
    let portal = Portal::start(Fedgate::builder());
    portal.user(HEIDI, "enabled").await;
    let b = Browser::start("too_many_codes").await;
    b.goto(&portal.url(&format!("{P}/sign-in"))).await;
    enter_password(&b, HEIDI, PASSWORD).await;
    let mut app = register(&b, false).await;
    b.goto(&portal.url(&format!("{P}/security"))).await;
    b.submit("#sign-out").await;

    b.goto(&portal.url(&format!("{P}/sign-in"))).await;
    enter_password(&b, HEIDI, PASSWORD).await;
    assert_at(&b, &format!("{P}/verify"), "a registered user is asked for a code").await;
    // The fifth wrong code is answered with the lockout, or the sixth try
    // is (the form may also be withheld once locked).
    let mut locked_at = None;
    for attempt in 1..=6 {
        if b.try_find("#verify-form").await.is_none() {
            break;
        }
        enter_code(&b, &app.wrong_code()).await;
        let error = error_text(&b).await.unwrap_or_default();
        if error.contains("Too many wrong codes") {
            locked_at = Some(attempt);
            break;
        }
        assert_eq!(error, WRONG_CODE, "wrong code {attempt}; {}", b.describe().await);
    }
    assert!(
        matches!(locked_at, Some(5 | 6)),
        "locked after {locked_at:?} wrong codes; {}",
        b.describe().await
    );
    b.screenshot("too-many-codes").await;
    // Locked: even the right code is refused.
    b.goto(&portal.url(&format!("{P}/verify"))).await;
    if b.try_find("#verify-form").await.is_some() {
        enter_code(&b, &app.next_code().await).await;
        let error = error_text(&b).await.unwrap_or_default();
        assert!(
            error.contains("Too many wrong codes"),
            "the right code during the lockout: {error:?}; {}",
            b.describe().await
        );
    }
    assert_ne!(b.path().await, format!("{P}/security"), "signed in during the lockout");

    // The count is the user's, not the browser session's: signing in
    // afresh buys no more tries.
    b.delete_cookies().await;
    b.goto(&portal.url(&format!("{P}/sign-in"))).await;
    enter_password(&b, HEIDI, PASSWORD).await;
    assert_at(&b, &format!("{P}/verify"), "signed in again during the lockout").await;
    enter_code(&b, &app.wrong_code()).await;
    let error = error_text(&b).await.unwrap_or_default();
    assert!(
        error.contains("Too many wrong codes"),
        "a new session during the lockout: {error:?}; {}",
        b.describe().await
    );
    b.close().await;
}

/// The portal over plain HTTP/1.1, cookies handled by hand: what a browser
/// would keep, and what a page's forms carry.
mod csrf {
    use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
    use http_body_util::BodyExt;

    use super::{Portal, P, PASSWORD, SESSION_COOKIE};
    use crate::support::client::{full, Client, Proto};
    use crate::support::Fedgate;

    const CSRF_COOKIE: &str = "__Host-fedgate_csrf";

    async fn send(
        fg: &Fedgate,
        method: &str,
        path: &str,
        cookies: &str,
        form: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(path);
        if !cookies.is_empty() {
            req = req.header(header::COOKIE, cookies);
        }
        if method == "POST" {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = req.body(full(form.to_owned())).unwrap();
        let resp = Client::plain(fg.plain, Proto::H1)
            .await
            .send(req)
            .await
            .expect("request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// The `Set-Cookie` of `name`, whole.
    fn set_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v: &HeaderValue| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
    }

    fn cookie_value(set_cookie: &str) -> String {
        let pair = set_cookie.split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_owned()
    }

    fn form_token(html: &str) -> String {
        let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
        html[at..].split('"').next().unwrap().to_owned()
    }

    fn sign_in_form(token: &str, upn: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", token)
            .append_pair("upn", upn)
            .append_pair("password", PASSWORD)
            .finish()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_csrf_cookie_is_fedgates_own_and_is_rotated_at_sign_in() {
        const IVAN: &str = "ivan@contoso.example";
        let portal = Portal::start(Fedgate::builder());
        portal.user(IVAN, "disabled").await;
        let fg = &portal.fg;

        // A first visit gets a cookie fedgate made, scoped as `__Host-`
        // demands.
        let (status, headers, html) = send(fg, "GET", &format!("{P}/sign-in"), "", "").await;
        assert_eq!(status, StatusCode::OK);
        let issued = set_cookie(&headers, CSRF_COOKIE).unwrap_or_else(|| panic!("no {CSRF_COOKIE}: {headers:?}"));
        for attribute in ["Path=/;", "Secure", "HttpOnly", "SameSite=Strict"] {
            assert!(issued.contains(attribute), "{attribute} missing: {issued}");
        }
        assert!(!issued.to_ascii_lowercase().contains("domain="), "{issued}");
        let c1 = cookie_value(issued);
        let t1 = form_token(&html);

        // A value the client chose is not taken: the page replaces it, and
        // a form posted with it (and the token the page showed for it) is
        // refused, changing nothing.
        let chosen = format!("{CSRF_COOKIE}={}", "a".repeat(40));
        for old_name in [chosen.clone(), format!("fedgate_csrf={}", "a".repeat(40))] {
            let (_, headers, html) = send(fg, "GET", &format!("{P}/sign-in"), &old_name, "").await;
            let replaced = set_cookie(&headers, CSRF_COOKIE).expect("a chosen cookie is replaced");
            assert_ne!(cookie_value(replaced), "a".repeat(40));
            let token = form_token(&html);
            let (status, headers, _) = send(
                fg,
                "POST",
                &format!("{P}/sign-in"),
                &old_name,
                &sign_in_form(&token, IVAN),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "signed in with the cookie {old_name}");
            assert!(set_cookie(&headers, SESSION_COOKIE).is_none());
        }

        // Signing in issues a new cookie; the forms of before are void.
        let (status, headers, _) = send(
            fg,
            "POST",
            &format!("{P}/sign-in"),
            &format!("{CSRF_COOKIE}={c1}"),
            &sign_in_form(&t1, IVAN),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{headers:?}");
        let session = cookie_value(set_cookie(&headers, SESSION_COOKIE).expect("a session"));
        let c2 = cookie_value(set_cookie(&headers, CSRF_COOKIE).expect("a new csrf cookie at sign-in"));
        assert_ne!(c1, c2, "the csrf cookie was not rotated at sign-in");
        let cookies = format!("{SESSION_COOKIE}={session}; {CSRF_COOKIE}={c2}");
        let (status, _, _) = send(fg, "POST", &format!("{P}/sign-out"), &cookies, &format!("csrf={t1}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a token from before sign-in signed out");
        // The token bound to the old cookie, with the old cookie, in the
        // new session: void too.
        let stale = format!("{SESSION_COOKIE}={session}; {CSRF_COOKIE}={c1}");
        let (status, _, _) = send(fg, "POST", &format!("{P}/sign-out"), &stale, &format!("csrf={t1}")).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the pre-sign-in pair works in the session"
        );

        // The session's own page and token work, and signing out rotates
        // the cookie again.
        let (status, _, html) = send(fg, "GET", &format!("{P}/security"), &cookies, "").await;
        assert_eq!(status, StatusCode::OK, "{html}");
        let t2 = form_token(&html);
        let (status, headers, _) = send(fg, "POST", &format!("{P}/sign-out"), &cookies, &format!("csrf={t2}")).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let c3 = cookie_value(set_cookie(&headers, CSRF_COOKIE).expect("a new csrf cookie at sign-out"));
        assert_ne!(c3, c2, "the csrf cookie was not rotated at sign-out");
    }
}

/// A user creates an app password limited to one service, with an expiry
/// and a network, sees those limits on its row, and narrows the network
/// further; a widening typed into the form is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_passwords_are_created_with_limits_shown_and_narrowed() {
    const FRAN: &str = "fran@contoso.example";
    const NAME: &str = "Tablet";
    let portal = Portal::start(
        Fedgate::builder()
            .cloud_route("/mail", "builtin:whoami", "name = \"mail\"")
            .cloud_route("/dav", "builtin:whoami", "name = \"dav\""),
    );
    let admin = portal.admin();
    admin.allow_app_passwords(true);
    portal.user(FRAN, "enabled").await;
    let b = Browser::start("limits").await;
    b.goto(&portal.url(&format!("{P}/sign-in"))).await;
    enter_password(&b, FRAN, PASSWORD).await;
    let _app = register(&b, false).await;

    b.goto(&portal.url(&format!("{P}/security"))).await;
    b.fill("#create-app-password-form #app-password-name", NAME).await;
    let mail_box = "#create-app-password-form input[name=\"scope:mail\"]";
    b.find(mail_box).await;
    b.find("#create-app-password-form input[name=\"scope:dav\"]").await;
    b.click(mail_box).await;
    b.execute("document.getElementById('create-expires').value = '90d';", vec![])
        .await;
    b.fill("#app-password-from", "127.0.0.0/8 192.0.2.0/24").await;
    assert_labelled(&b).await;
    b.submit("#create-app-password").await;
    let password = b.text("#new-app-password").await.trim().to_owned();

    let list = admin.run(&["--json", "app-password", "list", FRAN]).json();
    let limits = &list[0]["limits"];
    assert_eq!(limits["scope"], serde_json::json!(["mail"]), "{list}");
    assert_eq!(
        limits["networks"],
        serde_json::json!(["127.0.0.0/8", "192.0.2.0/24"]),
        "{list}"
    );
    assert!(limits["expires_at"].is_string(), "{list}");
    let on = |path| SignIn::new(portal.fg.plain, FRAN, &password).path(path);
    signed_in(&on("/mail").agent("portal-made-mail").send().await, "its service");
    assert_unauthorized(&on("/dav").agent("portal-made-dav").send().await, "another service");

    b.goto(&portal.url(&format!("{P}/security"))).await;
    let row = format!("#app-passwords tr[data-name=\"{NAME}\"]");
    let shown = b.text(&format!("{row} td.limits")).await;
    assert!(
        shown.contains("Only mail")
            && shown.contains("Expires")
            && shown.contains("Only from 127.0.0.0/8, 192.0.2.0/24"),
        "{shown}"
    );
    b.screenshot("app-password-limits").await;

    // Narrowed to a network the test's client is outside of.
    let narrow = format!("{row} form.narrow-app-password");
    b.click(&format!("{row} details summary")).await;
    b.fill(&format!("{narrow} input[name=from]"), "192.0.2.0/24").await;
    b.submit(&format!("{narrow} button[type=submit]")).await;
    assert_at(&b, &format!("{P}/security"), "after narrowing").await;
    let shown = b.text(&format!("{row} td.limits")).await;
    assert!(
        shown.contains("Only from 192.0.2.0/24") && !shown.contains("127.0.0.0/8"),
        "{shown}"
    );
    let mail = on("/mail").agent("portal-narrowed");
    let took = mail.until(StatusCode::UNAUTHORIZED, POLL).await;
    assert!(took <= REVOCATION_LIMIT, "narrowing took {took:?}");

    // Widening is refused with the reason, and nothing changes.
    b.click(&format!("{row} details summary")).await;
    b.fill(&format!("{narrow} input[name=from]"), "0.0.0.0/0").await;
    b.submit(&format!("{narrow} button[type=submit]")).await;
    let error = error_text(&b).await.unwrap_or_default();
    assert!(
        error.contains("can only be narrowed"),
        "{error}: {}",
        b.describe().await
    );
    let list = admin.run(&["--json", "app-password", "list", FRAN]).json();
    assert_eq!(
        list[0]["limits"]["networks"],
        serde_json::json!(["192.0.2.0/24"]),
        "{list}"
    );
    expect_reasons(
        &admin,
        &[
            ("portal-made-mail", "app_password"),
            ("portal-made-dav", "app_password_out_of_scope"),
            ("portal-narrowed", "app_password_network"),
        ],
    );
    b.close().await;
}
