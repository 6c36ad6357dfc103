//! The incidents API: GET /incidents (filters), GET /incidents/{id}, POST
//! /incidents/{id}/acknowledge and /resolve, with API keys and scopes.

use serde_json::json;

use crate::app::{count_transition, keys, wait_for, TestApp};

async fn trigger(app: &TestApp, routing_key: &str, dedup_key: &str) {
    app.enqueue(&json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": format!("{dedup_key} is failing"), "source": "e2e", "severity": "error"},
    }))
    .await
    .expect(202);
}

#[tokio::test]
async fn api_keys_and_scopes_are_enforced() {
    let app = TestApp::start().await;

    let reply = app.send(app.client.get(app.url("/incidents"))).await;
    reply.expect_error(401);

    let reply = app
        .send(
            app.client
                .get(app.url("/incidents"))
                .bearer_auth("sk_e2e_not_a_key_0123456789"),
        )
        .await;
    reply.expect_error(401);

    let reply = app
        .send(app.client.get(app.url("/incidents")).bearer_auth(keys::EVENTS_ONLY))
        .await;
    let body = reply.expect_error(403);
    assert!(
        body["message"].as_str().unwrap_or_default().contains("incidents:read"),
        "{body}"
    );

    let reply = app
        .send(app.client.get(app.url("/incidents")).bearer_auth(keys::READER))
        .await;
    assert_eq!(reply.expect(200).json()["incidents"], json!([]));

    // incidents:read does not allow acknowledging.
    trigger(&app, keys::CHECKOUT_EVENTS, "scoped").await;
    let incident = app
        .wait_for_incident("the incident", |i| i["dedup_key"] == "scoped")
        .await;
    let id = incident["id"].as_str().expect("id").to_owned();
    for action in ["acknowledge", "resolve"] {
        let path = format!("/incidents/{id}/{action}");
        app.api_post(&path, keys::READER).await.expect_error(403);
        let reply = app.send(app.post(&path)).await;
        reply.expect_error(401);
    }
    let unchanged = app.api_get(&format!("/incidents/{id}")).await;
    assert_eq!(unchanged.expect(200).json()["status"], "open");
}

#[tokio::test]
async fn incidents_are_listed_filtered_read_acknowledged_and_resolved() {
    let app = TestApp::start().await;
    trigger(&app, keys::CHECKOUT_EVENTS, "checkout-1").await;
    trigger(&app, keys::CHECKOUT_EVENTS, "checkout-2").await;
    trigger(&app, keys::PAYMENTS_EVENTS, "payments-1").await;
    let app_ref = &app;
    wait_for("the three incidents", || async move {
        (app_ref.incidents("").await.len() == 3).then_some(())
    })
    .await;

    assert_eq!(app.incidents("").await.len(), 3);
    assert_eq!(app.incidents("status=open&service=checkout").await.len(), 2);
    let payments = app.incidents("status=open&service=payments").await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["dedup_key"], "payments-1");
    assert!(app.incidents("status=resolved").await.is_empty());
    assert!(app.incidents("service=nobody").await.is_empty());
    app.api_get("/incidents?status=sleeping").await.expect_error(400);

    let target = app
        .incidents("service=checkout")
        .await
        .into_iter()
        .find(|i| i["dedup_key"] == "checkout-1")
        .expect("checkout-1 is listed");
    let id = target["id"].as_str().expect("id").to_owned();

    let one = app.api_get(&format!("/incidents/{id}")).await;
    let one = one.expect(200).json();
    assert_eq!(one["id"], id.as_str());
    assert_eq!(one["dedup_key"], "checkout-1");
    assert_eq!(one["summary"], "checkout-1 is failing");
    assert_eq!(one["severity"], "error");

    let acked = app.api_post(&format!("/incidents/{id}/acknowledge"), keys::OPS).await;
    let acked = acked.expect(200).json();
    assert_eq!(acked["id"], id.as_str());
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(app.incidents("status=acknowledged").await.len(), 1);

    let resolved = app.api_post(&format!("/incidents/{id}/resolve"), keys::OPS).await;
    assert_eq!(resolved.expect(200).json()["status"], "resolved");
    assert_eq!(
        app.api_get(&format!("/incidents/{id}")).await.expect(200).json()["status"],
        "resolved"
    );

    // Closed is closed.
    app.api_post(&format!("/incidents/{id}/resolve"), keys::OPS)
        .await
        .expect_error(409);
    app.api_post(&format!("/incidents/{id}/acknowledge"), keys::OPS)
        .await
        .expect_error(409);

    // Unknown ids, well formed or not.
    for unknown in ["inc_00000000000000000000", "nope"] {
        app.api_get(&format!("/incidents/{unknown}")).await.expect_error(404);
        app.api_post(&format!("/incidents/{unknown}/acknowledge"), keys::OPS)
            .await
            .expect_error(404);
        app.api_post(&format!("/incidents/{unknown}/resolve"), keys::OPS)
            .await
            .expect_error(404);
    }

    // Transitions made through the API notify like any other.
    app.wait_for_outbox("the API's acknowledged and resolved notifications", |lines| {
        count_transition(lines, &id, "acknowledged") == 3 && count_transition(lines, &id, "resolved") == 3
    })
    .await;

    // A resolve event for the key the API closed changes nothing more.
    app.enqueue(&json!({"routing_key": keys::CHECKOUT_EVENTS, "event_action": "resolve", "dedup_key": "checkout-1"}))
        .await
        .expect(202);
    crate::app::settle().await;
    let all = app.incidents("").await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let lines = app.outbox();
    assert_eq!(
        count_transition(&lines, &id, "resolved"),
        3,
        "resolved is notified once"
    );
}
