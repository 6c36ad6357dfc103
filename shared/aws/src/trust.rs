//! Which certificates the Lambda functions' SDK clients trust for HTTPS.
//!
//! The SDK's default HTTPS client reads the system's root certificates when
//! each SDK client is built (on Debian a bundle and a folder: some 290 PEM
//! files), and each SDK client builds its own: that was half of a
//! function's init (docs/performance.md). Every AWS endpoint presents an
//! Amazon Trust Services certificate, so a function's SDK clients share one
//! HTTPS client that trusts those five roots alone, unless the environment
//! asks for more ([`amazon_roots_suffice`]), in which case they get the SDK's
//! default client, as before. The `tocsin` command keeps the default: a
//! laptop may sit behind a proxy that presents its own certificates.

use std::ffi::OsString;

use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};

/// Amazon Root CA 1 to 4 and Starfield Services Root CA G2, as PEM.
const AMAZON_TRUST_SERVICES: &str = include_str!("amazon-trust-services.pem");

/// The SDK config of a Lambda function: as [`crate::sdk_config`], with one
/// HTTPS client for all its SDK clients that trusts Amazon's roots.
pub async fn function_sdk_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if amazon_roots_suffice(std::env::vars_os()) {
        match amazon_roots_context() {
            Ok(context) => {
                loader = loader.http_client(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                        .tls_context(context)
                        .build_https(),
                );
            }
            Err(error) => tracing::warn!(%error, "trusting the system's root certificates"),
        }
    }
    loader.load().await
}

fn amazon_roots_context() -> Result<TlsContext, aws_smithy_http_client::HttpClientError> {
    TlsContext::builder()
        .with_trust_store(
            TrustStore::empty()
                .with_native_roots(false)
                .with_pem_certificate(AMAZON_TRUST_SERVICES.as_bytes()),
        )
        .build()
}

/// Whether the AWS endpoints a function talks to are AWS's own, reached
/// directly: not when a trust store is named (SSL_CERT_FILE, SSL_CERT_DIR),
/// nor through a proxy the default client would use (HTTPS_PROXY and the
/// like, which may present its own certificate), nor when an endpoint
/// override (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>) is HTTPS: a
/// server that is not AWS. An http:// override (moto, a local stack) uses
/// no certificate at all.
pub fn amazon_roots_suffice(vars: impl IntoIterator<Item = (OsString, OsString)>) -> bool {
    const OTHER_TRUST: &[&str] = &[
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    vars.into_iter().all(|(name, value)| {
        let name = name.to_string_lossy();
        let value = value.to_string_lossy();
        let value = value.trim();
        if value.is_empty() {
            return true;
        }
        if OTHER_TRUST.contains(&name.as_ref()) {
            return false;
        }
        !(name.starts_with("AWS_ENDPOINT_URL")
            && value
                .get(..8)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    const LAMBDA: &[(&str, &str)] = &[
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "ASIA0000"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("TOCSIN_TABLE", "tocsin"),
    ];

    #[test]
    fn a_function_on_aws_or_against_a_local_http_server_trusts_amazon_roots() {
        assert!(amazon_roots_suffice(vars(LAMBDA)));
        let mut local = LAMBDA.to_vec();
        local.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"));
        local.push(("HTTPS_PROXY", ""));
        assert!(amazon_roots_suffice(vars(&local)));
    }

    #[test]
    fn a_named_trust_store_a_proxy_or_an_https_endpoint_override_keeps_the_system_roots() {
        for extra in [
            ("SSL_CERT_FILE", "/etc/pki/tls/certs/ca-bundle.crt"),
            ("SSL_CERT_DIR", "/etc/ssl/certs"),
            ("HTTPS_PROXY", "http://proxy.internal:3128"),
            ("all_proxy", "socks5://proxy.internal:1080"),
            ("AWS_ENDPOINT_URL", "https://localstack.internal:4566"),
            ("AWS_ENDPOINT_URL_SQS", "HTTPS://sqs.internal"),
        ] {
            let mut env = LAMBDA.to_vec();
            env.push(extra);
            assert!(!amazon_roots_suffice(vars(&env)), "{extra:?}");
        }
    }

    #[test]
    fn the_amazon_roots_parse_when_an_sdk_client_is_built() {
        assert_eq!(AMAZON_TRUST_SERVICES.matches("-----BEGIN CERTIFICATE-----").count(), 5);
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(amazon_roots_context().unwrap())
            .build_https();
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .http_client(http)
            .build();
        // Building the client builds its TLS config: an unreadable root
        // panics here, at init, never on a request.
        let _ = aws_sdk_sqs::Client::from_conf(config);
    }
}
