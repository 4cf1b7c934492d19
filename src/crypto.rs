//! Client-side encryption with age (X25519 recipients).
//!
//! Backups only ever see public recipients (`age1…`), so a compromised backup task cannot read
//! old backups; restore and verify take the identity file (`AGE-SECRET-KEY-1…` lines). The
//! encryption layer sits between compression and hashing, so the manifest's SHA-256 covers
//! the stored (encrypted) bytes and can be checked without any key.
//!
//! Identity file contents never reach an error or a log line: age's own parser reports line
//! numbers only, and we never format the identities.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use age::x25519;

use crate::config::ConfigError;
use crate::manifest::Encryption;
use crate::write_path::Producer;

/// Appended to the key of an encrypted artifact (`.dump.zst.age`, `.zip.age`).
pub const SUFFIX: &str = ".age";
/// Recorded in the manifest's `encryption.scheme`.
pub const SCHEME: &str = "age";

const RECIPIENT_FLAG: &str = "--encrypt-to";
const IDENTITY_FLAG: &str = "--identity";

/// Whether an artifact's extension marks it as age-encrypted.
pub fn is_encrypted(extension: &str) -> bool {
    extension.ends_with(SUFFIX)
}

/// The extension of the plaintext inside (`.dump.zst.age` → `.dump.zst`).
pub fn inner_extension(extension: &str) -> &str {
    extension.strip_suffix(SUFFIX).unwrap_or(extension)
}

/// The recipients a backup encrypts to, validated before anything runs.
#[derive(Clone)]
pub struct Recipients {
    keys: Arc<[x25519::Recipient]>,
    /// As given, for the manifest (so a reader knows which key to look for).
    names: Vec<String>,
}

impl Recipients {
    /// Parses `--encrypt-to` values; empty entries (an empty env var) are ignored. `None` when
    /// no recipient is configured.
    pub fn parse(values: &[String]) -> Result<Option<Recipients>, ConfigError> {
        let names: Vec<String> = values
            .iter()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        let keys = names
            .iter()
            .map(|n| parse_recipient(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Recipients {
            keys: keys.into(),
            names,
        }))
    }

    /// What the manifest records.
    pub fn manifest(&self) -> Encryption {
        Encryption {
            scheme: SCHEME.into(),
            recipients: self.names.clone(),
        }
    }

    /// Wraps a producer so everything it writes is encrypted before it reaches the sink.
    /// Each call uses a fresh file key (age generates one per `Encryptor`).
    pub fn encrypting(&self, inner: Producer) -> Producer {
        let keys = self.keys.clone();
        Box::new(move |sink: &mut dyn Write| {
            let encryptor =
                age::Encryptor::with_recipients(keys.iter().map(|k| k as &dyn age::Recipient))
                    .map_err(|e| io::Error::other(format!("age: {e}")))?;
            let mut writer = encryptor.wrap_output(sink)?;
            let raw = inner(&mut writer)?;
            // Without finish() the last chunk is missing and the artifact cannot be decrypted.
            writer.finish()?;
            Ok(raw)
        })
    }
}

/// One `age1…` recipient. A secret key passed by mistake is named as such, never echoed.
fn parse_recipient(value: &str) -> Result<x25519::Recipient, ConfigError> {
    if value.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return Err(ConfigError::invalid(
            RECIPIENT_FLAG,
            "was given an age secret key (AGE-SECRET-KEY-1…): pass its public recipient (age1…) instead; backups never need the secret key",
        ));
    }
    value.parse::<x25519::Recipient>().map_err(|_| {
        ConfigError::invalid(
            RECIPIENT_FLAG,
            format!("\"{value}\" is not an age X25519 recipient (expected age1…)"),
        )
    })
}

/// The identities restore and verify decrypt with.
pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

impl Identities {
    /// Reads an age identity file. Errors name the flag and the path, never the contents.
    pub fn load(path: &Path) -> Result<Identities, ConfigError> {
        let shown = path.display().to_string();
        let file = age::IdentityFile::from_file(shown.clone()).map_err(|e| {
            let why = match e.kind() {
                io::ErrorKind::InvalidData => e.to_string(),
                _ => format!("cannot read {shown}: {e}"),
            };
            ConfigError::invalid(IDENTITY_FLAG, why)
        })?;
        let ids = file
            .into_identities()
            .map_err(|e| ConfigError::invalid(IDENTITY_FLAG, format!("{shown}: {e}")))?;
        if ids.is_empty() {
            return Err(ConfigError::invalid(
                IDENTITY_FLAG,
                format!("{shown} holds no age identity (AGE-SECRET-KEY-1… lines)"),
            ));
        }
        Ok(Identities(ids))
    }

    /// Starts decrypting `src`: reads the header and unwraps the file key.
    pub fn decrypt<R: Read>(&self, src: R) -> Result<impl Read, DecryptError> {
        let decryptor = age::Decryptor::new(src).map_err(DecryptError::from_age)?;
        decryptor
            .decrypt(self.0.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(DecryptError::from_age)
    }
}

/// The error for an encrypted artifact when no identity was given.
pub fn missing_identity(key: &str) -> ConfigError {
    ConfigError::missing(
        IDENTITY_FLAG,
        format!(
            "{key} is encrypted with age: pass --identity <file> (or BACKUP_AGE_IDENTITY_FILE)"
        ),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The artifact was encrypted to other recipients.
    #[error("no identity matches: the artifact is encrypted to other recipients than the keys in --identity")]
    NoMatch,
    /// Not an age file, or a damaged header.
    #[error("not a readable age file: {0}")]
    Format(String),
}

impl DecryptError {
    fn from_age(e: age::DecryptError) -> Self {
        match e {
            age::DecryptError::NoMatchingKeys => DecryptError::NoMatch,
            other => DecryptError::Format(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn bad_recipients_are_named_and_secret_keys_are_not_echoed() {
        let err = Recipients::parse(&["age1nope".into()]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "--encrypt-to \"age1nope\" is not an age X25519 recipient (expected age1…)"
        );
        let secret = x25519::Identity::generate();
        let s = secret.to_string().expose_secret().to_string();
        let err = Recipients::parse(std::slice::from_ref(&s)).err().unwrap();
        assert!(!err.to_string().contains(&s[15..]), "{err}");
        assert!(Recipients::parse(&["".into()]).unwrap().is_none());
    }

    #[test]
    fn round_trip_and_wrong_identity() {
        let id = x25519::Identity::generate();
        let r = Recipients::parse(&[id.to_public().to_string()])
            .unwrap()
            .unwrap();
        let producer = r.encrypting(Box::new(|w: &mut dyn Write| {
            w.write_all(&[42u8; 200_000])?;
            Ok(200_000)
        }));
        let mut stored = Vec::new();
        assert_eq!(producer(&mut stored).unwrap(), 200_000);
        assert!(stored.starts_with(b"age-encryption.org/v1"));
        let ids = Identities(vec![Box::new(id)]);
        let mut out = Vec::new();
        ids.decrypt(&stored[..])
            .ok()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, vec![42u8; 200_000]);
        let other = Identities(vec![Box::new(x25519::Identity::generate())]);
        assert!(matches!(
            other.decrypt(&stored[..]).err().unwrap(),
            DecryptError::NoMatch
        ));
    }
}
