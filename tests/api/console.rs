//! The console at `/ui/`, used as a person uses it: a real headless
//! Chromium driven through chromedriver (WebDriver, `fantoccini`) signs in
//! through a real OpenID Connect provider (the `oidc-provider` package,
//! `tests/oidc/server.js`) started on loopback, as an admin who revokes a
//! grant from its ticket's trace, as an auditor who cannot, and as someone
//! with no role. With `WARRANT_SCREENSHOTS=docs` the SQLite run saves the
//! main pages as PNGs into `docs/`.
//!
//! Needs `chromium`, `chromium-driver` and `node` (with `npm ci` in
//! tests/oidc; the test runs it when `node_modules` is missing). When one
//! is missing the test is skipped with a note, or fails when
//! `WARRANT_TEST_PG` is set (CI).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::helpers::{Backend, TestApp};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};

const CLIENT_ID: &str = "warrant-console";
const CLIENT_SECRET: &str = "console-client-secret-for-tests";
/// The `[ui]` session key: 32 bytes, base64.
const SESSION_KEY: &str = "Y29uc29sZS1zZXNzaW9uLWtleS1mb3ItdGVzdHMhISE=";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the browser test can run: a missing tool skips it with a
/// note, or fails it in CI.
fn prerequisites() -> bool {
    let missing: Vec<&str> = ["chromium", "chromedriver", "node", "npm"]
        .into_iter()
        .filter(|tool| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .collect();
    let mut why = if missing.is_empty() {
        None
    } else {
        Some(format!(
            "{} not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; Node.js 18+ with npm)",
            missing.join(", ")
        ))
    };
    let oidc = root().join("tests/oidc");
    if why.is_none() && !oidc.join("node_modules/oidc-provider").exists() {
        let ok = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&oidc)
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            why = Some("`npm ci` in tests/oidc failed".into());
        }
    }
    match why {
        None => true,
        Some(why) => {
            if std::env::var_os("WARRANT_TEST_PG").is_some() {
                panic!("the console's browser test cannot run: {why}");
            }
            eprintln!("skipping the console's browser test: {why}");
            false
        }
    }
}

/// A free port below the kernel's ephemeral range (32768 and up), so that
/// nothing binding port 0 (the provider, the receiver, another test's app)
/// takes it between this check and warrant's own bind.
fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(20_000..30_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 30000");
}

/// A child process that is killed when the test ends.
struct Running {
    _child: tokio::process::Child,
}

/// The OpenID Connect provider, with these users and their groups.
async fn start_oidc(redirect: &str) -> (Running, String) {
    let users = json!({
        "ada": { "name": "Ada Admin", "email": "ada@example.com", "groups": ["staff", "warrant-admins"] },
        "otto": { "name": "Otto Auditor", "email": "otto@example.com", "groups": ["warrant-auditors"] },
        "nora": { "name": "Nora Nobody", "email": "nora@example.com", "groups": ["staff"] },
    });
    let mut child = tokio::process::Command::new("node")
        .arg("server.js")
        .current_dir(root().join("tests/oidc"))
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("OIDC_REDIRECT_URI", redirect)
        .env("OIDC_USERS", users.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port = tokio::time::timeout(StdDuration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(p) = line.strip_prefix("listening ") {
                return p.trim().to_string();
            }
        }
        panic!("the OIDC provider stopped before listening");
    })
    .await
    .expect("the OIDC provider listens within 30s");
    // Keep reading so the provider never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (
        Running { _child: child },
        format!("http://127.0.0.1:{port}"),
    )
}

async fn start_chromedriver() -> (Running, String) {
    let port = free_port();
    let child = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{url}/status")).send().await {
            if r.status().is_success() {
                return (Running { _child: child }, url);
            }
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {url}");
}

/// A fresh headless Chromium with its own profile (so its own provider
/// session).
async fn browser(driver: &str, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session")
}

/// Waits (for the browser, never for warrant's clock) until the page
/// holds `needle`.
async fn wait_text(b: &Client, needle: &str) -> String {
    for _ in 0..150 {
        let src = b.source().await.unwrap_or_default();
        if src.contains(needle) {
            return src;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    panic!(
        "the page at {:?} never showed {needle:?}: {}",
        b.current_url().await.map(|u| u.to_string()),
        b.source().await.unwrap_or_default()
    );
}

/// Signs in at the provider's login form as `login`.
async fn sign_in(b: &Client, addr: &str, path: &str, login: &str) {
    b.goto(&format!("{addr}{path}")).await.unwrap();
    let field = b
        .wait()
        .at_most(StdDuration::from_secs(15))
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("the provider's login form");
    field.send_keys(login).await.unwrap();
    b.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("any password")
        .await
        .unwrap();
    b.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn screenshot(b: &Client, backend: Backend, name: &str) {
    let Ok(dir) = std::env::var("WARRANT_SCREENSHOTS") else {
        return;
    };
    if backend != Backend::Sqlite {
        return;
    }
    let dir = root().join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let png = b.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
}

fn ui_config(dir: &Path, issuer: &str, redirect: &str) -> String {
    let key = dir.join("session.key");
    let secret = dir.join("client.secret");
    std::fs::write(&key, SESSION_KEY).unwrap();
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    format!(
        r#"
[ui]
session_key_file = "{key}"
session_ttl = "8h"
[ui.oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
redirect_url = "{redirect}"
roles_claim = "groups"
admin_values = ["warrant-admins"]
auditor_values = ["warrant-auditors"]
scopes = ["openid", "profile", "email", "groups"]
"#,
        key = key.display(),
        secret = secret.display(),
    )
}

/// An approved GitHub ticket for `hooks/orders-db`, with a hostile title.
async fn approve(app: &TestApp, number: u64, at: DateTime<Utc>) {
    let mut issue = Issue::new(number, at);
    issue.labels = vec!["access-approved"];
    let mut body = payloads::github("labeled", &issue, "alice-gh", Some("access-approved"));
    body["issue"]["title"] = json!("<script>alert('x')</script> orders-db for INC-7");
    let r = app
        .post_github("issues", &format!("console-{number}"), &body)
        .await;
    assert_eq!(r.status(), 200);
}

async fn events(app: &TestApp, kind: &str) -> Vec<Value> {
    let (_, body) = app
        .get_json("/v1/audit?limit=1000", crate::helpers::AUDITOR_TOKEN)
        .await;
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

async fn console_as_people_use_it(backend: Backend) {
    if !prerequisites() {
        return;
    }
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let redirect = format!("{addr}/ui/callback");
    let (_oidc, issuer) = start_oidc(&redirect).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = ui_config(dir.path(), &issuer, &redirect);
    let Some(app) = TestApp::spawn_edit(backend, &extra, |t| {
        t.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
    })
    .await
    else {
        return;
    };
    assert_eq!(app.addr, addr);
    // ID tokens carry the provider's real times, checked on warrant's clock.
    let start = Utc::now().trunc_subsecs(0);
    app.clock.set(start);

    // Without a session, /ui/ sends the browser to the provider, with PKCE.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain.get(format!("{addr}/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(&format!("{issuer}/auth?")), "{to}");
    for part in [
        "code_challenge_method=S256",
        "state=",
        "nonce=",
        "code_challenge=",
    ] {
        assert!(to.contains(part), "{part} in {to}");
    }
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["warrant_login=", "HttpOnly", "SameSite=Lax", "Path=/ui"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    // A forged callback (no sign-in started here) is refused.
    let r = plain
        .get(format!("{addr}/ui/callback?code=x&state=y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A real webhook flow grants access through the http provider.
    approve(&app, 7, start).await;
    app.run_jobs().await;
    assert_eq!(app.receiver.calls().len(), 1);
    let key = "github:acme/access-requests#7";
    let grant = app.grants_of(key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let activated = app.clock_now();
    app.advance(Duration::minutes(10));

    let (_driver, driver) = start_chromedriver().await;
    let profiles = tempfile::tempdir().unwrap();

    // An admin signs in and lands on the live grants.
    let admin = browser(&driver, &profiles.path().join("admin")).await;
    sign_in(&admin, &addr, "/ui/", "ada").await;
    let live = wait_text(&admin, "Live grants").await;
    assert!(live.contains(key), "{live}");
    assert!(live.contains("Ada Admin"));
    assert_eq!(
        admin.current_url().await.unwrap().as_str(),
        format!("{addr}/ui/")
    );
    let signed_in = events(&app, "ui.signed_in").await;
    assert_eq!(signed_in.len(), 1);
    assert_eq!(signed_in[0]["data"]["sub"], "ada");
    assert_eq!(signed_in[0]["data"]["role"], "admin");
    assert!(
        signed_in[0]["actor"]
            .as_str()
            .unwrap()
            .contains("ada@example.com"),
        "{}",
        signed_in[0]
    );
    screenshot(&admin, backend, "live-grants").await;

    // The ticket's trace, reached by its link; the hostile title is text.
    admin
        .find(Locator::Css(&format!("a[href='/ui/tickets/{}']", enc(key))))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let trace = wait_text(&admin, "Timeline").await;
    assert!(!trace.contains("<script>alert"), "the title is escaped");
    assert!(trace.contains("&lt;script&gt;alert"));
    assert!(trace.contains("https://github.com/acme/access-requests/issues/7"));
    assert!(trace.contains("grant.applied") || trace.contains("Grant active"));
    screenshot(&admin, backend, "trace").await;

    // Revoking asks for a reason; the provider hears the revoke once the
    // job runs.
    admin
        .find(Locator::Css("form.revoke input[name=reason]"))
        .await
        .unwrap()
        .send_keys("left the incident early")
        .await
        .unwrap();
    admin
        .find(Locator::Css("form.revoke button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&admin, "class=\"state s-revoking\"").await;
    let asked = events(&app, "revoke.requested").await;
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["grant_id"], grant);
    assert!(asked[0]["actor"].as_str().unwrap().contains("Ada Admin"));
    assert_eq!(asked[0]["data"]["note"], "left the incident early");
    // Until the job runs, the revocation waits in "attention".
    admin.goto(&format!("{addr}/ui/attention")).await.unwrap();
    let attention = wait_text(&admin, "Stuck in revoking (1)").await;
    assert!(attention.contains(key));
    screenshot(&admin, backend, "attention").await;
    app.run_jobs().await;
    let calls = app.receiver.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.action() == "revoke" && c.body["grant_id"] == grant.as_str()),
        "{calls:?}"
    );
    // Signing out is audited and ends the session.
    admin.goto(&format!("{addr}/ui/")).await.unwrap();
    wait_text(&admin, "Sign out").await;
    admin
        .find(Locator::Css("form[action='/ui/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&admin, "Signed out").await;
    assert_eq!(events(&app, "ui.signed_out").await.len(), 1);
    admin.close().await.unwrap();

    // A second live grant, which an auditor sees but cannot revoke.
    approve(&app, 8, app.clock_now()).await;
    app.run_jobs().await;
    let other = app.grants_of("github:acme/access-requests#8").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let auditor = browser(&driver, &profiles.path().join("auditor")).await;
    sign_in(
        &auditor,
        &addr,
        "/ui/tickets/github%3Aacme%2Faccess-requests%238",
        "otto",
    )
    .await;
    let page = wait_text(&auditor, "Timeline").await;
    assert!(page.contains("Otto Auditor"));
    assert!(page.contains("class=\"state s-active\""));
    assert!(auditor
        .find_all(Locator::Css("form.revoke"))
        .await
        .unwrap()
        .is_empty());
    // A forged revoke, with the auditor's own session and CSRF token, or
    // with no token, is 403. (The pages' CSP keeps scripts from posting,
    // so the test posts with the browser's cookie.)
    let session = auditor
        .get_named_cookie("warrant_session")
        .await
        .unwrap()
        .value()
        .to_string();
    let csrf = auditor
        .find(Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    for form in [
        vec![("csrf", csrf.as_str()), ("reason", "forged")],
        vec![("reason", "forged")],
        vec![("csrf", "not-the-token"), ("reason", "forged")],
    ] {
        let r = plain
            .post(format!("{addr}/ui/grants/{other}/revoke"))
            .header("cookie", format!("warrant_session={session}"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{form:?}");
    }
    assert_eq!(
        app.grants_of("github:acme/access-requests#8").await[0]["state"],
        "active"
    );
    // "Who had R at T" finds the revoked grant while it was active.
    auditor.goto(&format!("{addr}/ui/who")).await.unwrap();
    let at = (activated + Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    auditor
        .find(Locator::Css("input[name=resource]"))
        .await
        .unwrap()
        .send_keys("hooks/orders-db")
        .await
        .unwrap();
    auditor
        .find(Locator::Css("input[name=at]"))
        .await
        .unwrap()
        .send_keys(&at)
        .await
        .unwrap();
    auditor
        .find(Locator::Css("form[action='/ui/who'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let who = wait_text(&auditor, "Who had hooks/orders-db at").await;
    assert!(who.contains(&format!("data-grant=\"{grant}\"")), "{who}");
    assert!(!who.contains(&format!("data-grant=\"{other}\"")));
    screenshot(&auditor, backend, "who-had").await;
    // The grants page filters; the audit export downloads as CSV.
    let cookie = format!("warrant_session={session}");
    let page = plain
        .get(format!(
            "{addr}/ui/grants?state=revoked&resource=hooks%2Forders-db"
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("data-grant=\"{grant}\"")), "{page}");
    assert!(!page.contains(&format!("data-grant=\"{other}\"")));
    let r = plain
        .get(format!(
            "{addr}/ui/audit/export?format=csv&ticket={}",
            enc(key)
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("warrant-audit.csv"));
    let csv = r.text().await.unwrap();
    assert!(csv.starts_with("seq,at,type,"), "{csv}");
    assert!(csv.contains("revoke.requested"));
    auditor
        .goto(&format!("{addr}/ui/audit?verify=1"))
        .await
        .unwrap();
    wait_text(&auditor, "the chain is intact").await;
    auditor.close().await.unwrap();

    // Someone whose groups give no role sees "no access", and gets no session.
    let nobody = browser(&driver, &profiles.path().join("nobody")).await;
    sign_in(&nobody, &addr, "/ui/", "nora").await;
    wait_text(&nobody, "No access").await;
    // No session was made: the next page signs in again, and is refused again.
    nobody.goto(&format!("{addr}/ui/grants")).await.unwrap();
    wait_text(&nobody, "No access").await;
    let refused = events(&app, "ui.sign_in_refused").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["data"]["sub"], "nora");
    nobody.close().await.unwrap();
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Without a `[ui]` section there is no console.
async fn no_ui_section_no_console(backend: Backend) {
    let app = app!(backend);
    let r = app
        .client
        .get(format!("{}/ui/", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

backend_tests!(console_as_people_use_it, no_ui_section_no_console);
