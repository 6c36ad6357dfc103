//! An integration's secret sent as is, for tools that can add fixed headers
//! (or HTTP Basic credentials) to a request but cannot sign its body:
//! New Relic, Dynatrace and AppDynamics send `X-Tocsin-Secret`, Google Cloud
//! Monitoring sends the secret as its Basic authentication password.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::providers::base64;
use crate::signature::SignatureError;

/// The header that carries the secret verbatim.
pub(crate) const SECRET_HEADER: &str = "x-tocsin-secret";

/// What a missing `X-Tocsin-Secret` is reported as.
const EXPECTED_HEADER: &str = "X-Tocsin-Secret: <the integration's secret>";

/// What a missing Basic password is reported as.
const EXPECTED_BASIC: &str = "Authorization: Basic <user:secret>";

/// Checks `X-Tocsin-Secret` against the integration's secret; no secret, no
/// check.
pub(crate) fn verify_secret_header(headers: &HeaderMap, secret: Option<&Secret>) -> Result<(), SignatureError> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let sent = headers.get(SECRET_HEADER).ok_or(SignatureError::Missing {
        expected: EXPECTED_HEADER,
    })?;
    matches(sent.as_bytes(), secret)
}

/// Checks that the password of `Authorization: Basic` is the integration's
/// secret (the user name is free); no secret, no check.
pub(crate) fn verify_basic_password(headers: &HeaderMap, secret: Option<&Secret>) -> Result<(), SignatureError> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let missing = SignatureError::Missing {
        expected: EXPECTED_BASIC,
    };
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(missing.clone())?
        .to_str()
        .map_err(|_| SignatureError::Malformed)?
        .trim();
    let encoded = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => rest.trim(),
        // Another scheme (a Bearer key, say) is no password at all.
        _ => return Err(missing),
    };
    let decoded = base64::decode(encoded).ok_or(SignatureError::Malformed)?;
    let credentials = String::from_utf8(decoded).map_err(|_| SignatureError::Malformed)?;
    let (_user, password) = credentials.split_once(':').ok_or(SignatureError::Malformed)?;
    matches(password.as_bytes(), secret)
}

/// Compares digests, which have equal lengths, so the time taken tells
/// neither how much of the value matched nor how long the secret is.
fn matches(sent: &[u8], secret: &Secret) -> Result<(), SignatureError> {
    let sent = Sha256::digest(sent);
    let expected = Sha256::digest(secret.expose().as_bytes());
    if bool::from(sent.as_slice().ct_eq(expected.as_slice())) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_secret_header_must_carry_the_secret_exactly() {
        let secret = Secret::new("a-shared-secret-value");
        let some = Some(&secret);
        assert_eq!(
            verify_secret_header(&headers("x-tocsin-secret", "a-shared-secret-value"), some),
            Ok(())
        );
        assert_eq!(
            verify_secret_header(&headers("x-tocsin-secret", "a-shared-secret-valuE"), some),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_secret_header(&HeaderMap::new(), some),
            Err(SignatureError::Missing { .. })
        ));
        assert_eq!(verify_secret_header(&HeaderMap::new(), None), Ok(()));
    }

    #[test]
    fn the_basic_password_must_be_the_secret_whatever_the_user() {
        let secret = Secret::new("s3cret");
        let some = Some(&secret);
        // printf 'tocsin:s3cret' | base64
        let good = headers("authorization", "Basic dG9jc2luOnMzY3JldA==");
        assert_eq!(verify_basic_password(&good, some), Ok(()));
        // printf 'tocsin:other' | base64
        let wrong = headers("authorization", "basic dG9jc2luOm90aGVy");
        assert_eq!(verify_basic_password(&wrong, some), Err(SignatureError::Mismatch));
        let bearer = headers("authorization", "Bearer 0123456789abcdef0123456789abcdef");
        assert!(matches!(
            verify_basic_password(&bearer, some),
            Err(SignatureError::Missing { .. })
        ));
        assert!(matches!(
            verify_basic_password(&HeaderMap::new(), some),
            Err(SignatureError::Missing { .. })
        ));
        let garbage = headers("authorization", "Basic !!!");
        assert_eq!(verify_basic_password(&garbage, some), Err(SignatureError::Malformed));
        // printf 'no-colon' | base64
        let no_colon = headers("authorization", "Basic bm8tY29sb24=");
        assert_eq!(verify_basic_password(&no_colon, some), Err(SignatureError::Malformed));
        assert_eq!(verify_basic_password(&HeaderMap::new(), None), Ok(()));
    }
}
