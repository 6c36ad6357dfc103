//! Standard base64 (RFC 4648 §4) decoding for the credential and signature
//! headers providers send, with padding optional: senders differ, and a
//! missing `=` is no reason to refuse a correct signature.

use ::base64::alphabet::STANDARD;
use ::base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ::base64::Engine;

const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes standard base64 (`+`, `/`), padded or not. `None` for any other
/// character or a length no encoder produces.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD_ANY_PADDING.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn the_rfc_4648_vectors_decode_with_or_without_padding() {
        for (encoded, decoded) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9vYg", "foob"),
            ("Zm8", "fo"),
        ] {
            assert_eq!(decode(encoded).as_deref(), Some(decoded.as_bytes()), "{encoded}");
        }
    }

    #[test]
    fn other_alphabets_and_impossible_lengths_are_refused() {
        assert_eq!(decode("Z"), None);
        assert_eq!(decode("Zm9vY"), None);
        assert_eq!(decode("Zm9v-g"), None);
        assert_eq!(decode("Zm9v_g"), None);
        assert_eq!(decode("Zm 9v"), None);
    }
}
