//! The `aws_identity_center` provider against moto in server mode, started
//! by each test on a loopback port and seeded through the SDK: a ticket's
//! grant makes the account assignment and closing the ticket deletes it;
//! an assignment already made, or already gone, is done; an unknown
//! permission set or user fails the grant with its name; drift finds (and
//! removes) an assignment made by hand, and leaves group assignments alone.
//!
//! moto answers every assignment request `SUCCEEDED` at once, so the wait
//! for a request in progress (`DescribeAccountAssignment*Status`) is not
//! exercised here; moto also makes a second assignment when asked to
//! create one that exists, which these tests would see.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use aws_sdk_identitystore as identitystore;
use aws_sdk_ssoadmin as ssoadmin;
use chrono::Duration;
use serde_json::Value;
use ssoadmin::types::{PrincipalType, TargetType};

use crate::backend_tests;
use crate::helpers::{erin_closes, erin_requests, issue_key, Backend, TestApp};
use warrant::drift::{self, Outcome};

const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "111122223333";
const SET: &str = "ReadOnly";

/// The `moto_server` to run: `$MOTO_SERVER`, else the one on `PATH`, else
/// pyenv's shim.
fn moto_server() -> Option<PathBuf> {
    let candidates = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("moto_server"),
            PathBuf::from("/root/.pyenv/shims/moto_server"),
        ]);
    for bin in candidates {
        let runs = Command::new(&bin)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if runs {
            return Some(bin);
        }
    }
    None
}

/// A moto server of the test's own, killed when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    /// Starts moto, or returns `None` (skip) when it is not installed; in
    /// CI (`WARRANT_TEST_PG` set) a missing moto fails the test.
    fn start() -> Option<Moto> {
        let Some(bin) = moto_server() else {
            if std::env::var_os("WARRANT_TEST_PG").is_some() {
                panic!(
                    "moto_server is not installed but WARRANT_TEST_PG is set: \
                     pip install 'moto[server]' (or set MOTO_SERVER)"
                );
            }
            eprintln!("skipping: moto_server not found (pip install 'moto[server]')");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + StdDuration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(StdDuration::from_millis(100));
        }
        Some(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The credentials warrant's own AWS chain reads: the environment, set
/// once for the whole test process (every test uses the same values).
fn credentials_in_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    });
}

/// The test's own SDK clients on moto, with their credentials given.
struct Aws {
    sso: ssoadmin::Client,
    ids: identitystore::Client,
    instance_arn: String,
    store: String,
}

impl Aws {
    async fn new(moto: &Moto) -> Aws {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&moto.url)
            .http_client(http)
            .credentials_provider(ssoadmin::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .load()
            .await;
        let sso = ssoadmin::Client::new(&shared);
        let instances = sso.list_instances().send().await.unwrap();
        let instance = &instances.instances()[0];
        Aws {
            ids: identitystore::Client::new(&shared),
            instance_arn: instance.instance_arn().unwrap().to_string(),
            store: instance.identity_store_id().unwrap().to_string(),
            sso,
        }
    }

    async fn permission_set(&self, name: &str) -> String {
        self.sso
            .create_permission_set()
            .instance_arn(&self.instance_arn)
            .name(name)
            // moto's default is the number 3600, which the SDK refuses to
            // read; AWS answers an ISO 8601 duration.
            .session_duration("PT1H")
            .send()
            .await
            .unwrap()
            .permission_set()
            .unwrap()
            .permission_set_arn()
            .unwrap()
            .to_string()
    }

    async fn user(&self, user_name: &str) -> String {
        self.ids
            .create_user()
            .identity_store_id(&self.store)
            .user_name(user_name)
            .display_name(user_name)
            .name(
                identitystore::types::Name::builder()
                    .given_name("Test")
                    .family_name(user_name)
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .user_id()
            .to_string()
    }

    async fn group(&self, name: &str) -> String {
        self.ids
            .create_group()
            .identity_store_id(&self.store)
            .display_name(name)
            .send()
            .await
            .unwrap()
            .group_id()
            .to_string()
    }

    /// An assignment made by hand.
    async fn assign(&self, set_arn: &str, principal: PrincipalType, id: &str) {
        self.sso
            .create_account_assignment()
            .instance_arn(&self.instance_arn)
            .target_id(ACCOUNT)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(set_arn)
            .principal_type(principal)
            .principal_id(id)
            .send()
            .await
            .unwrap();
    }

    /// An assignment deleted by hand.
    async fn unassign(&self, set_arn: &str, user_id: &str) {
        self.sso
            .delete_account_assignment()
            .instance_arn(&self.instance_arn)
            .target_id(ACCOUNT)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(set_arn)
            .principal_type(PrincipalType::User)
            .principal_id(user_id)
            .send()
            .await
            .unwrap();
    }

    /// `(principal type, principal id)` of every assignment of the set in
    /// the account, as `ListAccountAssignments` answers.
    async fn assignments(&self, set_arn: &str) -> Vec<(String, String)> {
        self.sso
            .list_account_assignments()
            .instance_arn(&self.instance_arn)
            .account_id(ACCOUNT)
            .permission_set_arn(set_arn)
            .send()
            .await
            .unwrap()
            .account_assignments()
            .iter()
            .map(|a| {
                (
                    a.principal_type().unwrap().as_str().to_string(),
                    a.principal_id().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// moto, the SDK clients on it, and warrant configured with a provider
/// `aws` on it (with `provider_more`), a policy naming `targets` exactly
/// (drift checks the targets a policy names), and erin as `user_name`.
async fn setup(
    backend: Backend,
    targets: &[&str],
    provider_more: &str,
    user_name: &str,
) -> Option<(Moto, Aws, TestApp)> {
    let moto = Moto::start()?;
    credentials_in_env();
    let aws = Aws::new(&moto).await;
    let resources: Vec<String> = targets.iter().map(|t| format!("\"aws/{t}\"")).collect();
    let extra = format!(
        "[providers.aws]\nkind = \"aws_identity_center\"\ninstance_arn = \"{}\"\n\
         identity_store_id = \"{}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n\
         timeout = \"5s\"\n{provider_more}\n\
         [[policies]]\nname = \"aws\"\nresources = [{}]\nsources = [\"github\"]\n\
         approvers = [\"alice\"]\nmax_duration = \"4h\"\n\
         [[identities]]\nprincipal = \"erin\"\ngithub = \"erin-gh\"\n\
         accounts = {{ aws = \"{user_name}\" }}\n",
        aws.instance_arn,
        aws.store,
        moto.url,
        resources.join(", ")
    );
    let app = TestApp::spawn(backend, &extra).await?;
    Some((moto, aws, app))
}

async fn the_grant(app: &TestApp, n: u64) -> Value {
    let grants = app.grants_of(&issue_key(n)).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    grants[0].clone()
}

fn user(id: &str) -> (String, String) {
    ("USER".to_string(), id.to_string())
}

async fn a_ticket_assigns_and_closing_it_unassigns(backend: Backend) {
    let target = format!("{ACCOUNT}/{SET}");
    let Some((_moto, aws, app)) = setup(backend, &[&target], "", "erin@acme.test").await else {
        return;
    };
    let set = aws.permission_set(SET).await;
    let erin = aws.user("erin@acme.test").await;
    let issue = erin_requests(&app, 1, &format!("aws/{target}")).await;
    app.run_jobs().await;
    let g = the_grant(&app, 1).await;
    assert_eq!(g["state"], "active", "{g}");
    assert_eq!(aws.assignments(&set).await, [user(&erin)]);

    erin_closes(&app, issue).await;
    let g = the_grant(&app, 1).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed")),
        "{g}"
    );
    assert_eq!(aws.assignments(&set).await, []);
    drop(app);
}

async fn an_assignment_already_there_or_already_gone_is_done(backend: Backend) {
    let target = format!("{ACCOUNT}/{SET}");
    let Some((_moto, aws, app)) = setup(backend, &[&target], "", "erin@acme.test").await else {
        return;
    };
    let set = aws.permission_set(SET).await;
    let erin = aws.user("erin@acme.test").await;
    aws.assign(&set, PrincipalType::User, &erin).await;
    let issue = erin_requests(&app, 2, &format!("aws/{target}")).await;
    app.run_jobs().await;
    assert_eq!(the_grant(&app, 2).await["state"], "active");
    // moto would have made a second one had warrant asked it to.
    assert_eq!(aws.assignments(&set).await, [user(&erin)]);

    aws.unassign(&set, &erin).await;
    erin_closes(&app, issue).await;
    let g = the_grant(&app, 2).await;
    assert_eq!(g["state"], "revoked", "{g}");
    assert_eq!(aws.assignments(&set).await, []);
    drop(app);
}

/// Runs the grant's attempts out (`jobs.apply_attempts` is 3).
async fn attempts_spent(app: &TestApp) {
    for _ in 0..4 {
        app.run_jobs().await;
        app.advance(Duration::seconds(11));
    }
}

async fn an_unknown_permission_set_or_user_fails_the_grant_by_name(backend: Backend) {
    let missing = format!("{ACCOUNT}/Missing");
    let known = format!("{ACCOUNT}/{SET}");
    let Some((_moto, aws, app)) = setup(backend, &[&missing, &known], "", "nobody@acme.test").await
    else {
        return;
    };
    let set = aws.permission_set(SET).await;
    aws.user("someone@acme.test").await;

    // erin's account names no user in the store.
    erin_requests(&app, 3, &format!("aws/{known}")).await;
    attempts_spent(&app).await;
    let g = the_grant(&app, 3).await;
    assert_eq!(g["state"], "failed", "{g}");
    let failure = g["failure"].as_str().unwrap();
    assert!(
        failure.contains("no user named `nobody@acme.test`"),
        "{failure}"
    );
    assert_eq!(aws.assignments(&set).await, []);

    // A user who exists, asking for a permission set that does not.
    aws.user("nobody@acme.test").await;
    erin_requests(&app, 4, &format!("aws/{missing}")).await;
    attempts_spent(&app).await;
    let g = the_grant(&app, 4).await;
    assert_eq!(g["state"], "failed", "{g}");
    let failure = g["failure"].as_str().unwrap();
    assert!(
        failure.contains("no permission set named `Missing`"),
        "{failure}"
    );
    let events = app.events_of(&issue_key(4)).await;
    let attempts = events
        .iter()
        .filter(|e| e["type"] == "grant.apply_failed")
        .count();
    assert!(attempts >= 2, "each attempt is audited: {events:?}");
    drop(app);
}

async fn drift_finds_and_removes_an_assignment_made_by_hand(backend: Backend) {
    let target = format!("{ACCOUNT}/{SET}");
    let Some((_moto, aws, app)) =
        setup(backend, &[&target], "drift = \"revoke\"", "erin@acme.test").await
    else {
        return;
    };
    let set = aws.permission_set(SET).await;
    let erin = aws.user("erin@acme.test").await;
    let frank = aws.user("frank@acme.test").await;
    let admins = aws.group("admins").await;
    erin_requests(&app, 5, &format!("aws/{target}")).await;
    app.run_jobs().await;
    assert_eq!(the_grant(&app, 5).await["state"], "active");
    let report = drift::check_now(&app.ctx, None).await.unwrap();
    assert!(
        report.items.is_empty(),
        "warranted access is no drift: {report:?}"
    );

    aws.assign(&set, PrincipalType::User, &frank).await;
    aws.assign(&set, PrincipalType::Group, &admins).await;
    let report = drift::check_now(&app.ctx, None).await.unwrap();
    let outcomes: Vec<(&str, Outcome)> = report
        .items
        .iter()
        .map(|i| (i.account.as_str(), i.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [("frank@acme.test", Outcome::Removed)],
        "{report:?}"
    );
    let mut left = aws.assignments(&set).await;
    left.sort();
    let mut want = vec![("GROUP".to_string(), admins), user(&erin)];
    want.sort();
    assert_eq!(
        left, want,
        "frank's is gone; erin's grant and the group's stay"
    );
    let report = drift::check_now(&app.ctx, None).await.unwrap();
    assert!(!report.found_drift(), "{report:?}");
    drop(app);
}

backend_tests!(
    a_ticket_assigns_and_closing_it_unassigns,
    an_assignment_already_there_or_already_gone_is_done,
    an_unknown_permission_set_or_user_fails_the_grant_by_name,
    drift_finds_and_removes_an_assignment_made_by_hand,
);
