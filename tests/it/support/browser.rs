//! Headless Chromium driven through chromedriver (WebDriver), for the tests
//! of the self-service portal.
//!
//! Each [`Browser`] runs its own `chromedriver` on a free loopback port, as
//! a child process, with a fresh Chromium profile in a temporary directory.
//! The machine has no network: the command-line flags keep Chromium from
//! its background connections (updates, sync, field trials, QUIC probes).
//! On drop the WebDriver session is deleted (which quits Chromium), then
//! chromedriver is killed by its PID, and so is any Chromium process still
//! running on the profile directory (found by that directory in its
//! command line), so a failing test leaves nothing behind.
//!
//! fantoccini speaks WebDriver over plain HTTP here (no TLS feature: the
//! driver is on loopback); the pages themselves are fetched by Chromium.
//! Every helper panics with the page's URL and source when something is
//! not there, which is what a failing browser test needs to show.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// Debian's `chromium` and `chromium-driver` packages.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub const DESKTOP: (u32, u32) = (1280, 900);
/// A phone in portrait (CSS pixels), for the small screenshots.
pub const PHONE: (u32, u32) = (390, 844);

/// How long [`Browser::find`] and the navigation waits keep trying.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Browsers running at once across the test binary: each is a handful of
/// processes, and a small machine runs every test in parallel.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

/// A cookie as the browser holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    /// `Strict`, `Lax` or `None`, as the browser reports it.
    pub same_site: Option<String>,
}

/// The chromedriver child process.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let mut last_error = String::new();
        // The port is free when asked for; another process may take it
        // before chromedriver binds it, so try again a few times.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free loopback port")
                .port();
            let mut child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {CHROMEDRIVER} ({e}): run scripts/install-test-deps (Debian package chromium-driver)")
                });
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("chromedriver exited with {status}: {}", read_lossy(log));
                    break;
                }
                if let Ok((200, body)) = raw_http(addr, "GET", "/status", None) {
                    if serde_json::from_str::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == true) {
                        return Driver { child, addr };
                    }
                }
                if Instant::now() >= deadline {
                    last_error = format!("chromedriver not ready on {addr} after 10 s: {}", read_lossy(log));
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        panic!("{last_error}");
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_pid(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// A Chrome DevTools Protocol call through chromedriver's
/// `goog/cdp/execute` endpoint.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        let session = session_id.expect("a WebDriver session");
        base_url.join(&format!("session/{session}/goog/cdp/execute"))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

pub struct Browser {
    // Declared before `driver`: dropped (session deleted) while it runs.
    client: Option<Client>,
    session: String,
    driver: Driver,
    profile: tempfile::TempDir,
    test: String,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. `test` names
    /// the screenshots (`target/screenshots/<test>-<name>.png`).
    pub async fn start(test: &str) -> Browser {
        let slot = SLOTS.acquire().await.expect("the semaphore is never closed");
        let profile = tempfile::Builder::new()
            .prefix("fedgate-chromium-")
            .tempdir()
            .expect("temp dir for the Chromium profile");
        let user_data = profile.path().join("profile");
        let driver = Driver::start(&profile.path().join("chromedriver.log"));
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--ignore-certificate-errors".to_owned(),
            format!("--user-data-dir={}", user_data.display()),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
        ];
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "timeouts".into(),
            json!({ "pageLoad": 30_000, "script": 10_000, "implicit": 0 }),
        );
        caps.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
        let client = match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url())
            .await
        {
            Ok(client) => client,
            Err(e) => panic!(
                "no Chromium session ({e}); chromedriver log:\n{}",
                read_lossy(&profile.path().join("chromedriver.log"))
            ),
        };
        let session = client
            .session_id()
            .await
            .expect("session id")
            .expect("a WebDriver session");
        Browser {
            client: Some(client),
            session,
            driver,
            profile,
            test: test.to_owned(),
            _slot: slot,
        }
    }

    /// The fantoccini client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Loads `url` and waits for the page (after redirects) to load.
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client().goto(url).await {
            panic!("loading {url}: {e}");
        }
    }

    /// The address of the page shown.
    pub async fn url(&self) -> url::Url {
        self.client().current_url().await.expect("current URL")
    }

    /// Path and query of the page shown (`/portal/security`).
    pub async fn path(&self) -> String {
        let url = self.url().await;
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The serialised DOM of the page shown.
    pub async fn source(&self) -> String {
        self.client().source().await.expect("page source")
    }

    /// The HTTP status with which the page shown was served (Navigation
    /// Timing's `responseStatus`).
    pub async fn status(&self) -> u16 {
        let v = self
            .execute(
                "const n = performance.getEntriesByType('navigation')[0]; return n ? n.responseStatus : null;",
                vec![],
            )
            .await;
        match v.as_u64() {
            Some(status) => status as u16,
            None => panic!("no navigation status ({v}) on {}", self.url().await),
        }
    }

    /// The title of the page shown.
    pub async fn title(&self) -> String {
        self.client().title().await.expect("title")
    }

    /// What went wrong, with the page: for panic messages.
    pub async fn describe(&self) -> String {
        let url = self.client().current_url().await.map(|u| u.to_string());
        let source = self
            .client()
            .source()
            .await
            .unwrap_or_else(|e| format!("(no source: {e})"));
        format!("page {}:\n{source}", url.unwrap_or_else(|e| format!("(no URL: {e})")))
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.client().find(Locator::Css(css)).await {
                Ok(e) => return e,
                Err(e) if is_no_such_element(&e) && Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) => panic!("no element {css} ({e}) on {}", self.describe().await),
            }
        }
    }

    /// The first element matching `css` if there is one now.
    pub async fn try_find(&self, css: &str) -> Option<Element> {
        match self.client().find(Locator::Css(css)).await {
            Ok(e) => Some(e),
            Err(e) if is_no_such_element(&e) => None,
            Err(e) => panic!("looking for {css}: {e}"),
        }
    }

    /// Every element matching `css` now.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client()
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("looking for {css}: {e}"))
    }

    /// Clears the input `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap_or_else(|e| panic!("clearing {css}: {e}"));
        input
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    /// Clicks `css` (no wait for a navigation: see [`Browser::submit`]).
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        if let Err(e) = element.click().await {
            panic!("clicking {css} ({e}) on {}", self.describe().await);
        }
    }

    /// Clicks `css` and waits until a new document has loaded in its place
    /// (the answer to a form's POST, after its redirects).
    pub async fn submit(&self, css: &str) {
        self.execute("window.__fedgateOldPage = true;", vec![]).await;
        self.click(css).await;
        let deadline = Instant::now() + WAIT;
        loop {
            // Between documents the script may fail; that is "not yet".
            let loaded = self
                .client()
                .execute(
                    "return window.__fedgateOldPage === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            if matches!(loaded, Ok(Value::Bool(true))) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "clicking {css} led to no new page within 10 s; {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The rendered text of `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// An attribute of `css`, as written in the page.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)
            .await
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("attribute {name} of {css}: {e}"))
    }

    /// A property of `css` (such as an input's current `value`).
    pub async fn prop(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)
            .await
            .prop(name)
            .await
            .unwrap_or_else(|e| panic!("property {name} of {css}: {e}"))
    }

    /// Runs `script` as a function body in the page, with `args` as
    /// `arguments`; returns what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        match self.client().execute(script, args).await {
            Ok(v) => v,
            Err(e) => panic!("script failed ({e}): {script}"),
        }
    }

    /// Every cookie the browser would send to the page shown, HttpOnly
    /// ones included.
    pub async fn cookies(&self) -> Vec<BrowserCookie> {
        let cookies = self.client().get_all_cookies().await.expect("cookies");
        cookies
            .iter()
            .map(|c| BrowserCookie {
                name: c.name().to_owned(),
                value: c.value().to_owned(),
                path: c.path().map(str::to_owned),
                domain: c.domain().map(str::to_owned),
                secure: c.secure().unwrap_or(false),
                http_only: c.http_only().unwrap_or(false),
                same_site: c.same_site().map(|s| format!("{s:?}")),
            })
            .collect()
    }

    pub async fn cookie(&self, name: &str) -> Option<BrowserCookie> {
        self.cookies().await.into_iter().find(|c| c.name == name)
    }

    pub async fn delete_cookies(&self) {
        self.client().delete_all_cookies().await.expect("delete cookies");
    }

    async fn cdp(&self, cmd: &'static str, params: Value) -> Value {
        match self.client().issue_cmd(Cdp { cmd, params }).await {
            Ok(v) => v,
            Err(e) => panic!("DevTools {cmd}: {e}"),
        }
    }

    /// Saves the page shown as `<test>-<name>.png` (desktop: 1280 CSS
    /// pixels wide) and `<test>-<name>-phone.png` (a phone: 390 wide, at
    /// twice the pixel density, with mobile emulation so that
    /// `<meta name=viewport>` applies) under `target/screenshots/`. Each
    /// is as tall as the page, from one screen up to three. Returns the
    /// paths.
    pub async fn screenshot(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let desktop = dir.join(format!("{}-{name}.png", self.test));
        let phone = dir.join(format!("{}-{name}-phone.png", self.test));
        for (path, (width, height), mobile) in [(&desktop, DESKTOP, false), (&phone, PHONE, true)] {
            let png = self.capture(width, height, mobile).await;
            std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        (desktop, phone)
    }

    /// A PNG of the page laid out `width` CSS pixels wide, `height` tall
    /// or as tall as its content (up to 3 × `height`).
    async fn capture(&self, width: u32, height: u32, mobile: bool) -> Vec<u8> {
        let metrics = |h: u32| {
            json!({
                "width": width,
                "height": h,
                "deviceScaleFactor": if mobile { 2 } else { 1 },
                "mobile": mobile,
            })
        };
        self.cdp("Emulation.setDeviceMetricsOverride", metrics(height)).await;
        // The content's height in the emulated screen's pixels (a page
        // without a viewport meta tag is zoomed out on a phone).
        let content = self
            .client()
            .execute_async(
                "const done = arguments[0];\
                 requestAnimationFrame(() => requestAnimationFrame(() => {\
                   const scale = window.visualViewport ? visualViewport.scale : 1;\
                   const b = document.body ? document.body.getBoundingClientRect().bottom + scrollY : 0;\
                   const m = document.body ? parseFloat(getComputedStyle(document.body).marginBottom) || 0 : 0;\
                   done(Math.ceil((b + m) * scale));\
                 }));",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(height as u64);
        let full = (content as u32).clamp(height, 3 * height);
        if full > height {
            self.cdp("Emulation.setDeviceMetricsOverride", metrics(full)).await;
        }
        let shot = self.cdp("Page.captureScreenshot", json!({ "format": "png" })).await;
        self.cdp("Emulation.clearDeviceMetricsOverride", json!({})).await;
        let data = shot["data"].as_str().expect("screenshot data");
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).expect("PNG in base64")
    }

    /// PIDs of the Chromium processes running on this browser's profile.
    pub fn chromium_pids(&self) -> Vec<u32> {
        pids_with_arg(&self.profile_arg())
    }

    fn profile_arg(&self) -> String {
        format!("--user-data-dir={}", self.profile.path().join("profile").display())
    }

    /// Ends the session (Chromium quits) and chromedriver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.client.take().is_some() {
            // Not closed (a test failed): end the session by hand. Blocking,
            // but on loopback and bounded by the socket timeouts.
            let _ = raw_http(self.driver.addr, "DELETE", &format!("/session/{}", self.session), None);
        }
        // Then chromedriver (Driver's drop, after this) and any Chromium
        // process that outlived the session, found by its profile directory.
        for pid in self.chromium_pids() {
            kill_pid(pid);
        }
    }
}

fn is_no_such_element(e: &CmdError) -> bool {
    e.is_no_such_element()
}

/// Where screenshots go: `$CARGO_TARGET_DIR/screenshots`, else the
/// package's `target/screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| {
            let text = String::from_utf8_lossy(&b).into_owned();
            // The end of the log is what tells why.
            let start = text.len().saturating_sub(4000);
            let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text[start..].to_owned()
        })
        .unwrap_or_else(|e| format!("(no log: {e})"))
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// PIDs of processes with `arg` among their command-line arguments.
fn pids_with_arg(arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            // A zombie (exited, not yet reaped) has an empty command line.
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()).then_some(pid)
        })
        .collect()
}

/// One HTTP/1.1 request to chromedriver without the async client (for
/// readiness checks and for cleaning up in `Drop`); (status, body).
/// chromedriver keeps connections open whatever the request says, so the
/// body is read by its Content-Length.
fn raw_http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let bad = |what: &str| std::io::Error::other(format!("chromedriver answered {what}"));
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(bad("no complete head"));
        }
        answer.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while answer.len() < head_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(bad("a short body"));
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&answer[head_end..head_end + length]).into_owned();
    Ok((status, body))
}
