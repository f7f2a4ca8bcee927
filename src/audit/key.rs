//! Ed25519 signing keys: PKCS#8 PEM files, key ids, generation.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Signs audit records.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A key could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// File I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not an Ed25519 key in the expected PEM form.
    #[error("{}: not an Ed25519 {what} in PEM form ({detail})", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// "PKCS#8 private key" or "public key".
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// Refusing to overwrite.
    #[error("{} already exists; refusing to overwrite a key", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// No randomness.
    #[error("no system randomness: {0}")]
    Random(String),
}

/// First 16 hex digits of the SHA-256 of the raw 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

impl Signer {
    /// Loads a PKCS#8 PEM private key.
    pub fn load(path: &Path) -> Result<Signer, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Format {
            path: path.to_path_buf(),
            what: "PKCS#8 private key",
            detail: e.to_string(),
        })?;
        Ok(Signer::new(key))
    }

    /// Wraps a key.
    pub fn new(key: SigningKey) -> Signer {
        let key_id = key_id(&key.verifying_key());
        Signer { key, key_id }
    }

    /// The key id records carry.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Lowercase hex Ed25519 signature of `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> String {
        hex::encode(self.key.sign(bytes).to_bytes())
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

/// Loads a public key (SPKI PEM).
pub fn load_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        what: "public key",
        detail: e.to_string(),
    })
}

/// Writes `signing.pem` (private, mode 0600) and `signing.pub.pem` into
/// `dir`; returns their paths and the key id.
pub fn generate(dir: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let private = dir.join("signing.pem");
    let public = dir.join("signing.pub.pem");
    for p in [&private, &public] {
        if p.exists() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (RFC 8410, no embedded public key): ed25519-dalek's own
    // encoder writes v2, which OpenSSL 3.0 and Python's `cryptography` reject.
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = v1
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    write_private(&private, pem.as_bytes()).map_err(io(&private))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    std::fs::write(&public, public_pem).map_err(io(&public))?;
    Ok((private, public, key_id(&key.verifying_key())))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_round_trips_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, id) = generate(dir.path()).unwrap();
        let signer = Signer::load(&private).unwrap();
        assert_eq!(signer.key_id(), id);
        assert_eq!(id.len(), 16);
        assert_eq!(load_public(&public).unwrap(), signer.verifying_key());
        assert!(matches!(generate(dir.path()), Err(KeyError::Exists { .. })));
    }
}
