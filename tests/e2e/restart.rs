//! Stopping and starting `tocsin dev` on the same data folder keeps every
//! incident, the dedup state and the outbox.

use serde_json::{json, Value};

use crate::app::{count_transition, keys, TestApp};

fn event(event_action: &str, dedup_key: &str) -> Value {
    json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": event_action,
        "dedup_key": dedup_key,
        "payload": {"summary": format!("{dedup_key} down"), "source": "e2e", "severity": "critical"},
    })
}

/// The fields that must survive a restart unchanged.
fn essentials(incidents: &[Value]) -> Vec<Value> {
    let mut kept: Vec<Value> = incidents
        .iter()
        .map(|i| {
            json!({
                "id": i["id"], "service": i["service"], "dedup_key": i["dedup_key"], "status": i["status"],
                "severity": i["severity"], "summary": i["summary"], "occurrences": i["occurrences"],
                "created_at": i["created_at"],
            })
        })
        .collect();
    kept.sort_by_key(|i| i["id"].to_string());
    kept
}

#[tokio::test]
async fn incidents_survive_a_restart_and_can_be_resolved_after_it() {
    let mut app = TestApp::start().await;

    app.enqueue(&event("trigger", "api-down")).await.expect(202);
    app.enqueue(&event("trigger", "db-down")).await.expect(202);
    app.enqueue(&event("trigger", "db-down")).await.expect(202);
    let api = app
        .wait_for_incident("the api-down incident", |i| i["dedup_key"] == "api-down")
        .await;
    app.wait_for_incident("db-down with its repeat", |i| {
        i["dedup_key"] == "db-down" && i["occurrences"] == 2
    })
    .await;
    app.enqueue(&event("acknowledge", "db-down")).await.expect(202);
    let db = app
        .wait_for_incident("db-down acknowledged", |i| {
            i["dedup_key"] == "db-down" && i["status"] == "acknowledged"
        })
        .await;
    let api_id = api["id"].as_str().expect("id").to_owned();
    app.wait_for_outbox("the triggered notifications", |lines| {
        count_transition(lines, &api_id, "triggered") == 3
    })
    .await;
    let before = essentials(&app.incidents("").await);
    let outbox_before = app.outbox().len();

    app.restart().await;

    let after = essentials(&app.incidents("").await);
    assert_eq!(after, before, "GET /incidents after the restart");
    assert!(app.outbox().len() >= outbox_before, "the outbox is kept");

    // The dedup state survived: a repeat lands on the pre-restart incident…
    app.enqueue(&event("trigger", "api-down")).await.expect(202);
    app.wait_for_incident("the repeat on the pre-restart incident", |i| {
        i["id"] == api["id"] && i["occurrences"] == 2
    })
    .await;
    // …and a resolve closes it.
    app.enqueue(&event("resolve", "api-down")).await.expect(202);
    app.wait_for_incident("the resolve after the restart", |i| {
        i["id"] == api["id"] && i["status"] == "resolved"
    })
    .await;
    app.enqueue(&event("resolve", "db-down")).await.expect(202);
    app.wait_for_incident("the acknowledged one resolved too", |i| {
        i["id"] == db["id"] && i["status"] == "resolved"
    })
    .await;
    assert_eq!(app.incidents("").await.len(), 2, "no incident was opened twice");
    app.wait_for_outbox("resolved notifications after the restart", |lines| {
        count_transition(lines, &api_id, "resolved") == 3
    })
    .await;
    let lines = app.outbox();
    assert_eq!(
        count_transition(&lines, &api_id, "triggered"),
        3,
        "the restart must not notify the trigger again"
    );
}

#[tokio::test]
async fn events_accepted_just_before_a_stop_are_not_lost() {
    let mut app = TestApp::start().await;
    let keys: Vec<String> = (0..20).map(|n| format!("burst-{n}")).collect();
    for key in &keys {
        app.enqueue(&event("trigger", key)).await.expect(202);
    }
    // Stop at once: whatever the processor had not handled is still queued
    // in the data folder, and the next start handles it.
    app.restart().await;
    for key in &keys {
        app.wait_for_incident("every accepted event to become an incident", |i| {
            i["dedup_key"] == key.as_str()
        })
        .await;
    }
    assert_eq!(app.incidents("").await.len(), keys.len());
}

/// One service, one Events API v2 integration without a rate limit, email
/// only: the crash test counts every event and every notification.
const BURST_CONFIG: &str = r#"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}
services:
  - id: burst
    name: Burst
    integrations:
      - {id: burst-pd, type: events-v2, key: b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2, rate_limit_per_minute: 0}
    notify:
      email: [oncall@example.com]
      on: [triggered]
      min_severity: info
settings:
  email_from: tocsin@example.com
  public_url: http://127.0.0.1:3000
"#;

const CRASH_KEYS: usize = 40;
const CRASH_SENDS_PER_KEY: usize = 15;
const CRASH_SENDERS: usize = 8;

/// How each send of one dedup key ended.
#[derive(Default, Clone, Copy)]
struct Sends {
    /// 202: accepted, so it must be applied exactly once.
    accepted: usize,
    /// No answer (the process died with the request in hand): applied at
    /// most once.
    unanswered: usize,
}

#[tokio::test]
async fn a_stack_killed_mid_burst_applies_every_accepted_event_once_after_restart() {
    let mut app = TestApp::start_with(Some(BURST_CONFIG), keys::OPS).await;
    let sends = std::sync::Arc::new(std::sync::Mutex::new(vec![Sends::default(); CRASH_KEYS]));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = app.url("/v2/enqueue");

    // Senders go round the keys as a burst of repeats would, each until its
    // first failure: after the kill nothing answers.
    let mut senders = Vec::new();
    for sender in 0..CRASH_SENDERS {
        let (client, url, sends, answered) = (app.client.clone(), url.clone(), sends.clone(), answered.clone());
        senders.push(tokio::spawn(async move {
            for n in (sender..CRASH_KEYS * CRASH_SENDS_PER_KEY).step_by(CRASH_SENDERS) {
                let key = n % CRASH_KEYS;
                let answer = client
                    .post(&url)
                    .json(&event("trigger", &format!("crash-{key}")))
                    .send()
                    .await;
                let mut sends = sends.lock().unwrap();
                match answer {
                    Ok(answer) if answer.status().as_u16() == 202 => sends[key].accepted += 1,
                    Ok(answer) => panic!("send {n} was answered {}", answer.status()),
                    Err(_) => {
                        sends[key].unanswered += 1;
                        return;
                    }
                }
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    // Kill once a third of the burst is in: the processor is then busy
    // with the rest of what was accepted.
    let kill_at = CRASH_KEYS * CRASH_SENDS_PER_KEY / 3;
    while answered.load(std::sync::atomic::Ordering::SeqCst) < kill_at {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    app.kill_and_restart().await;
    for sender in senders {
        sender.await.expect("a sender panicked");
    }
    let sends = sends.lock().unwrap().clone();
    let accepted: usize = sends.iter().map(|s| s.accepted).sum();
    let unanswered: usize = sends.iter().map(|s| s.unanswered).sum();
    assert!(accepted >= kill_at, "{accepted} accepted before the kill");

    // After the restart, every accepted event is applied: each key's
    // occurrences reach its accepted sends.
    let app_ref = &app;
    // What the killed process had received comes back when its visibility
    // timeout (30 s, as SQS's default) runs out.
    let deadline = std::time::Duration::from_secs(90);
    let incidents =
        crate::app::wait_for_within(deadline, "every accepted event to be applied after the restart", || {
            let sends = &sends;
            async move {
                let incidents = app_ref.incidents("service=burst&limit=500").await;
                let caught_up = sends.iter().enumerate().all(|(key, sent)| {
                    let applied: u64 = incidents
                        .iter()
                        .filter(|i| i["dedup_key"] == format!("crash-{key}").as_str())
                        .filter_map(|i| i["occurrences"].as_u64())
                        .sum();
                    applied as usize >= sent.accepted
                });
                caught_up.then_some(incidents)
            }
        })
        .await;
    crate::app::settle().await;
    let incidents = {
        let again = app.incidents("service=burst&limit=500").await;
        assert_eq!(essentials(&again), essentials(&incidents), "nothing was applied late");
        again
    };

    // A notification job the killed process had received comes back, like
    // an event, when its visibility timeout runs out, which may be after
    // the last event was applied: wait for every incident's first one.
    let outbox = crate::app::wait_for_within(deadline, "every incident to be notified after the restart", || {
        let (app, incidents) = (app_ref, &incidents);
        async move {
            let outbox = app.outbox();
            incidents
                .iter()
                .all(|i| count_transition(&outbox, i["id"].as_str().unwrap_or_default(), "triggered") >= 1)
                .then_some(outbox)
        }
    })
    .await;

    // …and at most once: per key, between the accepted and the accepted plus
    // the unanswered, on one incident, notified.
    let (mut applied, mut notified_again) = (0, 0);
    for (key, sent) in sends.iter().enumerate() {
        let of_key: Vec<&Value> = incidents
            .iter()
            .filter(|i| i["dedup_key"] == format!("crash-{key}").as_str())
            .collect();
        if sent.accepted == 0 && sent.unanswered == 0 {
            assert!(of_key.is_empty(), "crash-{key} was never sent: {of_key:?}");
            continue;
        }
        if sent.accepted > 0 {
            assert_eq!(of_key.len(), 1, "crash-{key}: one incident, not {of_key:?}");
        }
        for incident in of_key {
            let occurrences = incident["occurrences"].as_u64().unwrap() as usize;
            assert!(
                (sent.accepted..=sent.accepted + sent.unanswered).contains(&occurrences),
                "crash-{key}: {occurrences} applied, {} accepted, {} unanswered",
                sent.accepted,
                sent.unanswered
            );
            applied += occurrences;
            // Delivery is at least once: a notification in hand at the kill
            // may go out again (an email cannot be taken back), never less.
            let notified = count_transition(&outbox, incident["id"].as_str().unwrap(), "triggered");
            assert!(notified >= 1, "crash-{key} was not notified");
            notified_again += notified - 1;
        }
    }
    let dead_letters = app.dead_letters();
    assert!(dead_letters.is_empty(), "{dead_letters:?}");
    println!(
        "kill mid-burst: {} sent, {accepted} accepted, {unanswered} unanswered at the kill; \
         {applied} applied, {} dead-lettered, lost 0; {} incidents, {notified_again} notified twice",
        accepted + unanswered,
        dead_letters.len(),
        incidents.len()
    );
}
