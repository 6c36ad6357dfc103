//! `tocsin status`: GET /integrations/health for people: the overall status,
//! the counters, one line per provider and per integration.

use chrono::Utc;
use serde_json::Value;

use crate::remote::{age, print_json, text, ApiError, ApiOptions, Remote};

const HEALTH_PATH: &str = "/integrations/health";

pub async fn run(api: &ApiOptions) -> Result<(), ApiError> {
    let remote = Remote::new(api)?;
    let health = match remote.get_maybe_authorized(HEALTH_PATH).await {
        Ok(health) => health,
        Err(ApiError::NotFound { .. }) => {
            // Older servers read /integrations/health as a provider named "health".
            return Err(ApiError::NotFound {
                message: format!("this server has no GET {HEALTH_PATH} (a Tocsin without ingestion health)"),
            });
        }
        Err(ApiError::Unauthorized { .. }) if api.api_key.is_none() => return Err(ApiError::NoApiKey),
        Err(other) => return Err(other),
    };
    if api.json {
        print_json(&health);
        return Ok(());
    }
    println!("status: {}", text(&health["status"]));
    println!("all integrations: {}", counters(&health["global"]));

    let by_type = health["byType"].as_object();
    if let Some(by_type) = by_type.filter(|types| !types.is_empty()) {
        println!("\n{:<26} COUNTERS", "PROVIDER");
        for (provider, totals) in by_type {
            println!("{provider:<26} {}", counters(totals));
        }
    }

    let integrations = health["integrations"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !integrations.is_empty() {
        let now = Utc::now();
        println!(
            "\n{:<24} {:<16} {:<22} {:<9} {:<12} COUNTERS / LAST ERROR",
            "INTEGRATION", "SERVICE", "PROVIDER", "STATUS", "LAST EVENT"
        );
        for integration in integrations {
            let last_event = integration["lastEventAt"]
                .as_str()
                .map(|at| age(at, now))
                .unwrap_or_else(|| "never".to_owned());
            println!(
                "{:<24} {:<16} {:<22} {:<9} {:<12} {}",
                text(&integration["id"]),
                text(&integration["service"]),
                text(&integration["provider"]),
                text(&integration["status"]),
                last_event,
                counters(integration)
            );
            let last_error = &integration["lastError"];
            if !last_error.is_null() {
                println!("{:<24} last error: {}", "", last_error_text(last_error, now));
            }
        }
    }
    Ok(())
}

/// `received 12, ok 10, errors 2, 83.3% ok, 4.1 ms average`
fn counters(totals: &Value) -> String {
    let rate = totals["successRate"]
        .as_f64()
        .map(|rate| format!("{:.1}%", rate * 100.0))
        .unwrap_or_else(|| "-".to_owned());
    let latency = totals["averageLatencyMs"]
        .as_f64()
        .map(|ms| format!("{ms:.1} ms"))
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "received {}, ok {}, errors {}, {rate} ok, {latency} average",
        text(&totals["totalReceived"]),
        text(&totals["totalSuccess"]),
        text(&totals["totalErrors"]),
    )
}

fn last_error_text(error: &Value, now: chrono::DateTime<Utc>) -> String {
    match error {
        Value::Object(_) => {
            let when = error["at"].as_str().map(|at| age(at, now)).unwrap_or_default();
            format!("{} {} ({when})", text(&error["status"]), text(&error["message"]))
        }
        other => text(other),
    }
}
