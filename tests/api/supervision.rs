//! Nothing from outside stops commits or revocations: a unit of work that
//! panics fails alone while the commit lanes keep committing, and after
//! hostile deliveries of every source the next delivery is accepted and a
//! grant that expires is revoked on time.

use chrono::Duration;
use serde_json::json;
use warrant::audit::NewEvent;
use warrant::db::StoreError;

use crate::helpers::{t0, Backend, ADMIN_TOKEN};
use crate::payloads::{self, Change, Issue, JiraIssue};
use crate::{app, backend_tests};

const KEY: &str = "github:acme/access-requests#42";

async fn a_panicking_unit_fails_alone(backend: Backend) {
    let app = app!(backend);
    let commit = app.ctx.commit.clone();
    let bad = commit.submit(
        "jira:OPS-1",
        t0(),
        |_conn, _events| -> Result<(), StoreError> { panic!("a bug while handling one unit") },
    );
    let good = commit.submit("jira:OPS-1", t0(), |_conn, events| {
        events.push(NewEvent::new("test.unit", "test", json!({ "n": 1 })));
        Ok(1)
    });
    let (bad, good) = tokio::join!(bad, good);
    assert!(matches!(bad, Err(StoreError::Panicked(_))), "{bad:?}");
    assert_eq!(good.unwrap(), 1);

    // The lane still commits: a panic alone in its batch, then real work.
    let again = commit
        .submit(
            "jira:OPS-1",
            t0(),
            |_conn, _events| -> Result<(), StoreError> { panic!("again") },
        )
        .await;
    assert!(matches!(again, Err(StoreError::Panicked(_))));
    let mut issue = Issue::new(42, t0());
    issue.body = payloads::form("hooks/orders-db", "1h", None);
    let r = app
        .post_github(
            "issues",
            "after-panic",
            &payloads::github("opened", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    let ready = app
        .client
        .get(format!("{}/readyz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let (_, v) = app.get_json("/v1/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(v["ok"], true, "{v}");
    let (_, events) = app.get_json("/v1/audit?limit=100", ADMIN_TOKEN).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "test.unit").count(),
        1,
        "{kinds:?}"
    );
}

async fn readyz_is_unavailable_while_a_supervised_part_is_down(backend: Backend) {
    let app = app!(backend);
    let readyz = || async {
        let r = app
            .client
            .get(format!("{}/readyz", app.addr))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    // The commit lanes registered themselves and run.
    assert!(app.ctx.health.down().is_empty());
    // A loop that died shows as down until its supervisor has it running.
    let part = app.ctx.health.register("job-runner");
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["down"], json!(["job-runner"]));
    part.set_up(true);
    assert_eq!(readyz().await.0, 200);
    part.died();
    assert_eq!(readyz().await.0, 503);
    assert_eq!(part.restarts(), 1);
}

/// Values at and past every edge a date, a time or a duration has.
const HOSTILE_TIMES: [&str; 8] = [
    "+262142-12-31T23:59:59Z",
    "-262143-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "10000-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "99999999999999999999",
];

async fn hostile_deliveries_stop_nothing(backend: Backend) {
    let app = app!(backend);
    // A grant that must expire on time whatever comes in meanwhile.
    let mut issue = Issue::new(42, t0());
    issue.body = payloads::form("hooks/orders-db", "1h", None);
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            "approve-42",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    assert_eq!(app.receiver.calls().len(), 1);
    let granted = app.grants_of(KEY).await;
    assert_eq!(granted[0]["state"], "active");

    for (i, t) in HOSTILE_TIMES.iter().enumerate() {
        // GitHub: the form's start, with the longest duration.
        let mut gh = Issue::new(100 + i as u64, t0());
        gh.body = payloads::form("hooks/orders-db", "366d", Some(t));
        gh.labels = vec!["access-approved"];
        let r = app
            .post_github(
                "issues",
                &format!("gh-hostile-{i}"),
                &payloads::github("labeled", &gh, "alice-gh", Some("access-approved")),
            )
            .await;
        assert!(r.status().as_u16() < 500, "github {t}: {}", r.status());

        // Jira: start and end fields, and the event's own timestamp.
        let key = format!("OPS-{}", 100 + i);
        let mut jira = JiraIssue::new(&key);
        jira.duration = Some("366d");
        let mut body = payloads::jira(
            "jira:issue_updated",
            &jira,
            "5b10a2844c20165700ede21g",
            t0(),
            Some(("In Review", "Approved")),
        );
        body["issue"]["fields"]["customfield_10101"] = json!(t);
        body["issue"]["fields"]["customfield_10102"] = json!(t);
        let r = app.post_jira(&format!("jira-hostile-{i}"), &body).await;
        assert!(r.status().as_u16() < 500, "jira {t}: {}", r.status());
        body["issue"]["fields"]["customfield_10102"] = serde_json::Value::Null;
        body["timestamp"] = json!(i64::MAX - i as i64);
        body["issue"]["fields"]["updated"] = json!(t);
        let r = app.post_jira(&format!("jira-hostile-ts-{i}"), &body).await;
        assert!(r.status().as_u16() < 500, "jira timestamp: {}", r.status());
        // Jira's own date-time shape, with no end: the window is computed.
        let mut body = payloads::jira(
            "jira:issue_updated",
            &jira,
            "5b10a2844c20165700ede21g",
            t0(),
            Some(("In Review", "Approved")),
        );
        let jira_time = t.replace('Z', ".000+0000");
        body["issue"]["fields"]["customfield_10101"] = json!(jira_time);
        let r = app.post_jira(&format!("jira-hostile-own-{i}"), &body).await;
        assert!(
            r.status().as_u16() < 500,
            "jira {jira_time}: {}",
            r.status()
        );

        // ServiceNow: the window, written its own way and as RFC 3339.
        let number = format!("CHG{:07}", 100 + i);
        let change = Change {
            number: &number,
            state: json!("-2"),
            approval: "approved",
            approved_by: json!("alice.smith"),
            assigned_to: "dave.jones",
            resource: "hooks/orders-db",
            start: t0(),
            end: t0() + Duration::hours(1),
            updated: t0(),
        };
        let mut body = payloads::servicenow(&change);
        for (j, field) in ["start_date", "end_date", "sys_updated_on"]
            .iter()
            .enumerate()
        {
            body[*field] = json!(t.replace('T', " ").replace('Z', ""));
            let r = app
                .post_servicenow(&format!("sn-hostile-{i}-{j}"), &body)
                .await;
            assert!(
                r.status().as_u16() < 500,
                "servicenow {field} {t}: {}",
                r.status()
            );
            body[*field] = json!(t);
            let r = app
                .post_servicenow(&format!("sn-hostile-rfc-{i}-{j}"), &body)
                .await;
            assert!(
                r.status().as_u16() < 500,
                "servicenow {field} {t}: {}",
                r.status()
            );
        }
        // A start with no end: the window is computed from the start.
        let mut body = payloads::servicenow(&change);
        body["start_date"] = json!(t.replace('T', " ").replace('Z', ""));
        body["end_date"] = json!("");
        let r = app
            .post_servicenow(&format!("sn-hostile-open-{i}"), &body)
            .await;
        assert!(
            r.status().as_u16() < 500,
            "servicenow open {t}: {}",
            r.status()
        );
    }

    // The next genuine delivery is accepted...
    let mut next = Issue::new(7, t0() + Duration::seconds(5));
    next.body = payloads::form("hooks/next", "30m", None);
    let r = app
        .post_github(
            "issues",
            "genuine-next",
            &payloads::github("opened", &next, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "accepted");

    // ...and the grant is revoked when its hour is up.
    app.advance(Duration::hours(1));
    app.run_jobs().await;
    // Hostile deliveries that happen to be valid requests may grant and
    // revoke their own tickets; the one to watch is the first grant.
    let calls: Vec<_> = app
        .receiver
        .calls()
        .into_iter()
        .filter(|c| c.body["ticket"] == KEY)
        .collect();
    let actions: Vec<&str> = calls.iter().map(|c| c.action()).collect();
    assert_eq!(actions, ["grant", "revoke"]);
    let grants = app.grants_of(KEY).await;
    assert_eq!(grants[0]["state"], "revoked");
    assert_eq!(grants[0]["revoke_reason"], "expired");
    let (_, v) = app.get_json("/v1/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(v["ok"], true, "{v}");
}

backend_tests!(
    a_panicking_unit_fails_alone,
    readyz_is_unavailable_while_a_supervised_part_is_down,
    hostile_deliveries_stop_nothing
);
