//! The moto server the AWS adapter tests talk to: a real AWS API server on
//! loopback, started by tests/run (which exports TOCSIN_MOTO_URL).

#![allow(dead_code)] // each test file uses part of it

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::config::{Credentials, Region};

/// The SDK config every test uses: moto's endpoint, a fixed region and
/// throwaway credentials. Refuses to run without a moto URL, so a test can
/// never reach a real AWS account.
pub async fn sdk_config() -> SdkConfig {
    let url = std::env::var("TOCSIN_MOTO_URL").unwrap_or_else(|_| {
        panic!(
            "TOCSIN_MOTO_URL is not set: these tests need a moto server. tests/run starts one; \
             by hand: .venv/bin/moto_server -H 127.0.0.1 -p 5000 & and TOCSIN_MOTO_URL=http://127.0.0.1:5000"
        )
    });
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}

/// A resource name no other test uses (tests share one moto server).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
