//! Reasoning sealed for the client to keep: Responses' `encrypted_content` and a Messages
//! thinking block's `signature` are the same blob, so a stateless client (Codex with
//! `store: false`, Claude Code) and any replica give the model its reasoning back with no
//! server state.
//!
//! The blob is `hp1.` + base64url(nonce ‖ AES-256-GCM(reasoning)), the additional data
//! binding it to the client's key scope: one API key's blob does not open under another.
//! AES-GCM is ring's (audited, already what rustls runs on here); nonces are random (96
//! bits) from the system. The key comes from config (`server.reasoning_key`, any string:
//! its SHA-256 is the key), so every replica with the same setting opens every blob; unset,
//! a random key is made once per process, and blobs then open only in that process.
//!
//! Opening never fails loudly: a blob that does not open (another key, tampered, not ours)
//! is `None`, and the caller goes on without it.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "hp1.";
/// Reasoning longer than this is not sealed (its end is kept, as reasoning memory does).
const MAX_SEALED: usize = 256 << 10;

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// A sealer whose key is derived from `secret` (the same secret, the same key).
    pub fn from_secret(secret: &str) -> Self {
        use sha2::Digest as _;
        let k = sha2::Sha256::digest(secret.as_bytes());
        Self::from_key(&k)
    }

    /// A sealer with a random key, valid in this process only.
    pub fn random() -> Self {
        let rng = SystemRandom::new();
        let mut k = [0u8; 32];
        // The system's generator does not fail on the platforms this runs on; if it ever
        // did, a key from the clock still keeps blobs from other processes out.
        if rng.fill(&mut k).is_err() {
            use sha2::Digest as _;
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            k.copy_from_slice(&sha2::Sha256::digest(format!("{t}:{}", std::process::id()).as_bytes()));
        }
        Self::from_key(&k)
    }

    fn from_key(k: &[u8]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte key fits AES-256-GCM");
        Self { key: LessSafeKey::new(unbound), rng: SystemRandom::new() }
    }

    /// The process's random-key sealer (one for the process's life, across reloads).
    pub fn process_random() -> std::sync::Arc<Sealer> {
        static S: std::sync::OnceLock<std::sync::Arc<Sealer>> = std::sync::OnceLock::new();
        S.get_or_init(|| std::sync::Arc::new(Sealer::random())).clone()
    }

    /// `reasoning` sealed for `scope`.
    pub fn seal(&self, scope: &str, reasoning: &str) -> String {
        let start = reasoning.len().saturating_sub(MAX_SEALED);
        let start = (start..=reasoning.len()).find(|&i| reasoning.is_char_boundary(i)).unwrap_or(0);
        let mut nonce = [0u8; NONCE_LEN];
        let _ = self.rng.fill(&mut nonce);
        let mut buf = reasoning.as_bytes()[start..].to_vec();
        if self.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(scope.as_bytes()), &mut buf).is_err() {
            return String::new();
        }
        let mut blob = Vec::with_capacity(NONCE_LEN + buf.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&buf);
        format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(blob))
    }

    /// The reasoning in `blob`, when it was sealed by this key for `scope`.
    pub fn open(&self, scope: &str, blob: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(blob.strip_prefix(PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(scope.as_bytes()), &mut buf).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_reasoning_opens_with_the_same_key_and_scope_only() {
        let a = Sealer::from_secret("s3cret");
        let blob = a.seal("scope1", "I will run ls.");
        assert!(blob.starts_with("hp1.") && !blob.contains("run ls"));
        assert_eq!(a.open("scope1", &blob).as_deref(), Some("I will run ls."));
        assert_eq!(Sealer::from_secret("s3cret").open("scope1", &blob).as_deref(), Some("I will run ls."), "another replica, same secret");
        assert_eq!(a.open("scope2", &blob), None, "another API key");
        assert_eq!(Sealer::from_secret("other").open("scope1", &blob), None);
        assert_eq!(Sealer::random().open("scope1", &blob), None);
        let mut tampered = blob.clone();
        tampered.push('A');
        assert_eq!(a.open("scope1", &tampered), None);
        for junk in ["", "hp1.", "hp1.!!!", "gAAAAABnotours", "hp1.AAAA"] {
            assert_eq!(a.open("scope1", junk), None, "{junk}");
        }
        assert_ne!(a.seal("s", "x"), a.seal("s", "x"), "a fresh nonce each time");
    }
}
