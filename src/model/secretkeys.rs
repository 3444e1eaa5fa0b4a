//! KubeDirector's secret-key format: `roles[].secretKeys[].encryptedValue` is the hex of a 12-byte
//! nonce followed by the AES-GCM sealed value (ciphertext and 16-byte tag), under kd-global-config's
//! hex `masterEncryptionKey` (32 bytes: AES-256; 16 and 24 are AES-128 and -192, of which ring has
//! AES-128). Values KubeDirector encrypted decrypt here, and the other way round.

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretKeyError {
    #[error("masterEncryptionKey is not hex of a 16- or 32-byte key")]
    BadMasterKey,
    #[error("encryptedValue is not hex of a nonce and a sealed value")]
    Malformed,
    #[error("encryptedValue does not open under the masterEncryptionKey (another key, or altered)")]
    WrongKey,
}

fn key(master_hex: &str) -> Result<LessSafeKey, SecretKeyError> {
    let bytes = hex::decode(master_hex.trim()).map_err(|_| SecretKeyError::BadMasterKey)?;
    let algorithm = match bytes.len() {
        32 => &AES_256_GCM,
        16 => &AES_128_GCM,
        _ => return Err(SecretKeyError::BadMasterKey),
    };
    let unbound = UnboundKey::new(algorithm, &bytes).map_err(|_| SecretKeyError::BadMasterKey)?;
    Ok(LessSafeKey::new(unbound))
}

/// The plaintext of one `encryptedValue`.
pub fn decrypt(master_hex: &str, encrypted_hex: &str) -> Result<String, SecretKeyError> {
    let key = key(master_hex)?;
    let bytes = hex::decode(encrypted_hex.trim()).map_err(|_| SecretKeyError::Malformed)?;
    if bytes.len() < NONCE_LEN + key.algorithm().tag_len() {
        return Err(SecretKeyError::Malformed);
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretKeyError::Malformed)?;
    let mut sealed = sealed.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::empty(), &mut sealed)
        .map_err(|_| SecretKeyError::WrongKey)?;
    String::from_utf8(plain.to_vec()).map_err(|_| SecretKeyError::Malformed)
}

/// A member's auth token: 32 hex digits, keyed by the caller's fresh `salt` (so not guessable from
/// the names it is derived from), made once and then kept in status.
pub fn auth_token(salt: &str, cluster_uid: &str, pod: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{cluster_uid}/{pod}").as_bytes());
    hex::encode(&tag.as_ref()[..16])
}

/// Seals `plaintext` under `master_hex` with the caller's fresh random `nonce`.
pub fn encrypt(master_hex: &str, nonce: [u8; NONCE_LEN], plaintext: &str) -> Result<String, SecretKeyError> {
    let key = key(master_hex)?;
    let mut sealed = plaintext.as_bytes().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
        .map_err(|_| SecretKeyError::BadMasterKey)?;
    let mut out = nonce.to_vec();
    out.extend(sealed);
    Ok(hex::encode(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "6b64676f6c64656e2d6d61737465722d6b65792d33322d62797465732d212121";

    #[test]
    fn round_trips_and_refuses_other_keys() {
        let sealed = encrypt(KEY, [7; NONCE_LEN], "hunter2").expect("seal");
        assert_eq!(decrypt(KEY, &sealed).as_deref(), Ok("hunter2"));
        let other = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
        assert_eq!(decrypt(other, &sealed), Err(SecretKeyError::WrongKey));
        assert_eq!(decrypt(KEY, "zz"), Err(SecretKeyError::Malformed));
        assert_eq!(decrypt(KEY, "00"), Err(SecretKeyError::Malformed));
        assert_eq!(decrypt("abc", &sealed), Err(SecretKeyError::BadMasterKey));
    }
}
