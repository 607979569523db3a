//! The back-link job: one note on a ticket (`backlinks` writes its text
//! and delivers it), retried, then dropped after `backlinks::ATTEMPTS`,
//! since it grants nothing.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::NewEvent;
use crate::config::Config;
use crate::context::Context;
use crate::db::{Conn, StoreError};
use crate::domain::TicketKey;
use crate::queue::{finish_in, retry_at, Finish, Job, Run};

/// A note to post on `ticket`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Backlink {
    pub ticket: String,
    pub text: String,
    /// Each note is its own job: nothing dedupes it.
    #[serde(skip)]
    id: uuid::Uuid,
}

/// Schedules a note on the ticket, in the caller's transaction, if its
/// source has back-links on.
pub fn enqueue(
    conn: &mut Conn<'_>,
    config: &Config,
    now: DateTime<Utc>,
    ticket: &str,
    text: &str,
) -> Result<(), StoreError> {
    let Ok(key) = ticket.parse::<TicketKey>() else {
        return Ok(());
    };
    if !crate::backlinks::enabled(config, key.source()) {
        return Ok(());
    }
    let job = Backlink {
        ticket: ticket.to_string(),
        text: text.to_string(),
        id: uuid::Uuid::now_v7(),
    };
    job.enqueue(conn, now, now)
}

impl Job for Backlink {
    const KIND: &'static str = "backlink";

    fn dedupe_key(&self) -> String {
        format!("{}:{}", Self::KIND, self.id)
    }

    /// A payload that does not read is still tried (and fails, and is
    /// audited when dropped), as any other undeliverable note.
    fn decode(payload: &str) -> Option<Self> {
        let payload: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let field = |name: &str| payload[name].as_str().unwrap_or_default().to_string();
        Some(Backlink {
            ticket: field("ticket"),
            text: field("text"),
            id: uuid::Uuid::nil(),
        })
    }

    async fn run(self, ctx: &Arc<Context>, run: Run<'_>) -> Result<Finish, StoreError> {
        let Backlink { ticket, text, .. } = self;
        let job = run.job;
        let now = ctx.clock.now();
        let (kind, data, finish) =
            match crate::backlinks::deliver(&ctx.http, &ctx.config, &ticket, &text).await {
                Ok(()) => ("backlink.sent", json!({ "text": text }), Finish::Done),
                Err(e) if job.attempts + 1 >= crate::backlinks::ATTEMPTS => (
                    "backlink.failed",
                    json!({ "text": text, "error": e, "gave_up": true }),
                    Finish::Done,
                ),
                Err(e) => {
                    tracing::warn!(%ticket, error = %e, "back-link not delivered; will retry");
                    return Ok(Finish::At {
                        run_at: retry_at(ctx, now, job.attempts),
                        attempts: job.attempts + 1,
                        error: Some(e),
                    });
                }
            };
        let job = job.clone();
        let key = ticket.clone();
        ctx.commit
            .submit(&key, now, move |conn, events| {
                events.push(NewEvent::new(kind, "warrant", data.clone()).ticket(&ticket));
                finish_in(conn, &job, &finish)
            })
            .await?;
        Ok(Finish::Settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlink_rows_are_as_they_were() {
        let job = Backlink {
            ticket: "github:o/r#1".into(),
            text: "hello \"there\"".into(),
            id: uuid::Uuid::now_v7(),
        };
        assert_eq!(Backlink::KIND, "backlink");
        assert_eq!(job.dedupe_key(), format!("backlink:{}", job.id));
        assert_eq!(
            job.payload().unwrap(),
            json!({ "ticket": "github:o/r#1", "text": "hello \"there\"" }).to_string()
        );
        let read = Backlink::decode(&job.payload().unwrap()).unwrap();
        assert_eq!((read.ticket, read.text), (job.ticket, job.text));
        let unreadable = Backlink::decode("not json").unwrap();
        assert_eq!(
            (unreadable.ticket, unreadable.text),
            (String::new(), String::new())
        );
    }
}
