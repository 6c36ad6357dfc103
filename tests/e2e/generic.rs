//! GoAlert's generic API at POST /api/v2/generic/incoming: token, summary,
//! details, dedup and action from the query, a form or a JSON body.

use serde_json::json;

use crate::app::{fixture, keys, TestApp};

const PATH: &str = "/api/v2/generic/incoming";
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("content-type", "application/json");
const ACCEPT_JSON: (&str, &str) = ("accept", "application/json");
/// The key written in events/generic/trigger.form (the sample config's).
const SAMPLE_GENERIC_KEY: &str = "44444444444444444444444444444444";

#[tokio::test]
async fn a_form_post_answers_204_and_repeats_land_on_the_same_incident() {
    let app = TestApp::start().await;
    let form = String::from_utf8(fixture("events/generic/trigger.form"))
        .expect("trigger.form is text")
        .replace(SAMPLE_GENERIC_KEY, keys::CHECKOUT_GENERIC);

    let reply = app.post_bytes(PATH, &[FORM], form.clone()).await;
    reply.expect(204);
    assert!(reply.text.is_empty(), "204 has no body: {reply}");
    let incident = app
        .wait_for_incident("the form trigger", |i| {
            i["summary"] == "Disk usage above 90% on batch-7"
        })
        .await;
    assert_eq!(incident["service"], "checkout");
    assert_eq!(incident["status"], "open");

    // Without a dedup field, the same summary and details are the same alert.
    app.post_bytes(PATH, &[FORM], form).await.expect(204);
    app.wait_for_incident("the repeat to be counted", |i| {
        i["id"] == incident["id"] && i["occurrences"] == 2
    })
    .await;
    assert_eq!(app.incidents("").await.len(), 1);
}

#[tokio::test]
async fn accept_json_answers_the_alert_id_and_whether_it_is_new() {
    let app = TestApp::start().await;
    let path = format!("{PATH}?token={}", keys::CHECKOUT_GENERIC);
    let trigger = fixture("events/generic/trigger.json");

    let reply = app.post_bytes(&path, &[JSON, ACCEPT_JSON], trigger.clone()).await;
    let first = reply.expect(200).json();
    assert_eq!(first["IsNew"], true, "{first}");
    assert_eq!(first["ServiceID"], "checkout", "{first}");
    let alert_id = first["AlertID"].clone();
    assert!(!alert_id.is_null(), "{first}");

    let incident = app
        .wait_for_incident("the JSON trigger", |i| i["dedup_key"] == "invoice-export-nightly")
        .await;
    assert_eq!(incident["summary"], "Nightly invoice export did not finish");
    assert_eq!(incident["id"], alert_id, "AlertID names the incident");

    let reply = app.post_bytes(&path, &[JSON, ACCEPT_JSON], trigger).await;
    let second = reply.expect(200).json();
    assert_eq!(second["IsNew"], false, "{second}");
    assert_eq!(second["AlertID"], alert_id, "{second}");
    app.wait_for_incident("the repeat to be counted", |i| {
        i["id"] == alert_id && i["occurrences"] == 2
    })
    .await;

    // action=close resolves it.
    let reply = app
        .post_bytes(&path, &[JSON, ACCEPT_JSON], fixture("events/generic/close.json"))
        .await;
    assert!((200..300).contains(&reply.status), "close: {reply}");
    app.wait_for_incident("action=close to resolve it", |i| {
        i["id"] == alert_id && i["status"] == "resolved"
    })
    .await;
}

#[tokio::test]
async fn token_and_fields_may_come_from_the_body_or_the_query_string() {
    let app = TestApp::start().await;

    // Everything in a JSON body, the token included.
    app.post_json(
        PATH,
        &[],
        &json!({"token": keys::CHECKOUT_GENERIC, "summary": "Cache hit rate low", "details": "42% over 10 minutes"}),
    )
    .await
    .expect(204);
    app.wait_for_incident("the JSON-body trigger", |i| i["summary"] == "Cache hit rate low")
        .await;

    // Everything in the query string, no body.
    let base = format!(
        "{PATH}?token={}&summary=Nightly+backup+late&dedup=backup",
        keys::CHECKOUT_GENERIC
    );
    app.post_bytes(&base, &[], Vec::new()).await.expect(204);
    let backup = app
        .wait_for_incident("the query-string trigger", |i| i["dedup_key"] == "backup")
        .await;
    assert_eq!(backup["summary"], "Nightly backup late");

    app.post_bytes(&format!("{base}&action=close"), &[], Vec::new())
        .await
        .expect(204);
    app.wait_for_incident("action=close in the query string", |i| {
        i["id"] == backup["id"] && i["status"] == "resolved"
    })
    .await;
}
