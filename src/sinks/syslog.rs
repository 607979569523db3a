//! The `syslog` sink: RFC 5424 messages over TCP, one event per message,
//! each framed by octet counting (RFC 6587 §3.4.1: `LEN SP MSG`). A batch
//! goes over one connection; it is delivered once the receiver, having
//! read up to our end of the stream, closes its side too: TCP syslog has no
//! acknowledgement, and bytes the kernel accepted are not yet bytes the
//! receiver read.

use std::time::Duration as StdDuration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Batch, Sink, SinkError};
use crate::audit::Event;
use crate::config::SinkConfig;
use crate::context::Context;

/// Facility 13 (log audit), severity 6 (informational).
const PRIVAL: u8 = 13 * 8 + 6;
const APP_NAME: &str = "warrant";
/// The UTF-8 byte order mark that RFC 5424 puts before a UTF-8 MSG.
const BOM: &[u8] = b"\xEF\xBB\xBF";

pub struct SyslogSink {
    address: String,
    hostname: String,
    procid: String,
    timeout: StdDuration,
}

impl SyslogSink {
    pub fn new(cfg: &SinkConfig, ctx: &Context) -> Result<SyslogSink, SinkError> {
        let address = cfg
            .address
            .clone()
            .ok_or_else(|| SinkError("a syslog sink needs an address".into()))?;
        Ok(SyslogSink {
            address,
            hostname: header_field(&ctx.instance, 255),
            procid: std::process::id().to_string(),
            timeout: cfg.timeout.std(),
        })
    }

    fn failure(&self, what: &str) -> SinkError {
        let text = format!("syslog {}: {what}", self.address);
        SinkError(crate::redact::redact(&text, &[]))
    }

    async fn send(&self, batch: &Batch) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        for event in &batch.events {
            frames.extend(frame(&self.hostname, &self.procid, event)?);
        }
        let io = async {
            let mut stream = TcpStream::connect(&self.address).await?;
            stream.write_all(&frames).await?;
            stream.flush().await?;
            stream.shutdown().await?;
            // The receiver closes once it has read everything we sent;
            // whatever it says meanwhile is not ours to read.
            let mut scratch = [0u8; 512];
            while stream.read(&mut scratch).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(self.timeout, io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.failure(&e.to_string())),
            Err(_) => Err(self.failure("timed out")),
        }
    }
}

impl Sink for SyslogSink {
    fn deliver<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> futures_util::future::BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.send(batch))
    }
}

/// A header field as RFC 5424 allows it: printable US-ASCII (33–126),
/// anything else as `_`, at most `max` characters, `-` (nil) when empty.
fn header_field(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// One event as one octet-counted RFC 5424 message: `<PRI>1 TIMESTAMP
/// HOSTNAME warrant PROCID MSGID - BOM JSON`, where TIMESTAMP is the
/// event's time, MSGID its type and JSON the event as the API shows it.
pub fn frame(hostname: &str, procid: &str, event: &Event) -> Result<Vec<u8>, SinkError> {
    let json = serde_json::to_string(event)
        .map_err(|e| SinkError(format!("cannot write event {}: {e}", event.seq)))?;
    let mut msg = format!(
        "<{PRIVAL}>1 {} {hostname} {APP_NAME} {procid} {} - ",
        header_field(&event.at, 64),
        header_field(&event.kind, 32),
    )
    .into_bytes();
    msg.extend_from_slice(BOM);
    msg.extend_from_slice(json.as_bytes());
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend(msg);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_frame_is_counted_and_headed_per_rfc_5424() {
        let event = Event {
            seq: 7,
            at: "2026-11-25T10:00:00.123456Z".into(),
            kind: "grant.created".into(),
            ticket: Some("jira:OPS-1".into()),
            grant_id: None,
            actor: "é".into(),
            data: json!({"x": 1}),
            prev_hash: "a".into(),
            hash: "b".into(),
        };
        let f = frame("host-1", "42", &event).unwrap();
        let space = f.iter().position(|b| *b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&f[..space]).unwrap().parse().unwrap();
        let msg = &f[space + 1..];
        assert_eq!(len, msg.len());
        let head = "<110>1 2026-11-25T10:00:00.123456Z host-1 warrant 42 grant.created - ";
        assert!(msg.starts_with(head.as_bytes()));
        let body = &msg[head.len()..];
        assert!(body.starts_with(BOM));
        let parsed: serde_json::Value = serde_json::from_slice(&body[BOM.len()..]).unwrap();
        assert_eq!(parsed["seq"], 7);
        assert_eq!(parsed["actor"], "é");
    }

    #[test]
    fn header_fields_are_printable_and_bounded() {
        assert_eq!(header_field("a b\u{e9}", 10), "a_b_");
        assert_eq!(header_field("", 10), "-");
        assert_eq!(header_field(&"x".repeat(40), 32).len(), 32);
    }
}
