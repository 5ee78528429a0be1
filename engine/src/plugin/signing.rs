//! Signed plugins: an ed25519 signature over the component bytes, in a detached file
//! `<plugin>.wasm.sig`. Keys and signatures are stored as hex text. The embedded capability
//! manifest is part of the bytes, so a signature also vouches for what the plugin may ask for.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid {what} (expected {len} bytes as hex)")]
    Format { path: PathBuf, what: &'static str, len: usize },
    #[error("no random numbers available: {0}")]
    Random(String),
}

/// What we know about a plugin's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// No `.sig` file next to the plugin.
    Unsigned,
    /// Signed by this trusted key (hex).
    Trusted { key: String },
    /// A signature exists but no trusted key was given to check it against.
    Unverified,
    /// A signature exists and matches none of the trusted keys (or is malformed).
    Invalid { reason: String },
}

impl std::fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureStatus::Unsigned => f.write_str("unsigned"),
            SignatureStatus::Trusted { key } => write!(f, "signed by trusted key {key}"),
            SignatureStatus::Unverified => f.write_str("signed (not verified: no trusted key given)"),
            SignatureStatus::Invalid { reason } => write!(f, "INVALID signature: {reason}"),
        }
    }
}

pub fn signature_path(plugin: &Path) -> PathBuf {
    let mut s = plugin.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Read a whole file that must be a regular file. Opened non-blocking, so a FIFO (or a device)
/// put where a plugin or a signature should be is refused at once instead of hanging the load or
/// serving different bytes to each reader.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_hex<const N: usize>(path: &Path, what: &'static str) -> Result<[u8; N], SignError> {
    let text = read_regular_file(path)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
        .map_err(|source| SignError::Read { path: path.into(), source })?;
    let bytes = hex::decode(text.trim()).map_err(|_| SignError::Format { path: path.into(), what, len: N })?;
    bytes.try_into().map_err(|_| SignError::Format { path: path.into(), what, len: N })
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SignError> {
    let bytes = read_hex::<32>(path, "ed25519 public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SignError::Format { path: path.into(), what: "ed25519 public key", len: 32 })
}

pub fn read_secret_key(path: &Path) -> Result<SigningKey, SignError> {
    Ok(SigningKey::from_bytes(&read_hex::<32>(path, "ed25519 secret key")?))
}

/// Create a key pair: `<stem>.key` (secret, mode 0600) and `<stem>.pub`.
pub fn generate_keypair(stem: &Path) -> Result<(PathBuf, PathBuf), SignError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SignError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let secret = stem.with_extension("key");
    let public = stem.with_extension("pub");
    fn write_err(path: &Path) -> impl Fn(std::io::Error) -> SignError + '_ {
        move |source| SignError::Write { path: path.into(), source }
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&secret).map_err(write_err(&secret))?;
    writeln!(f, "{}", hex::encode(key.to_bytes())).map_err(write_err(&secret))?;
    std::fs::write(&public, format!("{}\n", hex::encode(key.verifying_key().to_bytes()))).map_err(write_err(&public))?;
    Ok((secret, public))
}

/// Sign `plugin` and write `<plugin>.sig`.
pub fn sign_file(plugin: &Path, key: &SigningKey) -> Result<PathBuf, SignError> {
    let bytes = std::fs::read(plugin).map_err(|source| SignError::Read { path: plugin.into(), source })?;
    let sig = key.sign(&bytes);
    let path = signature_path(plugin);
    std::fs::write(&path, format!("{}\n", hex::encode(sig.to_bytes())))
        .map_err(|source| SignError::Write { path: path.clone(), source })?;
    Ok(path)
}

/// Check the detached signature of `plugin` (whose bytes are `bytes`) against `trusted`.
pub fn check(plugin: &Path, bytes: &[u8], trusted: &[VerifyingKey]) -> SignatureStatus {
    let sig_path = signature_path(plugin);
    if !sig_path.exists() {
        return SignatureStatus::Unsigned;
    }
    if trusted.is_empty() {
        return SignatureStatus::Unverified;
    }
    let sig = match read_hex::<64>(&sig_path, "ed25519 signature") {
        Ok(b) => Signature::from_bytes(&b),
        Err(e) => return SignatureStatus::Invalid { reason: e.to_string() },
    };
    match trusted.iter().find(|k| k.verify(bytes, &sig).is_ok()) {
        Some(k) => SignatureStatus::Trusted { key: hex::encode(k.to_bytes()) },
        None => {
            SignatureStatus::Invalid { reason: format!("{} does not match the plugin's bytes under any trusted key", sig_path.display()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_detect_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate_keypair(&dir.path().join("vendor")).unwrap();
        let plugin = dir.path().join("p.wasm");
        std::fs::write(&plugin, b"component bytes").unwrap();
        assert_eq!(check(&plugin, b"component bytes", &[]), SignatureStatus::Unsigned);
        sign_file(&plugin, &read_secret_key(&secret).unwrap()).unwrap();
        let key = read_public_key(&public).unwrap();
        assert!(matches!(check(&plugin, b"component bytes", &[key]), SignatureStatus::Trusted { .. }));
        assert!(matches!(check(&plugin, b"component bytez", &[key]), SignatureStatus::Invalid { .. }));
        assert_eq!(check(&plugin, b"component bytes", &[]), SignatureStatus::Unverified);
        let (_, other) = generate_keypair(&dir.path().join("other")).unwrap();
        assert!(matches!(check(&plugin, b"component bytes", &[read_public_key(&other).unwrap()]), SignatureStatus::Invalid { .. }));
    }

    #[test]
    fn secret_key_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = generate_keypair(&dir.path().join("k")).unwrap();
        assert_eq!(std::fs::metadata(secret).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
