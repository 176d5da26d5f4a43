//! The journal at rest: records sealed with ChaCha20-Poly1305 under a key of the application's
//! (`fallback.journal_key_file`), so a journal file on disk shows neither keys nor values, and
//! a changed byte, a record moved from another journal or a wrong key is detected, never read
//! as data.
//!
//! A sealed payload is the record's type byte (in clear: restore needs it to find whole records
//! after damage), a random 96-bit nonce, and the sealed plain payload with its 16-byte tag. The
//! associated data binds it to its journal (the instance), its type and its place in the file
//! (its offset after the header), so a record copied, moved or replayed into another place
//! does not open: it is reported as damage, never applied twice. What the key does not detect:
//! records cut off the end of the file (as a crash would), and a whole file replaced by a plain
//! journal (a store with a key accepts a plain journal so that existing ones can be sealed;
//! whoever can write the file can also delete it). The header of an
//! encrypted journal carries a key check (a tag over the header's fields), so a wrong key is
//! an error at start rather than a journal of damaged records.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

use crate::FallbackError;

const NONCE: usize = 12;
const TAG: usize = 16;

/// A 256-bit journal key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct JournalKey(ChaCha20Poly1305);

impl std::fmt::Debug for JournalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalKey(***)")
    }
}

impl JournalKey {
    /// A key from 32 bytes.
    #[must_use]
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(ChaCha20Poly1305::new(bytes.into()))
    }

    /// Reads a key file: 64 hexadecimal digits (`openssl rand -hex 32 > journal.key`; spaces
    /// and newlines around them are ignored), or exactly 32 raw bytes.
    ///
    /// # Errors
    /// [`FallbackError::Config`] naming `fallback.journal_key_file` when the file cannot be
    /// read or holds no key of that shape.
    pub fn from_file(path: &Path) -> Result<Self, FallbackError> {
        let bad = |why: String| {
            FallbackError::Config(resilient_redis_config::ConfigError::Invalid(vec![
                resilient_redis_config::Problem::new(
                    "fallback.journal_key_file",
                    Some(path.display().to_string()),
                    why,
                ),
            ]))
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(Self::from_bytes(&raw));
        }
        let text = String::from_utf8_lossy(&bytes);
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "must hold a 256-bit key: 64 hexadecimal digits (openssl rand -hex 32) or 32 \
                 raw bytes"
                    .to_owned(),
            ));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|e| bad(format!("is not hexadecimal: {e}")))?;
        }
        Ok(Self::from_bytes(&key))
    }

    /// Seals `plain` (a record's payload) for the journal `instance`.
    pub(crate) fn seal_record(&self, instance: u128, offset: u64, plain: &[u8]) -> Vec<u8> {
        let kind = plain.first().copied().unwrap_or(0);
        let aad = record_aad(instance, kind, offset);
        let nonce = fresh_nonce();
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(kind);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a sealed record payload of the journal `instance`; `None` when it does not open
    /// (changed, from another journal, or another key).
    pub(crate) fn open_record(
        &self,
        instance: u128,
        offset: u64,
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        if sealed.len() < 1 + NONCE + TAG {
            return None;
        }
        let kind = sealed[0];
        let aad = record_aad(instance, kind, offset);
        let plain = self
            .0
            .decrypt(
                Nonce::from_slice(&sealed[1..=NONCE]),
                Payload {
                    msg: &sealed[1 + NONCE..],
                    aad: &aad,
                },
            )
            .ok()?;
        (plain.first() == Some(&kind)).then_some(plain)
    }

    /// The key check of a header: a nonce and a tag over the header's fields.
    pub(crate) fn check(&self, fields: &[u8]) -> Vec<u8> {
        let nonce = fresh_nonce();
        let tag = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &[],
                    aad: fields,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&tag);
        out
    }

    /// Whether `check` (from [`JournalKey::check`]) was made by this key over `fields`.
    pub(crate) fn verify(&self, fields: &[u8], check: &[u8]) -> bool {
        check.len() == NONCE + TAG
            && self
                .0
                .decrypt(
                    Nonce::from_slice(&check[..NONCE]),
                    Payload {
                        msg: &check[NONCE..],
                        aad: fields,
                    },
                )
                .is_ok()
    }
}

/// The length of a header's key check.
pub(crate) const CHECK_LEN: usize = NONCE + TAG;

fn record_aad(instance: u128, kind: u8, offset: u64) -> [u8; 25] {
    let mut aad = [0u8; 25];
    aad[..16].copy_from_slice(&instance.to_le_bytes());
    aad[16] = kind;
    aad[17..].copy_from_slice(&offset.to_le_bytes());
    aad
}

/// A random nonce: the operating system's randomness (96 bits: a repeat is negligible for the
/// number of records a journal sees under one key).
fn fresh_nonce() -> [u8; NONCE] {
    let mut nonce = [0u8; NONCE];
    if getrandom::fill(&mut nonce).is_err() {
        nonce = fastrand::u128(..).to_le_bytes()[..NONCE]
            .try_into()
            .unwrap_or([0; NONCE]);
    }
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_only_with_its_key_its_journal_its_place_and_unchanged() {
        let key = JournalKey::from_bytes(&[7; 32]);
        let plain = *b"\x01fields that must not show";
        let sealed = key.seal_record(42, 100, &plain);
        assert_eq!(sealed[0], 1, "the type byte stays readable");
        assert!(
            !sealed.windows(plain.len() - 1).any(|w| w == &plain[1..]),
            "the fields do not"
        );
        assert_eq!(
            key.open_record(42, 100, &sealed).as_deref(),
            Some(&plain[..])
        );
        assert_eq!(key.open_record(43, 100, &sealed), None, "another journal's");
        assert_eq!(key.open_record(42, 200, &sealed), None, "another place's");
        let other = JournalKey::from_bytes(&[8; 32]);
        assert_eq!(other.open_record(42, 100, &sealed), None);
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(key.open_record(42, 100, &changed), None);
        let mut retyped = sealed;
        retyped[0] = 2;
        assert_eq!(
            key.open_record(42, 100, &retyped),
            None,
            "the type byte is bound"
        );
    }

    #[test]
    fn a_key_file_holds_hex_or_raw_bytes_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [0xab; 32]).unwrap();
        let (a, b) = (
            JournalKey::from_file(&hex).unwrap(),
            JournalKey::from_file(&raw).unwrap(),
        );
        let check = a.check(b"fields");
        assert!(b.verify(b"fields", &check), "the same key either way");
        assert!(!b.verify(b"other", &check));
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd").unwrap();
        let err = JournalKey::from_file(&short).unwrap_err().to_string();
        assert!(
            err.contains("fallback.journal_key_file") && err.contains("64 hexadecimal"),
            "{err}"
        );
        assert!(format!("{a:?}") == "JournalKey(***)");
    }
}
