//! KubeDirector's secret-key format: `roles[].secretKeys[].encryptedValue` is the hex of a 12-byte
//! nonce followed by the AES-GCM sealed value (ciphertext and 16-byte tag), under kd-global-config's
//! hex `masterEncryptionKey` (16, 24 or 32 bytes: AES-128, -192, -256, as Go's `aes.NewCipher`
//! takes them). Values KubeDirector encrypted decrypt here, and the other way round.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};

/// GCM's standard nonce, as KubeDirector uses it.
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretKeyError {
    #[error("masterEncryptionKey is not hex of a 16-, 24- or 32-byte key")]
    BadMasterKey,
    #[error("encryptedValue is not hex of a nonce and a sealed value")]
    Malformed,
    #[error("encryptedValue does not open under the masterEncryptionKey (another key, or altered)")]
    WrongKey,
}

enum Key {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<AesGcm<Aes192, U12>>),
    Aes256(Box<Aes256Gcm>),
}

fn key(master_hex: &str) -> Result<Key, SecretKeyError> {
    let bytes = hex::decode(master_hex.trim()).map_err(|_| SecretKeyError::BadMasterKey)?;
    let bad = |_| SecretKeyError::BadMasterKey;
    Ok(match bytes.len() {
        16 => Key::Aes128(Box::new(Aes128Gcm::new_from_slice(&bytes).map_err(bad)?)),
        24 => Key::Aes192(Box::new(AesGcm::<Aes192, U12>::new_from_slice(&bytes).map_err(bad)?)),
        32 => Key::Aes256(Box::new(Aes256Gcm::new_from_slice(&bytes).map_err(bad)?)),
        _ => return Err(SecretKeyError::BadMasterKey),
    })
}

/// Whether `master_hex` is a usable masterEncryptionKey (kd-global-config admission).
pub fn check_master_key(master_hex: &str) -> Result<(), SecretKeyError> {
    key(master_hex).map(|_| ())
}

/// The plaintext of one `encryptedValue`.
pub fn decrypt(master_hex: &str, encrypted_hex: &str) -> Result<String, SecretKeyError> {
    let key = key(master_hex)?;
    let bytes = hex::decode(encrypted_hex.trim()).map_err(|_| SecretKeyError::Malformed)?;
    if bytes.len() < NONCE_LEN + TAG_LEN {
        return Err(SecretKeyError::Malformed);
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::<U12>::from_slice(nonce);
    let plain = match &key {
        Key::Aes128(k) => k.decrypt(nonce, sealed),
        Key::Aes192(k) => k.decrypt(nonce, sealed),
        Key::Aes256(k) => k.decrypt(nonce, sealed),
    }
    .map_err(|_| SecretKeyError::WrongKey)?;
    String::from_utf8(plain).map_err(|_| SecretKeyError::Malformed)
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
    let n = Nonce::<U12>::from_slice(&nonce);
    let sealed = match &key {
        Key::Aes128(k) => k.encrypt(n, plaintext.as_bytes()),
        Key::Aes192(k) => k.encrypt(n, plaintext.as_bytes()),
        Key::Aes256(k) => k.encrypt(n, plaintext.as_bytes()),
    }
    .map_err(|_| SecretKeyError::BadMasterKey)?;
    let mut out = nonce.to_vec();
    out.extend(sealed);
    Ok(hex::encode(out))
}

/// Secret keys that cannot be used as stored, each naming its field: with `plaintext_refused`
/// (admission), a plaintext `value` (the mutating webhook seals it, so one left means that webhook is
/// missing); always, an `encryptedValue` that does not open under `master_hex` (none set, another
/// key, altered). Nothing is ever decrypted wrongly.
pub fn stored_errors(
    spec: &crate::api::KubeDirectorClusterSpec,
    master_hex: Option<&str>,
    plaintext_refused: bool,
) -> Vec<super::validate::FieldError> {
    let mut errors = Vec::new();
    for (i, role) in spec.roles.iter().enumerate() {
        for (j, key) in role.secret_keys.iter().enumerate() {
            let name = &key.name;
            let problem = match (key.value.is_some(), key.encrypted_value.as_deref(), master_hex) {
                (true, _, _) if plaintext_refused => Some((
                    "value",
                    format!(
                        "secret key {name:?} holds a plaintext value; it is stored only encrypted (is the mutating webhook installed?)"
                    ),
                )),
                (true, _, _) | (false, None, _) => None,
                (false, Some(_), None) => Some((
                    "encryptedValue",
                    format!("secret key {name:?} cannot be opened: kd-global-config has no masterEncryptionKey"),
                )),
                (false, Some(sealed), Some(master)) => decrypt(master, sealed)
                    .err()
                    .map(|e| ("encryptedValue", format!("secret key {name:?}: {e}"))),
            };
            if let Some((leaf, message)) = problem {
                errors.push(super::validate::FieldError {
                    field: format!("spec.roles[{i}].secretKeys[{j}].{leaf}"),
                    message,
                });
            }
        }
    }
    errors
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
        // Every AES size Go's aes.NewCipher takes; others refused.
        for bytes in [16, 24, 32] {
            let k = hex::encode(vec![9u8; bytes]);
            let sealed = encrypt(&k, [1; NONCE_LEN], "x").expect("seal");
            assert_eq!(decrypt(&k, &sealed).as_deref(), Ok("x"), "{bytes}");
            assert_eq!(check_master_key(&k), Ok(()));
        }
        assert_eq!(
            check_master_key(&hex::encode([1u8; 20])),
            Err(SecretKeyError::BadMasterKey)
        );
    }
}
