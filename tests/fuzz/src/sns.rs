//! Amazon SNS message verification, fuzzed on the body SNS posts: the
//! envelope, the URL rules for SigningCertURL and SubscribeURL, the topic
//! ARN, the Timestamp window and the RSA signature (with the real
//! certificate of the signed samples in events/cloudwatch), and the
//! certificate reader on the same bytes.
//!
//! Invariants: an accepted SigningCertURL names a file
//! `SimpleNotificationService-<letters and digits>.pem` and nothing else;
//! an accepted SubscribeURL is an SNS host's and never shows its token when
//! displayed; a message that verifies stops verifying once its Message
//! changes.

use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use tocsin_core::sns::{
    check_topic, refuse_raw_delivery, SigningCertUrl, SigningCertificate, Sns, SnsError, SnsMessage, SubscribeUrl,
    TopicArn,
};

use crate::{ready, received_at, Request};

/// The certificate that signed the real SNS samples in events/cloudwatch.
const SNS_CERTIFICATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/sns");

pub fn sns(data: &[u8]) {
    let request = Request::decode(data);
    let _ = refuse_raw_delivery(&request.headers);
    let _ = SigningCertificate::from_pem(request.body);
    let _ = SigningCertificate::from_der(request.body);

    let Ok(message) = SnsMessage::parse(request.body) else {
        return;
    };
    let _ = message.string_to_sign();
    if let Ok(topic) = TopicArn::parse(&message.topic_arn) {
        assert_eq!(
            TopicArn::parse(topic.as_str()).as_ref(),
            Ok(&topic),
            "a topic ARN does not read back"
        );
        assert!(check_topic(std::slice::from_ref(&topic), topic.as_str()).is_ok());
    }
    if let Some(url) = &message.signing_cert_url {
        check_certificate_url(url);
    }
    if let Some(url) = &message.subscribe_url {
        check_subscribe_url(url, &message.topic_arn);
    }

    // Verified at a second after it was sent, so that a real sample (whose
    // certificate has long expired) verifies and tampering is what fails.
    let now = DateTime::parse_from_rfc3339(&message.timestamp)
        .map(|sent| sent.with_timezone(&Utc) + Duration::seconds(1))
        .unwrap_or_else(|_| received_at());
    if ready(verifier().verify(&message, now)).is_ok() {
        let mut tampered = message.clone();
        tampered.message.push(' ');
        assert!(
            matches!(ready(verifier().verify(&tampered, now)), Err(SnsError::Mismatch)),
            "a signed message still verifies with its Message changed"
        );
    }
}

fn verifier() -> &'static Sns {
    static SNS: OnceLock<Sns> = OnceLock::new();
    SNS.get_or_init(|| Sns::offline(SNS_CERTIFICATES))
}

fn check_certificate_url(url: &str) {
    let Ok(parsed) = SigningCertUrl::parse(url) else {
        return;
    };
    assert_eq!(parsed.as_str(), url);
    let name = parsed.file_name();
    let id = name
        .strip_prefix("SimpleNotificationService-")
        .and_then(|rest| rest.strip_suffix(".pem"))
        .unwrap_or_else(|| panic!("{url:?} names the file {name:?}"));
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{url:?} names the file {name:?}"
    );
    let host = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{url:?} accepted without https://"));
    check_sns_host(url, host);
}

fn check_subscribe_url(url: &str, topic_arn: &str) {
    let Ok(parsed) = SubscribeUrl::parse(url, topic_arn) else {
        return;
    };
    check_sns_host(url, parsed.host());
    let token = form_token(url);
    // What Display and Debug may show besides the token.
    let fixed = format!(
        "https://{}/?Action=ConfirmSubscription&… SubscribeUrl(<redacted>)",
        parsed.host()
    );
    for shown in [parsed.to_string(), format!("{parsed:?}")] {
        if let Some(token) = token.as_deref().filter(|t| !fixed.contains(t)) {
            assert!(!shown.contains(token), "a SubscribeURL shows its token: {shown}");
        }
    }
}

/// `sns.<region>.amazonaws.com[.cn]`, the region letters, digits and
/// dashes: nothing else may serve a certificate or confirm a subscription.
fn check_sns_host(url: &str, host: &str) {
    let region = host
        .strip_prefix("sns.")
        .and_then(|rest| {
            rest.strip_suffix(".amazonaws.com")
                .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
        })
        .unwrap_or_else(|| panic!("{url:?} accepted with the host {host:?}"));
    assert!(
        !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{url:?} accepted with the host {host:?}"
    );
}

fn form_token(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "Token").then(|| value.to_owned())
    })
}
