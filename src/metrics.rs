//! Prometheus metrics: one registry per running app (no global recorder),
//! rendered at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the request metrics. Every value is from a fixed set: a
/// method from `method_label`, a route template or `unmatched` (never the
/// path itself), and a status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

/// The method as a label: the standard ones by name, anything else `other`.
pub fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Webhook deliveries: `source` is a parsed `Source` (a path naming no
/// source is answered 404 before it is counted), `outcome` one of the
/// intake's fixed words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub source: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub outcome: String,
}

/// A provider's name, from the configured set only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// One provider call: the provider's name and kind (both from the
/// configured set), the action, and how it ended (`ok`, `failed`,
/// `refused`, `timeout`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    pub provider: String,
    pub kind: String,
    pub action: String,
    pub outcome: String,
}

/// An audit sink's id as configured (credentials and query scrubbed),
/// from the configured set only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub jobs: Family<JobLabels, Counter>,
    /// Set from the database by `store::refresh_gauges_forever`, so every
    /// replica reports the same truth and a scrape runs no query.
    pub grants: Family<StateLabels, Gauge<i64, AtomicI64Wrap>>,
    pub overdue_revocations: Gauge<i64, AtomicI64Wrap>,
    pub jobs_due: Gauge<i64, AtomicI64Wrap>,
    pub revocation_lag: Histogram,
    /// Removals the provider, read back, still showed.
    pub revocations_unverified: Counter,
    /// Units per group-commit transaction.
    pub commit_batch: Histogram,
    /// Open drift findings by provider, set by `drift` from the database.
    pub drift_findings: Family<ProviderLabels, Gauge<i64, AtomicI64Wrap>>,
    /// Provider calls by provider, kind, action and outcome.
    pub provider_calls: Family<ProviderCallLabels, Counter>,
    /// How long provider calls took, by the same labels.
    pub provider_call_duration: Family<ProviderCallLabels, Histogram>,
    /// Events each audit sink is behind the chain's head, set by `sinks`.
    pub sink_lag: Family<SinkLabels, Gauge<i64, AtomicI64Wrap>>,
    /// Failed deliveries to each audit sink.
    pub sink_failures: Family<SinkLabels, Counter>,
}

pub type AtomicI64Wrap = std::sync::atomic::AtomicI64;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warrant");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let grants = Family::<StateLabels, Gauge<i64, AtomicI64Wrap>>::default();
        let overdue_revocations = Gauge::<i64, AtomicI64Wrap>::default();
        let jobs_due = Gauge::<i64, AtomicI64Wrap>::default();
        let revocation_lag = latency_histogram();
        let revocations_unverified = Counter::default();
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        let drift_findings = Family::<ProviderLabels, Gauge<i64, AtomicI64Wrap>>::default();
        let provider_calls = Family::<ProviderCallLabels, Counter>::default();
        let provider_call_duration = Family::<ProviderCallLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let sink_lag = Family::<SinkLabels, Gauge<i64, AtomicI64Wrap>>::default();
        let sink_failures = Family::<SinkLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            http_duration.clone(),
        );
        registry.register(
            "webhooks",
            "Webhook deliveries by source and outcome",
            webhooks.clone(),
        );
        registry.register("jobs", "Jobs run by kind and outcome", jobs.clone());
        registry.register("grants", "Grants by state", grants.clone());
        registry.register(
            "revocations_overdue",
            "Live or revoking grants past their expiry",
            overdue_revocations.clone(),
        );
        registry.register("jobs_due", "Jobs whose time has come", jobs_due.clone());
        registry.register(
            "revocation_lag_seconds",
            "From a grant's expiry to its revocation at the provider",
            revocation_lag.clone(),
        );
        registry.register(
            "revocations_unverified",
            "Removals that the provider, read back, still showed; each is retried",
            revocations_unverified.clone(),
        );
        registry.register(
            "commit_batch_units",
            "Writes sharing one group-commit transaction",
            commit_batch.clone(),
        );
        registry.register(
            "drift_findings",
            "Access held at a provider without a live grant, by provider",
            drift_findings.clone(),
        );
        registry.register(
            "audit_sink_lag_events",
            "Audit events an audit sink has not yet received, by sink",
            sink_lag.clone(),
        );
        registry.register(
            "audit_sink_failures",
            "Failed deliveries to an audit sink (each is retried), by sink",
            sink_failures.clone(),
        );
        registry.register(
            "provider_calls",
            "Provider calls by provider, kind, action and outcome",
            provider_calls.clone(),
        );
        registry.register(
            "provider_call_duration_seconds",
            "Provider call latency by provider, kind, action and outcome",
            provider_call_duration.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            webhooks,
            jobs,
            grants,
            overdue_revocations,
            jobs_due,
            revocation_lag,
            revocations_unverified,
            commit_batch,
            drift_findings,
            sink_lag,
            sink_failures,
            provider_calls,
            provider_call_duration,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
