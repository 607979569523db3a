//! `cargo bench --bench micro`: the CPU-bound steps of one webhook, each on
//! its own, with the same realistic 5–20 KB bodies the load bench sends:
//! signature checks, payload parsing per source, and the decision on a
//! snapshot merged from a parsed approval.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "load/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "load/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "load/payloads.rs"]
mod payloads;

use std::hint::black_box;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warrant::config::Config;
use warrant::crypto::signature::{self, whsec_key};
use warrant::sources::{self, Parsed};

use payloads::{Corpus, Src, Ticket, APPROVE_STEP, GH_SECRET, SN_SECRET};

fn config() -> Config {
    let text = config::text(
        8080,
        &config::ServerSetup {
            db_url: "sqlite://bench.db",
            receiver_url: "http://127.0.0.1:9/access",
            pool_size: 8,
            writers: 1,
            job_concurrency: 64,
        },
    );
    Config::from_toml(&text, &config::env).expect("the bench configuration")
}

/// A ticket of the source whose body is about 12 KB.
fn ticket(src: Src) -> Ticket {
    let epoch = Utc::now() - chrono::Duration::seconds(60);
    let mut n = 1;
    loop {
        let t = Ticket::new(n, epoch);
        if t.src == src && (10_000..14_000).contains(&t.pad) {
            return t;
        }
        n += 1;
    }
}

fn parse(cfg: &Config, src: Src, body: &[u8]) -> Parsed {
    let s = &cfg.sources;
    match src {
        Src::Github => sources::github::parse(s.github.as_ref().unwrap(), "issues", body).unwrap(),
        Src::Jira => sources::jira::parse(s.jira.as_ref().unwrap(), body).unwrap(),
        Src::Servicenow => {
            sources::servicenow::parse(s.servicenow.as_ref().unwrap(), body).unwrap()
        }
    }
}

fn signatures(c: &mut Criterion) {
    let corpus = Corpus::new();
    let t = ticket(Src::Github);
    let body = t.body(APPROVE_STEP, &corpus);
    let mut g = c.benchmark_group("signature");
    g.throughput(Throughput::Bytes(body.len() as u64));
    let hub = signature::sign_hub(GH_SECRET.as_bytes(), &body);
    g.bench_function(format!("verify_hub {} B", body.len()), |b| {
        b.iter(|| {
            signature::verify_hub(
                black_box(GH_SECRET.as_bytes()),
                signature::GITHUB_SIGNATURE,
                Some(black_box(hub.as_str())),
                black_box(&body),
            )
            .unwrap()
        })
    });
    let key = whsec_key(SN_SECRET).unwrap();
    let now = Utc::now();
    let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    let sig = signature::sign_standard(&key, id, now.timestamp(), &body);
    let ts = now.timestamp().to_string();
    g.bench_function(format!("verify_standard {} B", body.len()), |b| {
        b.iter(|| {
            signature::verify_standard(
                black_box(&key),
                Some(id),
                Some(ts.as_str()),
                Some(black_box(sig.as_str())),
                black_box(&body),
                now,
                chrono::Duration::seconds(300),
            )
            .unwrap()
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let cfg = config();
    let corpus = Corpus::new();
    let mut g = c.benchmark_group("parse");
    for src in [Src::Github, Src::Jira, Src::Servicenow] {
        let body = ticket(src).body(APPROVE_STEP, &corpus);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{} {} B", src.name(), body.len()), |b| {
            b.iter(|| parse(&cfg, src, black_box(&body)))
        });
    }
    g.finish();
}

fn deciding(c: &mut Criterion) {
    let cfg = config();
    let corpus = Corpus::new();
    let now = Utc::now();
    let mut g = c.benchmark_group("decide");
    for src in [Src::Github, Src::Jira, Src::Servicenow] {
        let body = ticket(src).body(APPROVE_STEP, &corpus);
        let Parsed::Ticket(ev) = parse(&cfg, src, &body) else {
            panic!("the approval is a ticket event");
        };
        let snap = warrant::ticket::merge(None, ev.clone());
        let decision = warrant::policy::decide(&snap, &cfg, now);
        assert!(
            matches!(decision, warrant::policy::Decision::Warrant(_)),
            "{src:?} approval should warrant: {decision:?}"
        );
        g.bench_function(format!("merge {}", src.name()), |b| {
            b.iter_batched(
                || ev.clone(),
                |ev| warrant::ticket::merge(None, ev),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("decide {}", src.name()), |b| {
            b.iter(|| warrant::policy::decide(black_box(&snap), &cfg, now))
        });
    }
    g.finish();
}

criterion_group!(micro, signatures, parsing, deciding);
criterion_main!(micro);
