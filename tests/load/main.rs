//! tocsin-load: sends webhooks to a running server from a second process and
//! reports throughput and latency.
//!
//!   tocsin-load --url http://127.0.0.1:3000 --rate 500 --seconds 20
//!   tocsin-load --url http://127.0.0.1:3000 --rate 0 --concurrency 32 --seconds 10
//!   tocsin-load --mode alertmanager --fingerprints 1000 --repeats 10 --rate 500 \
//!     --url http://127.0.0.1:3000 --path /integrations/prometheus \
//!     --header 'Authorization: Bearer 11111111111111111111111111111111'
//!
//! With --rate N the load is open-loop: request i is due at i/N seconds and
//! its latency is measured from when it was due, so a stalled server cannot
//! hide its queueing (no coordinated omission). With --rate 0 it is closed
//! loop: --concurrency workers send as fast as answers come back.
//!
//! Modes:
//! - `events-v2` (default): PagerDuty Events API v2 triggers on one of --keys
//!   dedup keys (the sample config's events-v2 integration), for --seconds.
//! - `alertmanager`: Prometheus Alertmanager v4 webhooks, one alert each. Each
//!   of --fingerprints distinct alerts fires --repeats times, then resolves;
//!   the stream goes round the alerts (every alert's first firing, then every
//!   second one, ..., then every resolve), so one alert's webhooks are
//!   --fingerprints requests apart and arrive in order. The whole stream is
//!   sent; --seconds does not apply. --run names the alerts (labels and
//!   fingerprints), so runs against one server do not meet each other's.
//!
//! --path and --header (repeatable) point the same stream at another server,
//! e.g. alerta's `/api/webhooks/prometheus` with `X-API-Key: KEY`. --json
//! prints the report as one JSON object (for scripts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    EventsV2,
    Alertmanager,
}

struct Options {
    mode: Mode,
    url: String,
    path: Option<String>,
    headers: Vec<(String, String)>,
    routing_key: String,
    rate: u64,
    seconds: u64,
    concurrency: usize,
    keys: u64,
    fingerprints: u64,
    repeats: u64,
    run: String,
    json: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: tocsin-load [--mode events-v2|alertmanager] [--url URL] [--path PATH] [--header 'Name: value']...\n\
         \x20                  [--rate PER_SECOND|0] [--concurrency N] [--json]\n\
         \x20 events-v2:     [--routing-key KEY] [--seconds N] [--keys N]\n\
         \x20 alertmanager:  [--fingerprints N] [--repeats N] [--run NAME]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut options = Options {
        mode: Mode::EventsV2,
        url: "http://127.0.0.1:3000".into(),
        path: None,
        headers: Vec::new(),
        routing_key: "22222222222222222222222222222222".into(),
        rate: 500,
        seconds: 10,
        concurrency: 64,
        keys: 1000,
        fingerprints: 1000,
        repeats: 10,
        run: "load".into(),
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--json" {
            options.json = true;
            continue;
        }
        let value = args.next().unwrap_or_else(|| usage());
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--mode" => {
                options.mode = match value.as_str() {
                    "events-v2" => Mode::EventsV2,
                    "alertmanager" => Mode::Alertmanager,
                    _ => usage(),
                }
            }
            "--url" => options.url = value.trim_end_matches('/').to_owned(),
            "--path" => options.path = Some(value),
            "--header" => {
                let Some((name, header_value)) = value.split_once(':') else {
                    usage()
                };
                options
                    .headers
                    .push((name.trim().to_owned(), header_value.trim().to_owned()));
            }
            "--routing-key" => options.routing_key = value,
            "--rate" => options.rate = number(),
            "--seconds" => options.seconds = number(),
            "--concurrency" => options.concurrency = number().max(1) as usize,
            "--keys" => options.keys = number().max(1),
            "--fingerprints" => options.fingerprints = number().max(1),
            "--repeats" => options.repeats = number(),
            "--run" => options.run = value,
            _ => usage(),
        }
    }
    options
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ok: u64,
    /// Answers by status code, and failures without an answer by kind.
    outcomes: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, due: Instant, outcome: Result<u16, &'static str>) {
        self.latencies_us.push(due.elapsed().as_micros() as u64);
        let name = match outcome {
            Ok(status) => {
                if (200..300).contains(&status) {
                    self.ok += 1;
                }
                status.to_string()
            }
            Err(error) => error.to_owned(),
        };
        *self.outcomes.entry(name).or_default() += 1;
    }
}

/// What a run sends: request `n` of the stream, and where the stream ends.
struct Stream {
    mode: Mode,
    routing_key: String,
    keys: u64,
    fingerprints: u64,
    repeats: u64,
    run: String,
    /// When every alert of this run started firing, as Alertmanager's
    /// startsAt.
    started_at: String,
}

impl Stream {
    /// The number of requests, if the stream is finite.
    fn len(&self) -> Option<u64> {
        match self.mode {
            Mode::EventsV2 => None,
            Mode::Alertmanager => Some(self.fingerprints * (self.repeats + 1)),
        }
    }

    fn body(&self, n: u64) -> String {
        match self.mode {
            Mode::EventsV2 => {
                let key = n % self.keys;
                serde_json::json!({
                    "routing_key": self.routing_key,
                    "event_action": "trigger",
                    "dedup_key": format!("load-{key}"),
                    "payload": {"summary": format!("load test alert {key}"), "source": "tocsin-load", "severity": "warning"}
                })
                .to_string()
            }
            Mode::Alertmanager => self.alertmanager(n % self.fingerprints, n / self.fingerprints >= self.repeats),
        }
    }

    /// One alert in an Alertmanager v4 notification, as webhook_configs
    /// sends it with `max_alerts` unset and one alert per group.
    fn alertmanager(&self, alert: u64, resolved: bool) -> String {
        let instance = format!("{}-{alert:05}:9100", self.run);
        let labels = serde_json::json!({
            "alertname": "TocsinLoad",
            "instance": instance,
            "job": "tocsin-load",
            "severity": "warning",
        });
        let (status, ends_at) = if resolved {
            ("resolved", rfc3339(SystemTime::now()))
        } else {
            ("firing", "0001-01-01T00:00:00Z".to_owned())
        };
        serde_json::json!({
            "receiver": "tocsin",
            "status": status,
            "alerts": [{
                "status": status,
                "labels": labels,
                "annotations": {
                    "summary": format!("Load test alert on {instance}"),
                    "description": format!("Alert {alert} of load run {}.", self.run),
                },
                "startsAt": self.started_at,
                "endsAt": ends_at,
                "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=up+%3D%3D+0",
                "fingerprint": fingerprint(&self.run, alert),
            }],
            "groupLabels": {"alertname": "TocsinLoad", "instance": instance},
            "commonLabels": labels,
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.example.com:9093",
            "version": "4",
            "groupKey": format!("{{}}:{{alertname=\"TocsinLoad\", instance=\"{instance}\"}}"),
            "truncatedAlerts": 0,
        })
        .to_string()
    }
}

/// 16 hex digits, like Alertmanager's label-set fingerprints: FNV-1a of the
/// run name and the alert's number.
fn fingerprint(run: &str, alert: u64) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in run.bytes().chain([0]).chain(alert.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// UTC, millisecond precision, as Alertmanager writes times.
fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

struct Target {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
}

async fn send(target: &Target, body: String) -> Result<u16, &'static str> {
    match target
        .client
        .post(&target.url)
        .headers(target.headers.clone())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the answer so the connection goes back to the pool.
            let _ = response.bytes().await;
            Ok(status)
        }
        Err(error) if error.is_timeout() => Err("timeout"),
        Err(error) if error.is_connect() => Err("connect error"),
        Err(_) => Err("transport error"),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

fn header_map(headers: &[(String, String)]) -> reqwest::header::HeaderMap {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) else {
            eprintln!("not a valid header: {name}: {value}");
            usage()
        };
        map.append(name, value);
    }
    map
}

#[tokio::main]
async fn main() {
    let options = options();
    let path = options.path.clone().unwrap_or_else(|| {
        match options.mode {
            Mode::EventsV2 => "/v2/enqueue",
            Mode::Alertmanager => "/integrations/prometheus",
        }
        .to_owned()
    });
    let target = Arc::new(Target {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(options.concurrency)
            .build()
            .expect("an HTTP client"),
        url: format!("{}{path}", options.url),
        headers: header_map(&options.headers),
    });
    let stream = Arc::new(Stream {
        mode: options.mode,
        routing_key: options.routing_key.clone(),
        keys: options.keys,
        fingerprints: options.fingerprints,
        repeats: options.repeats,
        run: options.run.clone(),
        started_at: rfc3339(SystemTime::now()),
    });
    if options.mode == Mode::Alertmanager && options.rate == 0 && options.concurrency as u64 > options.fingerprints {
        eprintln!("warning: more workers than fingerprints: one alert's webhooks may overtake each other");
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let started = Instant::now();

    if options.rate > 0 {
        let interval = Duration::from_secs_f64(1.0 / options.rate as f64);
        let total = stream.len().unwrap_or(options.rate * options.seconds);
        let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency * 16));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..total {
            let due = started + interval.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
            let permit = limit.clone().acquire_owned().await.expect("semaphore open");
            let (target, tally) = (target.clone(), tally.clone());
            let body = stream.body(n);
            tasks.spawn(async move {
                let outcome = send(&target, body).await;
                tally.lock().await.record(due, outcome);
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
    } else {
        let deadline = started + Duration::from_secs(options.seconds);
        let total = stream.len();
        let counter = Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..options.concurrency {
            let (target, tally, counter, stream) = (target.clone(), tally.clone(), counter.clone(), stream.clone());
            workers.spawn(async move {
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let more = match total {
                        Some(total) => n < total,
                        None => Instant::now() < deadline,
                    };
                    if !more {
                        break;
                    }
                    let due = Instant::now();
                    let outcome = send(&target, stream.body(n)).await;
                    tally.lock().await.record(due, outcome);
                }
            });
        }
        while workers.join_next().await.is_some() {}
    }

    let elapsed = started.elapsed().as_secs_f64();
    let mut tally = tally.lock().await;
    let sent = tally.latencies_us.len() as u64;
    tally.latencies_us.sort_unstable();
    let l = &tally.latencies_us;
    let (p50, p90, p99, p999, max) = (
        percentile(l, 50.0),
        percentile(l, 90.0),
        percentile(l, 99.0),
        percentile(l, 99.9),
        percentile(l, 100.0),
    );
    let mode = match options.mode {
        Mode::EventsV2 => "events-v2",
        Mode::Alertmanager => "alertmanager",
    };
    let load = if options.rate > 0 {
        format!("open loop at {}/s", options.rate)
    } else {
        format!("closed loop, {} workers", options.concurrency)
    };
    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": mode,
                "load": load,
                "url": target.url,
                "rate": options.rate,
                "concurrency": options.concurrency,
                "sent": sent,
                "ok": tally.ok,
                "answers": tally.outcomes,
                "started_unix": started_unix,
                "elapsed_s": elapsed,
                "throughput": sent as f64 / elapsed,
                "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p99.9": p999, "max": max},
            })
        );
    } else {
        println!("mode: {mode}, {load}, to {}", target.url);
        println!("sent: {sent} in {elapsed:.2} s = {:.0} req/s", sent as f64 / elapsed);
        let answers: Vec<String> = tally.outcomes.iter().map(|(k, n)| format!("{k} × {n}")).collect();
        println!("answered: {}", answers.join(", "));
        println!("latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}");
    }
    if tally.ok != sent {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(1_709_208_000_123);
        assert_eq!(rfc3339(leap_day), "2024-02-29T12:00:00.123Z");
        let new_year_eve = UNIX_EPOCH + Duration::from_secs(1_704_067_199);
        assert_eq!(rfc3339(new_year_eve), "2023-12-31T23:59:59.000Z");
    }

    #[test]
    fn each_alert_fires_then_resolves_with_its_own_fingerprint() {
        let stream = Stream {
            mode: Mode::Alertmanager,
            routing_key: String::new(),
            keys: 1,
            fingerprints: 3,
            repeats: 2,
            run: "r".into(),
            started_at: "2024-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(stream.len(), Some(9));
        let alert = |n: u64| {
            let body: serde_json::Value = serde_json::from_str(&stream.body(n)).unwrap();
            let alert = body["alerts"][0].clone();
            (
                alert["status"].as_str().unwrap().to_owned(),
                alert["fingerprint"].as_str().unwrap().to_owned(),
            )
        };
        let statuses: Vec<String> = (0..9).map(|n| alert(n).0).collect();
        assert_eq!(statuses[..6], ["firing"; 6]);
        assert_eq!(statuses[6..], ["resolved"; 3]);
        assert_eq!(alert(0).1, alert(3).1);
        assert_eq!(alert(0).1, alert(6).1);
        assert_ne!(alert(0).1, alert(1).1);
        assert_eq!(alert(0).1.len(), 16);
    }
}
