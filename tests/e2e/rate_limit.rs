//! The ingest rate limit on the local stack: per integration, per minute,
//! counted in the embedded store. Past the limit a trigger gets a 429 with
//! the JSON body and headers a sender needs to back off, and nothing is
//! enqueued; a resolve still gets through.

use serde_json::{json, Value};

use crate::app::TestApp;

const CONFIG: &str = r#"
api_keys:
  - {name: ops, key: sk_rate_limit_test_key, scopes: [events:write, incidents:read, incidents:write]}
services:
  - id: checkout
    integrations:
      - {id: limited, type: events-v2, key: 9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a, rate_limit_per_minute: 3}
      - {id: neighbour, type: events-v2, key: 8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b}
"#;

fn event(key: &str, action: &str) -> Value {
    json!({
        "routing_key": key,
        "event_action": action,
        "dedup_key": format!("disk-full-{}", &key[..2]),
        "payload": {"summary": "Disk full on db1", "source": "db1", "severity": "critical"},
    })
}

#[tokio::test]
async fn past_the_limit_a_trigger_is_refused_with_429_and_a_resolve_is_not() {
    let app = TestApp::start_with(Some(CONFIG), "sk_rate_limit_test_key").await;
    let limited = "9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a";
    let header =
        |reply: &crate::app::Reply, name: &str| reply.headers.get(name).map(|v| v.to_str().unwrap().to_owned());

    let mut accepted = 0;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = app.enqueue(&event(limited, "trigger")).await;
        reply.expect(202);
        assert_eq!(header(&reply, "x-ratelimit-limit").as_deref(), Some("3"), "{reply}");
        remaining.push(header(&reply, "x-ratelimit-remaining").unwrap_or_default());
        accepted += 1;
    }
    // Counted down in one window (a minute turning in between starts over).
    assert_eq!(remaining.first().map(String::as_str), Some("2"), "{remaining:?}");

    // Send until refused: at most one more window can start in between.
    let mut refused = None;
    for _ in 0..4 {
        let reply = app.enqueue(&event(limited, "trigger")).await;
        if reply.status == 429 {
            refused = Some(reply);
            break;
        }
        reply.expect(202);
        accepted += 1;
    }
    let refused = refused.expect("a trigger past the limit was refused");
    let body = refused.expect_error(429);
    assert_eq!(body["status"], "rate limited");
    assert_eq!(body["integration"], "limited");
    assert_eq!(body["limit"], 3);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("'limited' may send 3 requests per minute"));
    let retry_after: u64 = header(&refused, "retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(body["retry_after"], retry_after);
    assert_eq!(header(&refused, "x-ratelimit-remaining").as_deref(), Some("0"));
    let reset: i64 = header(&refused, "x-ratelimit-reset")
        .expect("X-RateLimit-Reset")
        .parse()
        .unwrap();
    assert_eq!(reset % 60, 0, "windows end on the minute");

    // The neighbour integration has its own quota.
    app.enqueue(&event("8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b", "trigger"))
        .await
        .expect(202);

    // A resolve is never refused, and closes what the triggers opened.
    app.enqueue(&event(limited, "resolve")).await.expect(202);
    let incident = app
        .wait_for_incident("the resolved incident", |i| i["status"] == "resolved")
        .await;
    // Every trigger answered 202 counted once; the refused one not at all.
    assert_eq!(incident["dedup_key"], "disk-full-9a");
    assert_eq!(incident["occurrences"], accepted, "{incident}");
}
