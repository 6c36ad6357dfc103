//! Ingest cost per request, without I/O: authenticate (key hash + lookup),
//! verify, normalize and hand the events to a queue that drops them.
//! Run: cargo bench -p tocsin-core --bench ingest

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, StatusCode};
use tocsin_core::config::Catalog;
use tocsin_core::event::Event;
use tocsin_core::ingest::{IngestRequest, IngestService};
use tocsin_core::memory::MemoryStore;
use tocsin_core::ports::{BackendError, EventQueue};
use tocsin_core::providers::ProviderKind;

const PROMETHEUS_KEY: &str = "11111111111111111111111111111111";
const EVENTS_V2_KEY: &str = "22222222222222222222222222222222";

/// Accepts and forgets: the bench measures ingest, not a queue.
struct Sink;

#[async_trait]
impl EventQueue for Sink {
    async fn enqueue(&self, events: &[Event]) -> Result<(), BackendError> {
        std::hint::black_box(events);
        Ok(())
    }
}

fn alertmanager_payload(alerts: usize) -> Vec<u8> {
    let alerts: Vec<_> = (0..alerts)
        .map(|i| {
            serde_json::json!({
                "status": "firing",
                "labels": {"alertname": "HighLatency", "severity": "critical", "instance": format!("web-{i}:9100"), "job": "node"},
                "annotations": {"summary": format!("p99 latency above 2s on web-{i}"), "runbook_url": "https://runbooks.example.com/latency"},
                "startsAt": "2026-11-23T09:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=latency",
                "fingerprint": format!("{:016x}", 0xfeed_0000_u64 + i as u64),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"HighLatency\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "tocsin",
        "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {"alertname": "HighLatency", "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }))
    .unwrap()
}

fn events_v2_payload() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "routing_key": EVENTS_V2_KEY,
        "event_action": "trigger",
        "dedup_key": "disk-full-db-1",
        "payload": {
            "summary": "Disk 95% full on db-1",
            "source": "db-1.prod",
            "severity": "critical",
            "timestamp": "2026-11-23T09:00:00Z",
            "component": "postgres",
            "group": "prod-datapipe",
            "class": "disk",
            "custom_details": {"free_bytes": 1_073_741_824u64, "mount": "/var/lib/postgresql"}
        },
        "links": [{"href": "https://grafana.example.com/d/disk", "text": "Dashboard"}],
        "client": "Monitoring",
    }))
    .unwrap()
}

fn service() -> IngestService {
    let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
    IngestService::new(Arc::new(catalog), Arc::new(Sink), Arc::new(MemoryStore::new()))
}

fn bench_ingest(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let ingest = service();

    let mut group = c.benchmark_group("ingest/prometheus");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {PROMETHEUS_KEY}")).unwrap(),
    );
    for alerts in [1usize, 10, 100] {
        let body = alertmanager_payload(alerts);
        group.throughput(Throughput::Elements(alerts as u64));
        group.bench_with_input(BenchmarkId::from_parameter(alerts), &body, |b, body| {
            b.iter(|| {
                let answer = runtime.block_on(ingest.handle(IngestRequest {
                    provider: ProviderKind::Prometheus,
                    headers: &headers,
                    query: None,
                    body,
                    received_at: Utc::now(),
                }));
                assert_eq!(answer.status(), StatusCode::ACCEPTED);
            })
        });
    }
    group.finish();

    let body = events_v2_payload();
    let headers = HeaderMap::new();
    c.bench_function("ingest/events-v2/1", |b| {
        b.iter(|| {
            let answer = runtime.block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::EventsV2,
                headers: &headers,
                query: None,
                body: &body,
                received_at: Utc::now(),
            }));
            assert_eq!(answer.status(), StatusCode::ACCEPTED);
        })
    });
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);
