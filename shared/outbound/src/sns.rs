//! SNS over HTTPS, for tocsin-core's SNS port: a signing certificate fetched
//! from its SigningCertURL, a subscription confirmed by a GET of its
//! SubscribeURL. Both URLs have already passed the SNS host rule
//! (`tocsin_core::sns`), so this only ever talks to `sns.<region>.amazonaws.com`,
//! and it follows no redirect that could lead elsewhere.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;

use tocsin_core::ports::BackendError;
use tocsin_core::sns::{Confirmation, SigningCertUrl, SnsCertificates, SnsSubscriptions, SubscribeUrl};

/// SNS gives an HTTPS endpoint 15 seconds to answer a delivery; a fetch and
/// a confirmation must both fit inside it.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A signing certificate is about 2 KB; anything far larger is not one.
const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;

/// An HTTP answer that is neither success nor "no such certificate".
#[derive(Debug, thiserror::Error)]
#[error("SNS answered HTTP {0}")]
pub struct UnexpectedStatus(pub u16);

/// A certificate body too large to be one.
#[derive(Debug, thiserror::Error)]
#[error("the signing certificate is over {MAX_CERTIFICATE_BYTES} bytes")]
pub struct CertificateTooLarge;

/// SNS support for ingest: certificates from `folder` with subscriptions
/// left to an operator when a folder is given (no outbound internet), else
/// both over HTTPS from SNS itself.
pub fn sns_support(folder: Option<std::path::PathBuf>) -> Result<tocsin_core::sns::Sns, reqwest::Error> {
    Ok(match folder {
        Some(folder) => tocsin_core::sns::Sns::offline(folder),
        None => {
            let https = std::sync::Arc::new(SnsHttps::new()?);
            tocsin_core::sns::Sns::new(https.clone(), https)
        }
    })
}

/// Fetches SNS signing certificates and confirms SNS subscriptions.
#[derive(Debug, Clone)]
pub struct SnsHttps {
    client: reqwest::Client,
    /// Where requests go instead of the SNS host (path and query kept).
    endpoint: Option<String>,
}

impl SnsHttps {
    pub fn new() -> Result<Self, reqwest::Error> {
        Self::build(None)
    }

    /// Sends every request to `endpoint` (`http://127.0.0.1:4566`) instead
    /// of the SNS host, keeping the path and query: for tests and local
    /// stacks, as AWS_ENDPOINT_URL does for the SDK. Never for production.
    pub fn with_endpoint(endpoint: impl Into<String>) -> Result<Self, reqwest::Error> {
        Self::build(Some(endpoint.into().trim_end_matches('/').to_owned()))
    }

    fn build(endpoint: Option<String>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            // A redirect could leave the SNS host the URL rule approved.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(endpoint.is_none())
            .build()?;
        Ok(Self { client, endpoint })
    }

    /// `path_and_query` starts with `/`.
    fn target(&self, url: &str, path_and_query: &str) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("{endpoint}{path_and_query}"),
            None => url.to_owned(),
        }
    }

    async fn get(&self, operation: &'static str, url: String) -> Result<reqwest::Response, BackendError> {
        // The URL may carry a confirmation token: errors are kept without it.
        self.client
            .get(url)
            .send()
            .await
            .map_err(|error| BackendError::new(operation, error.without_url()))
    }
}

#[async_trait]
impl SnsCertificates for SnsHttps {
    async fn certificate(&self, url: &SigningCertUrl) -> Result<Option<Vec<u8>>, BackendError> {
        const OPERATION: &str = "fetching an SNS signing certificate";
        let target = self.target(url.as_str(), &format!("/{}", url.file_name()));
        let response = self.get(OPERATION, target).await?;
        match response.status() {
            status if status.is_success() => {
                let body = response
                    .bytes()
                    .await
                    .map_err(|error| BackendError::new(OPERATION, error.without_url()))?;
                if body.len() > MAX_CERTIFICATE_BYTES {
                    return Err(BackendError::new(OPERATION, CertificateTooLarge));
                }
                Ok(Some(body.to_vec()))
            }
            // No such certificate: the message is refused as untrusted,
            // rather than retried.
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(BackendError::new(OPERATION, UnexpectedStatus(status.as_u16()))),
        }
    }
}

#[async_trait]
impl SnsSubscriptions for SnsHttps {
    async fn confirm(&self, url: &SubscribeUrl) -> Result<Confirmation, BackendError> {
        const OPERATION: &str = "confirming an SNS subscription";
        let path_and_query = &url.as_str()["https://".len() + url.host().len()..];
        let response = self.get(OPERATION, self.target(url.as_str(), path_and_query)).await?;
        if response.status().is_success() {
            Ok(Confirmation::Confirmed)
        } else {
            Err(BackendError::new(
                OPERATION,
                UnexpectedStatus(response.status().as_u16()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::sync::{Arc, Mutex as StdMutex};

    use axum::extract::{Path, RawQuery, State};
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::get;
    use axum::Router;
    use tocsin_core::sns::SigningCertificate;

    use super::*;

    const CERT_FILE: &str = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";
    const CERT_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/sns/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
    );
    const TOPIC: &str = "arn:aws:sns:us-east-2:123456789012:alarms";

    /// The query strings the fake SNS was asked to confirm.
    #[derive(Clone, Default)]
    struct Confirmations(Arc<StdMutex<Vec<String>>>);

    async fn certificate(Path(file): Path<String>) -> Response {
        match file.as_str() {
            CERT_FILE => std::fs::read(CERT_PATH)
                .expect("the fixture certificate")
                .into_response(),
            "SimpleNotificationService-broken.pem" => axum::http::StatusCode::BAD_GATEWAY.into_response(),
            "SimpleNotificationService-moved.pem" => Redirect::temporary("https://evil.example/x.pem").into_response(),
            "SimpleNotificationService-huge.pem" => vec![b'x'; MAX_CERTIFICATE_BYTES + 1].into_response(),
            _ => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }

    async fn confirm(State(confirmations): State<Confirmations>, RawQuery(query): RawQuery) -> Response {
        let query = query.unwrap_or_default();
        confirmations.0.lock().expect("lock").push(query.clone());
        if query.contains("Token=expired") {
            (axum::http::StatusCode::FORBIDDEN, "<ErrorResponse/>").into_response()
        } else {
            "<ConfirmSubscriptionResponse/>".into_response()
        }
    }

    /// A fake SNS on 127.0.0.1.
    async fn fake_sns() -> (SnsHttps, Confirmations) {
        let confirmations = Confirmations::default();
        let app = Router::new()
            .route("/", get(confirm))
            .route("/{file}", get(certificate))
            .with_state(confirmations.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let sns = SnsHttps::with_endpoint(format!("http://{address}/")).expect("a client");
        (sns, confirmations)
    }

    fn cert_url(file: &str) -> SigningCertUrl {
        SigningCertUrl::parse(&format!("https://sns.us-east-2.amazonaws.com/{file}")).expect("an SNS URL")
    }

    fn subscribe_url(token: &str) -> SubscribeUrl {
        let url =
            format!("https://sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}");
        SubscribeUrl::parse(&url, TOPIC).expect("an SNS URL")
    }

    #[tokio::test]
    async fn a_certificate_is_fetched_by_its_url() {
        let (sns, _) = fake_sns().await;
        let pem = sns
            .certificate(&cert_url(CERT_FILE))
            .await
            .expect("fetched")
            .expect("found");
        assert_eq!(pem, std::fs::read(CERT_PATH).unwrap());
        SigningCertificate::from_pem(&pem).expect("a certificate");
    }

    #[tokio::test]
    async fn a_missing_certificate_is_none_and_other_failures_are_errors() {
        let (sns, _) = fake_sns().await;
        let missing = sns.certificate(&cert_url("SimpleNotificationService-0123.pem")).await;
        assert_eq!(missing.expect("answered"), None);
        for file in [
            "SimpleNotificationService-broken.pem",
            "SimpleNotificationService-moved.pem",
            "SimpleNotificationService-huge.pem",
        ] {
            let error = sns.certificate(&cert_url(file)).await.expect_err(file);
            assert_eq!(error.operation, "fetching an SNS signing certificate");
        }
    }

    #[tokio::test]
    async fn a_subscription_is_confirmed_by_a_get_of_its_url() {
        let (sns, confirmations) = fake_sns().await;
        let confirmed = sns.confirm(&subscribe_url("2336412f37")).await.expect("confirmed");
        assert_eq!(confirmed, Confirmation::Confirmed);
        let asked = confirmations.0.lock().unwrap().clone();
        assert_eq!(
            asked,
            [format!("Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37")]
        );

        let error = sns.confirm(&subscribe_url("expired")).await.expect_err("refused");
        let text = format!(
            "{error} {}",
            error.source().map(ToString::to_string).unwrap_or_default()
        );
        assert!(text.contains("403"), "{text}");
    }

    #[tokio::test]
    async fn errors_never_carry_the_token() {
        // Nothing listens on port 9: the request fails with a reqwest error.
        let sns = SnsHttps::with_endpoint("http://127.0.0.1:9").expect("a client");
        let error = sns
            .confirm(&subscribe_url("secret-token-value"))
            .await
            .expect_err("unreachable");
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&format!(" {cause} {cause:?}"));
            source = cause.source();
        }
        assert!(!text.contains("secret-token-value"), "{text}");
    }

    #[test]
    fn without_an_endpoint_only_https_is_spoken() {
        let sns = SnsHttps::new().expect("a client");
        let url = cert_url(CERT_FILE);
        assert_eq!(sns.target(url.as_str(), "/x"), url.as_str());
    }
}
