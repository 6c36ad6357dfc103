//! tocsin-load: sends webhooks to a running stack from a second process and
//! reports throughput and latency.
//!
//!   tocsin-load --url http://127.0.0.1:3000 --rate 500 --seconds 20
//!   tocsin-load --url http://127.0.0.1:3000 --rate 0 --concurrency 32 --seconds 10
//!
//! With --rate N the load is open-loop: request i is due at i/N seconds and
//! its latency is measured from when it was due, so a stalled server cannot
//! hide its queueing (no coordinated omission). With --rate 0 it is closed
//! loop: --concurrency workers send as fast as answers come back.
//!
//! Each request is a PagerDuty Events API v2 trigger on one of --keys dedup
//! keys (the sample config's events-v2 integration by default), so the
//! pipeline behind ingest does real work: opens incidents, counts repeats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

struct Options {
    url: String,
    routing_key: String,
    rate: u64,
    seconds: u64,
    concurrency: usize,
    keys: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: tocsin-load [--url URL] [--routing-key KEY] [--rate PER_SECOND|0] [--seconds N] [--concurrency N] [--keys N]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut options = Options {
        url: "http://127.0.0.1:3000".into(),
        routing_key: "22222222222222222222222222222222".into(),
        rate: 500,
        seconds: 10,
        concurrency: 64,
        keys: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--url" => options.url = value.trim_end_matches('/').to_owned(),
            "--routing-key" => options.routing_key = value,
            "--rate" => options.rate = number(),
            "--seconds" => options.seconds = number(),
            "--concurrency" => options.concurrency = number() as usize,
            "--keys" => options.keys = number().max(1),
            _ => usage(),
        }
    }
    options
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ok: u64,
    refused: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, due: Instant, outcome: Result<u16, String>) {
        self.latencies_us.push(due.elapsed().as_micros() as u64);
        match outcome {
            Ok(status) if (200..300).contains(&status) => self.ok += 1,
            Ok(status) => *self.refused.entry(status.to_string()).or_default() += 1,
            Err(error) => *self.refused.entry(error).or_default() += 1,
        }
    }
}

fn body(routing_key: &str, n: u64, keys: u64) -> String {
    let key = n % keys;
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": format!("load-{key}"),
        "payload": {"summary": format!("load test alert {key}"), "source": "tocsin-load", "severity": "warning"}
    })
    .to_string()
}

async fn send(client: &reqwest::Client, url: &str, body: String) -> Result<u16, String> {
    match client
        .post(url)
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
        Err(error) if error.is_timeout() => Err("timeout".into()),
        Err(error) if error.is_connect() => Err("connect error".into()),
        Err(_) => Err("transport error".into()),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let options = options();
    let url = format!("{}/v2/enqueue", options.url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(options.concurrency.max(1))
        .build()
        .expect("an HTTP client");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);

    if options.rate > 0 {
        let interval = Duration::from_secs_f64(1.0 / options.rate as f64);
        let total = options.rate * options.seconds;
        let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1) * 16));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..total {
            let due = started + interval.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
            let permit = limit.clone().acquire_owned().await.expect("semaphore open");
            let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
            let body = body(&options.routing_key, n, options.keys);
            tasks.spawn(async move {
                let outcome = send(&client, &url, body).await;
                tally.lock().await.record(due, outcome);
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
    } else {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..options.concurrency.max(1) {
            let (client, url, tally, counter) = (client.clone(), url.clone(), tally.clone(), counter.clone());
            let (routing_key, keys) = (options.routing_key.clone(), options.keys);
            workers.spawn(async move {
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let due = Instant::now();
                    let outcome = send(&client, &url, body(&routing_key, n, keys)).await;
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
    println!(
        "mode: {}",
        if options.rate > 0 {
            format!("open loop at {}/s", options.rate)
        } else {
            format!("closed loop, {} workers", options.concurrency)
        }
    );
    println!("sent: {sent} in {elapsed:.2} s = {:.0} req/s", sent as f64 / elapsed);
    println!("2xx: {}  refused or failed: {:?}", tally.ok, tally.refused);
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        percentile(l, 50.0),
        percentile(l, 90.0),
        percentile(l, 99.0),
        percentile(l, 99.9),
        percentile(l, 100.0)
    );
    if tally.ok != sent {
        std::process::exit(1);
    }
}
