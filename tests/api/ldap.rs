//! The `ldap_group` provider against a real OpenLDAP `slapd`, started by
//! each test on a free loopback port in a temporary directory and seeded
//! with people, a service account and groups: grants through the webhook
//! flow add the account's DN (or, for `memberUid`, the account), closing
//! the ticket removes it, a group that does not exist fails the grant by
//! its DN, drift sees and removes members added by hand, a hostile account
//! or target stays a value, and StartTLS and `ldaps://` work with a private
//! CA. warrant binds as a service account whose ACLs allow only what the
//! README says it needs.
//!
//! Needs `/usr/sbin/slapd` and `slapadd` (Debian's `slapd` package; the
//! TLS test also `openssl`). Missing, the tests skip with a note, or fail
//! when `WARRANT_TEST_PG` is set (CI).

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use ldap3::{Ldap, LdapConnAsync, Mod, Scope, SearchEntry};
use serde_json::Value;

use crate::helpers::{erin_closes, erin_requests, issue_key, t0, Backend, TestApp, ADMIN_TOKEN};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};
use warrant::drift::{self, Outcome, Report};
use warrant::providers::ldap_group::UserDn;

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const ROOT_DN: &str = "cn=admin,dc=acme,dc=test";
const ROOT_PW: &str = "root-secret";
const SERVICE_DN: &str = "cn=warrant,ou=services,dc=acme,dc=test";
const SERVICE_PW: &str = "warrant-service-pw";
const PEOPLE: &str = "uid={account},ou=people,dc=acme,dc=test";
/// Each groupOfNames keeps this member: the schema needs one.
const PLACEHOLDER: &str = "cn=warrant,ou=services,dc=acme,dc=test";

fn group(cn: &str) -> String {
    format!("cn={cn},ou=groups,dc=acme,dc=test")
}

/// Whether the binaries `names` exist; if not, skip (or fail under CI).
fn have(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            if n.starts_with('/') {
                !Path::new(n).exists()
            } else {
                Command::new(n)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_err()
            }
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("WARRANT_TEST_PG").is_some() {
        panic!(
            "{} missing but WARRANT_TEST_PG is set: install with \
             `DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils openssl`",
            missing.join(", ")
        );
    }
    eprintln!(
        "skipping: {} missing (apt-get install slapd)",
        missing.join(", ")
    );
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SEED: &str = "\
dn: dc=acme,dc=test
objectClass: dcObject
objectClass: organization
o: acme
dc: acme

dn: ou=people,dc=acme,dc=test
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=acme,dc=test
objectClass: organizationalUnit
ou: groups

dn: ou=services,dc=acme,dc=test
objectClass: organizationalUnit
ou: services

dn: cn=warrant,ou=services,dc=acme,dc=test
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: warrant
userPassword: warrant-service-pw

dn: uid=erin,ou=people,dc=acme,dc=test
objectClass: inetOrgPerson
uid: erin
cn: Erin
sn: E

dn: uid=frank,ou=people,dc=acme,dc=test
objectClass: inetOrgPerson
uid: frank
cn: Frank
sn: F

dn: cn=ops,ou=groups,dc=acme,dc=test
objectClass: groupOfNames
cn: ops
member: cn=warrant,ou=services,dc=acme,dc=test

dn: cn=admins,ou=groups,dc=acme,dc=test
objectClass: groupOfNames
cn: admins
member: cn=warrant,ou=services,dc=acme,dc=test

dn: cn=posix,ou=groups,dc=acme,dc=test
objectClass: posixGroup
cn: posix
gidNumber: 5000
memberUid: frank
";

/// A running `slapd`, killed when dropped.
struct Slapd {
    child: Child,
    port: u16,
    /// The `ldaps://` port, when started with TLS.
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
}

/// The TLS files of a test CA and a server certificate for 127.0.0.1 and
/// localhost.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Slapd {
    /// A seeded server on plain LDAP, or `None` (skip) without slapd.
    fn start() -> Option<Slapd> {
        have(&[SLAPD, SLAPADD]).then(|| Slapd::launch(false))
    }

    /// Also serving StartTLS and `ldaps://` with a certificate from a
    /// fresh CA.
    fn start_tls() -> Option<Slapd> {
        have(&[SLAPD, SLAPADD, "openssl"]).then(|| Slapd::launch(true))
    }

    fn launch(tls: bool) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("db")).unwrap();
        std::fs::write(root.join("password"), SERVICE_PW).unwrap();
        let tls_lines = if tls {
            let pki = make_pki(root);
            format!(
                "TLSCACertificateFile {}\nTLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display()
            )
        } else {
            String::new()
        };
        // The service account may bind, read the groups and write only
        // their member attributes: the rights the README asks for.
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {root}/slapd.pid\n\
             argsfile {root}/slapd.args\n\
             {tls_lines}\
             database mdb\n\
             maxsize 16777216\n\
             suffix \"dc=acme,dc=test\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {ROOT_PW}\n\
             directory {root}/db\n\
             access to dn.one=\"ou=groups,dc=acme,dc=test\" attrs=member,uniqueMember,memberUid\n\
             \x20 by dn.exact=\"{SERVICE_DN}\" write\n\
             \x20 by * none\n\
             access to dn.one=\"ou=groups,dc=acme,dc=test\" attrs=entry,objectClass,cn\n\
             \x20 by dn.exact=\"{SERVICE_DN}\" read\n\
             \x20 by * none\n\
             access to attrs=userPassword\n\
             \x20 by anonymous auth\n\
             \x20 by * none\n\
             access to * by * none\n",
            root = root.display()
        );
        std::fs::write(root.join("slapd.conf"), conf).unwrap();
        std::fs::write(root.join("seed.ldif"), SEED).unwrap();
        let out = Command::new(SLAPADD)
            .arg("-f")
            .arg(root.join("slapd.conf"))
            .arg("-l")
            .arg(root.join("seed.ldif"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A port taken between choosing and binding: try again.
        for _ in 0..5 {
            let port = free_port();
            let tls_port = tls.then(free_port);
            let mut urls = format!("ldap://127.0.0.1:{port}/");
            if let Some(p) = tls_port {
                urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
            }
            let log = std::fs::File::create(root.join("slapd.log")).unwrap();
            let mut child = Command::new(SLAPD)
                .arg("-f")
                .arg(root.join("slapd.conf"))
                .arg("-h")
                .arg(&urls)
                .arg("-d")
                .arg("0")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + StdDuration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
                if up(port) && tls_port.is_none_or(up) {
                    return Slapd {
                        child,
                        port,
                        tls_port,
                        dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "slapd did not start: {}",
                    std::fs::read_to_string(root.join("slapd.log")).unwrap_or_default()
                );
                std::thread::sleep(StdDuration::from_millis(20));
            }
        }
        panic!(
            "slapd did not start: {}",
            std::fs::read_to_string(root.join("slapd.log")).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A connection bound as the root DN, which no ACL limits.
    async fn admin(&self) -> Ldap {
        let (conn, mut ldap) = LdapConnAsync::new(&self.url()).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(ROOT_DN, ROOT_PW)
            .await
            .unwrap()
            .success()
            .unwrap();
        ldap
    }

    /// The values of `attr` of group `cn`.
    async fn values(&self, cn: &str, attr: &str) -> Vec<String> {
        let mut ldap = self.admin().await;
        let (entries, _) = ldap
            .search(&group(cn), Scope::Base, "(objectClass=*)", vec![attr])
            .await
            .unwrap()
            .success()
            .unwrap();
        let entry = SearchEntry::construct(entries.into_iter().next().unwrap());
        entry
            .attrs
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// The DNs in `member` of group `cn`, normalised by the directory's
    /// own DN matching: whether `dn` is one of them.
    async fn is_member(&self, cn: &str, dn: &str) -> bool {
        let filter = format!(
            "(member={})",
            warrant::providers::ldap_group::escape_filter_value(dn)
        );
        let mut ldap = self.admin().await;
        let (entries, _) = ldap
            .search(&group(cn), Scope::Base, &filter, vec!["1.1"])
            .await
            .unwrap()
            .success()
            .unwrap();
        !entries.is_empty()
    }

    /// Adds `value` to `attr` of group `cn` by hand.
    async fn add(&self, cn: &str, attr: &str, value: &str) {
        let mut ldap = self.admin().await;
        ldap.modify(&group(cn), vec![Mod::Add(attr, HashSet::from([value]))])
            .await
            .unwrap()
            .success()
            .unwrap();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate it signed, for 127.0.0.1 and localhost.
fn make_pki(dir: &Path) -> Pki {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        "/CN=warrant test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// Provider `dir` on `slapd` (plus `provider_more`), a policy for
/// `resources`, erin's identity with her account on `dir`, and `more`.
fn ldap_config(
    slapd: &Slapd,
    provider_more: &str,
    resources: &[&str],
    erin_account: &str,
    more: &str,
) -> String {
    format!(
        "[providers.dir]\nkind = \"ldap_group\"\nurl = \"{url}\"\nstarttls = false\n\
         bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{pw}\"\n\
         group_base = \"ou=groups,dc=acme,dc=test\"\ntimeout = \"5s\"\n{provider_more}\n\
         [[policies]]\nname = \"directory\"\nresources = {resources:?}\nsources = [\"github\"]\n\
         approvers = [\"alice\"]\nmax_duration = \"4h\"\n\
         [[identities]]\nprincipal = \"erin\"\ngithub = \"erin-gh\"\n\
         accounts = {{ dir = {erin_account:?} }}\n{more}\n",
        url = slapd.url(),
        pw = slapd.password_file().display(),
    )
}

fn member_config() -> String {
    format!("user_dn = \"{PEOPLE}\"")
}

fn erin_dn() -> String {
    PEOPLE.replace("{account}", "erin")
}

async fn check(app: &TestApp) -> Report {
    drift::check_now(&app.ctx, None).await.unwrap()
}

fn outcomes(report: &Report, account: &str) -> Vec<Outcome> {
    report
        .items
        .iter()
        .filter(|i| i.account == account)
        .map(|i| i.outcome)
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

async fn a_grant_adds_the_dn_and_closing_the_ticket_removes_it(backend: Backend) {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let app = app!(
        backend,
        &ldap_config(&slapd, &member_config(), &["dir/ops"], "erin", "")
    );
    let issue = erin_requests(&app, 1, "dir/ops").await;
    app.run_jobs().await;
    let g = app.grants_of(&issue_key(1)).await[0].clone();
    assert_eq!(g["state"], "active", "{g}");
    assert!(slapd.is_member("ops", &erin_dn()).await);
    assert!(slapd.is_member("ops", PLACEHOLDER).await);
    assert!(!slapd.is_member("admins", &erin_dn()).await);
    assert!(types(&app.events_of(&issue_key(1)).await).contains(&"grant.applied"));

    erin_closes(&app, issue).await;
    let g = app.grants_of(&issue_key(1)).await[0].clone();
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed")),
        "{g}"
    );
    assert!(!slapd.is_member("ops", &erin_dn()).await);
    assert_eq!(slapd.values("ops", "member").await, [PLACEHOLDER]);
}

async fn a_group_that_does_not_exist_fails_the_grant_by_its_dn(backend: Backend) {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let app = app!(
        backend,
        &ldap_config(&slapd, &member_config(), &["dir/nosuch"], "erin", "")
    );
    erin_requests(&app, 2, "dir/nosuch").await;
    let missing = "LDAP group `cn=nosuch,ou=groups,dc=acme,dc=test` does not exist";
    // Retried like any failure (the group may yet be made), then failed.
    for _ in 0..5 {
        app.run_jobs().await;
        app.advance(Duration::seconds(30));
    }
    let g = app.grants_of(&issue_key(2)).await[0].clone();
    assert_eq!(g["state"], "failed", "{g}");
    assert!(g.to_string().contains(missing), "the API shows why: {g}");
    let events = app.events_of(&issue_key(2)).await;
    let attempts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "grant.apply_failed")
        .collect();
    assert_eq!(attempts.len(), 2, "{events:?}");
    assert!(attempts.iter().all(|e| e["data"]["error"]
        .as_str()
        .is_some_and(|m| m.contains(missing))));
    let failed = events.iter().find(|e| e["type"] == "grant.failed").unwrap();
    assert!(failed["data"]["error"].as_str().unwrap().contains(missing));
    let (status, trace) = app
        .get_json(
            &format!("/v1/tickets/{}", issue_key(2).replace('#', "%23")),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(status, 200);
    assert!(trace.to_string().contains(missing));
}

async fn drift_reports_members_added_by_hand(backend: Backend) {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let exempt = format!("[drift]\nexempt_accounts = [\"dn:{PLACEHOLDER}\"]\n");
    let app = app!(
        backend,
        &ldap_config(&slapd, &member_config(), &["dir/ops"], "erin", &exempt)
    );
    erin_requests(&app, 3, "dir/ops").await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&issue_key(3)).await[0]["state"], "active");
    // The granted member and the exempt placeholder are no drift.
    let report = check(&app).await;
    assert_eq!(report.providers, ["dir"]);
    assert!(
        report.items.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );

    slapd
        .add("ops", "member", "uid=frank,ou=people,dc=acme,dc=test")
        .await;
    slapd.add("ops", "member", "cn=stray,dc=acme,dc=test").await;
    let report = check(&app).await;
    assert_eq!(outcomes(&report, "frank"), [Outcome::Found], "{report:?}");
    assert_eq!(
        outcomes(&report, "dn:cn=stray,dc=acme,dc=test"),
        [Outcome::Found],
        "a member outside user_dn is seen by its DN: {report:?}"
    );
    assert_eq!(report.items.len(), 2, "{report:?}");
    assert!(
        slapd
            .is_member("ops", "uid=frank,ou=people,dc=acme,dc=test")
            .await
    );

    // Removed by hand: resolved.
    let mut ldap = slapd.admin().await;
    ldap.modify(
        &group("ops"),
        vec![Mod::Delete(
            "member",
            HashSet::from(["uid=frank,ou=people,dc=acme,dc=test"]),
        )],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    app.advance(Duration::minutes(5));
    let report = check(&app).await;
    assert_eq!(
        outcomes(&report, "frank"),
        [Outcome::Resolved],
        "{report:?}"
    );
}

async fn drift_in_revoke_mode_removes_members_added_by_hand(backend: Backend) {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let exempt = format!("[drift]\nexempt_accounts = [\"dn:{PLACEHOLDER}\"]\n");
    let provider = format!("{}\ndrift = \"revoke\"", member_config());
    let app = app!(
        backend,
        &ldap_config(&slapd, &provider, &["dir/ops"], "erin", &exempt)
    );
    slapd
        .add("ops", "member", "uid=frank,ou=people,dc=acme,dc=test")
        .await;
    slapd.add("ops", "member", "cn=stray,dc=acme,dc=test").await;
    let report = check(&app).await;
    assert_eq!(outcomes(&report, "frank"), [Outcome::Removed], "{report:?}");
    assert_eq!(
        outcomes(&report, "dn:cn=stray,dc=acme,dc=test"),
        [Outcome::Removed],
        "{report:?}"
    );
    assert_eq!(
        slapd.values("ops", "member").await,
        [PLACEHOLDER],
        "only the exempt placeholder is left"
    );
}

async fn a_hostile_account_or_target_stays_a_value(backend: Backend) {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let hostile = "x,cn=admins";
    let app = app!(
        backend,
        &ldap_config(
            &slapd,
            &member_config(),
            &["dir/ops", "dir/*"],
            hostile,
            &format!("[drift]\nexempt_accounts = [\"dn:{PLACEHOLDER}\"]\n")
        )
    );
    let issue = erin_requests(&app, 4, "dir/ops").await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&issue_key(4)).await[0]["state"], "active");
    // One member more in ops, whose DN names the whole account as its uid;
    // admins is untouched.
    let members = slapd.values("ops", "member").await;
    assert_eq!(members.len(), 2, "{members:?}");
    let added = members.iter().find(|m| m.as_str() != PLACEHOLDER).unwrap();
    let template = UserDn::parse(PEOPLE).unwrap();
    assert_eq!(template.account(added).as_deref(), Some(hostile), "{added}");
    assert_eq!(slapd.values("admins", "member").await, [PLACEHOLDER]);
    // Read back as the same account: no drift.
    let report = check(&app).await;
    assert!(report.items.is_empty(), "{report:?}");

    // A target that would change the group's DN is no group name.
    erin_requests(&app, 5, "dir/ops,cn=admins").await;
    app.run_jobs().await;
    assert!(app.grants_of(&issue_key(5)).await.is_empty());
    let (_, trace) = app
        .get_json(
            &format!("/v1/tickets/{}", issue_key(5).replace('#', "%23")),
            ADMIN_TOKEN,
        )
        .await;
    assert!(
        trace["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["reason"] == "invalid_request"),
        "{trace}"
    );
    assert_eq!(slapd.values("admins", "member").await, [PLACEHOLDER]);

    erin_closes(&app, issue).await;
    let g = app.grants_of(&issue_key(4)).await[0].clone();
    assert_eq!(g["state"], "revoked", "{g}");
    assert_eq!(slapd.values("ops", "member").await, [PLACEHOLDER]);
}

async fn member_uid_groups_hold_the_account_itself(backend: Backend) {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    // zed's account is a filter wildcard: a search for it must not match
    // frank, or warrant would think the removal failed (or the access was
    // already held).
    let more = "[[identities]]\nprincipal = \"zed\"\ngithub = \"zed-gh\"\n\
                accounts = { dir = \"*\" }\n\
                [[policies]]\nname = \"zed\"\nresources = [\"dir/posix\"]\nsources = [\"github\"]\n\
                subjects = [\"zed\"]\napprovers = [\"alice\"]\nmax_duration = \"4h\"\n";
    let app = app!(
        backend,
        &ldap_config(
            &slapd,
            "member_attribute = \"memberUid\"",
            &["dir/posix"],
            "erin",
            more
        )
    );
    let issue = erin_requests(&app, 6, "dir/posix").await;
    let mut zed = Issue::new(7, t0());
    zed.author = "zed-gh";
    zed.body = payloads::form("dir/posix", "1h", None);
    zed.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            "zed-7",
            &payloads::github("labeled", &zed, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    for n in [6, 7] {
        let g = app.grants_of(&issue_key(n)).await[0].clone();
        assert_eq!(g["state"], "active", "{g}");
    }
    let mut values = slapd.values("posix", "memberUid").await;
    values.sort();
    assert_eq!(values, ["*", "erin", "frank"]);
    let events = app.events_of(&issue_key(7)).await;
    assert!(
        !types(&events).contains(&"grant.preexisting"),
        "frank's membership is not zed's: {events:?}"
    );

    erin_closes(&app, issue).await;
    zed.state = "closed";
    zed.updated_at = app.clock_now();
    let r = app
        .post_github(
            "issues",
            "zed-7-closed",
            &payloads::github("closed", &zed, "zed-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    for n in [6, 7] {
        let g = app.grants_of(&issue_key(n)).await[0].clone();
        assert_eq!(g["state"], "revoked", "{g}");
    }
    assert_eq!(slapd.values("posix", "memberUid").await, ["frank"]);
}

async fn starttls_and_ldaps_trust_a_private_ca(backend: Backend) {
    let Some(slapd) = Slapd::start_tls() else {
        return;
    };
    let Some(tls_port) = slapd.tls_port else {
        unreachable!()
    };
    let common = format!(
        "bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\n\
         group_base = \"ou=groups,dc=acme,dc=test\"\nuser_dn = \"{PEOPLE}\"\ntimeout = \"5s\"\n",
        slapd.password_file().display()
    );
    let ca = slapd.ca_file();
    let more = format!(
        "[providers.starttls]\nkind = \"ldap_group\"\nurl = \"ldap://localhost:{port}\"\n\
         ca_file = \"{ca}\"\n{common}\n\
         [providers.ldaps]\nkind = \"ldap_group\"\nurl = \"ldaps://127.0.0.1:{tls_port}\"\n\
         ca_file = \"{ca}\"\n{common}\n\
         [providers.untrusted]\nkind = \"ldap_group\"\nurl = \"ldaps://127.0.0.1:{tls_port}\"\n\
         {common}\n\
         [[policies]]\nname = \"tls\"\nresources = [\"starttls/ops\", \"ldaps/admins\", \"untrusted/ops\"]\n\
         sources = [\"github\"]\napprovers = [\"alice\"]\nmax_duration = \"4h\"\n",
        port = slapd.port,
        ca = ca.display(),
    );
    let app = app!(backend, &more);
    let mut issue = Issue::new(8, t0());
    let requests = [
        (8, "starttls/ops"),
        (9, "ldaps/admins"),
        (10, "untrusted/ops"),
    ];
    for (n, resource) in requests {
        issue.number = n;
        issue.body = payloads::form(resource, "1h", None);
        issue.labels = vec!["access-approved"];
        let r = app
            .post_github(
                "issues",
                &format!("dave-{n}"),
                &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    app.run_jobs().await;
    let dave = PEOPLE.replace("{account}", "dave");
    for n in [8, 9] {
        assert_eq!(app.grants_of(&issue_key(n)).await[0]["state"], "active");
    }
    assert!(slapd.is_member("ops", &dave).await);
    assert!(slapd.is_member("admins", &dave).await);
    // Without ca_file the system's store does not know the test CA.
    let g = app.grants_of(&issue_key(10)).await[0].clone();
    assert_eq!(g["state"], "granting", "{g}");
    let events = app.events_of(&issue_key(10)).await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "grant.apply_failed")
        .unwrap();
    let why = failed["data"]["error"].as_str().unwrap();
    assert!(
        why.contains("cannot reach the LDAP server") && why.contains("certificate"),
        "{why}"
    );
}

/// A wrong password fails the call with a message naming the bind DN,
/// never the password.
async fn a_failed_bind_names_the_dn_not_the_password(backend: Backend) {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let wrong = slapd.dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password-at-all").unwrap();
    let config = ldap_config(&slapd, &member_config(), &["dir/ops"], "erin", "").replace(
        &format!(
            "bind_password_file = \"{}\"",
            slapd.password_file().display()
        ),
        &format!("bind_password_file = \"{}\"", wrong.display()),
    );
    let app = app!(backend, &config);
    erin_requests(&app, 11, "dir/ops").await;
    app.run_jobs().await;
    let events = app.events_of(&issue_key(11)).await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "grant.apply_failed")
        .unwrap();
    let why = failed["data"]["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("LDAP bind as `{SERVICE_DN}` failed"))
            && why.contains("invalidCredentials"),
        "{why}"
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("not-the-password"), "{all}");
}

backend_tests!(
    a_grant_adds_the_dn_and_closing_the_ticket_removes_it,
    a_group_that_does_not_exist_fails_the_grant_by_its_dn,
    drift_reports_members_added_by_hand,
    drift_in_revoke_mode_removes_members_added_by_hand,
    a_hostile_account_or_target_stays_a_value,
    member_uid_groups_hold_the_account_itself,
    starttls_and_ldaps_trust_a_private_ca,
    a_failed_bind_names_the_dn_not_the_password,
);
