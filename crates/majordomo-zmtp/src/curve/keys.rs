//! CURVE keys: 32 octets, written in Z85 (RFC 32) as 40 characters, stored in czmq's certificate
//! files.
//!
//! A certificate pair is what `zcert_save` writes: `NAME` holds the public key, `NAME_secret`
//! both keys, in ZPL text under a `curve` section:
//!
//! ```text
//! metadata
//! curve
//!     public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//!     secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crypto_box::aead::rand_core::CryptoRngCore;
use crypto_box::aead::OsRng;

use super::KEY;

/// A problem with a key or a certificate file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 40 characters of Z85.
    #[error("not a Z85 CURVE key (40 characters of RFC 32's alphabet): {0:?}")]
    Z85(String),
    /// A certificate file could not be read or written.
    #[error("cannot read or write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file without the key asked for.
    #[error("{path}: no {what} under `curve` (a czmq certificate, as `majordomo keygen` writes)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// `public-key` or `secret-key`.
        what: &'static str,
    },
    /// A certificate file whose secret key does not give its public key.
    #[error("{path}: the secret key does not match the public key")]
    Mismatch {
        /// The file.
        path: PathBuf,
    },
}

/// A CURVE public key. Shown in Z85.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CurvePublicKey([u8; KEY]);

impl CurvePublicKey {
    /// The key with these bytes.
    pub const fn from_bytes(bytes: [u8; KEY]) -> Self {
        Self(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; KEY] {
        &self.0
    }

    /// Its 40 characters of Z85.
    pub fn to_z85(&self) -> String {
        z85::encode(self.0)
    }

    /// The first 8 characters of its Z85: enough to tell keys apart in logs.
    pub fn prefix(&self) -> String {
        self.to_z85()[..8].to_string()
    }

    /// Reads 40 characters of Z85.
    pub fn from_z85(text: &str) -> Result<Self, KeyError> {
        decode(text).map(Self)
    }

    /// Reads a certificate file's `public-key` (either file of a pair will do).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read(path)?;
        let public = field(&text, "public-key").ok_or_else(|| KeyError::Missing {
            path: path.into(),
            what: "public-key",
        })?;
        Self::from_z85(&public)
    }

    pub(crate) fn to_box_key(self) -> crypto_box::PublicKey {
        crypto_box::PublicKey::from(self.0)
    }
}

impl fmt::Display for CurvePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl fmt::Debug for CurvePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CurvePublicKey({})", self.to_z85())
    }
}

impl FromStr for CurvePublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::from_z85(text)
    }
}

/// A CURVE key pair. Its `Debug` shows the public key only.
#[derive(Clone)]
pub struct CurveKeyPair {
    public: CurvePublicKey,
    secret: crypto_box::SecretKey,
}

impl fmt::Debug for CurveKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurveKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl CurveKeyPair {
    /// A new pair from the operating system's random source.
    pub fn generate() -> Self {
        Self::generate_with(&mut OsRng)
    }

    /// A new pair from `rng`.
    pub fn generate_with(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_secret(crypto_box::SecretKey::generate(rng))
    }

    /// The pair whose secret key has these bytes.
    pub fn from_secret_bytes(bytes: [u8; KEY]) -> Self {
        Self::from_secret(crypto_box::SecretKey::from(bytes))
    }

    /// The pair whose secret key is these 40 characters of Z85.
    pub fn from_secret_z85(text: &str) -> Result<Self, KeyError> {
        decode(text).map(Self::from_secret_bytes)
    }

    fn from_secret(secret: crypto_box::SecretKey) -> Self {
        Self {
            public: CurvePublicKey(secret.public_key().to_bytes()),
            secret,
        }
    }

    /// A pair that claims `public` but holds `holder`'s secret key: what a forger has.
    #[cfg(test)]
    pub(crate) fn forged(public: CurvePublicKey, holder: &CurveKeyPair) -> Self {
        Self {
            public,
            secret: holder.secret.clone(),
        }
    }

    /// The public key.
    pub fn public(&self) -> CurvePublicKey {
        self.public
    }

    /// The secret key in Z85: for writing a certificate, never for logs.
    pub fn secret_z85(&self) -> String {
        z85::encode(self.secret.to_bytes())
    }

    pub(crate) fn secret(&self) -> &crypto_box::SecretKey {
        &self.secret
    }

    /// Reads a secret certificate file (`NAME_secret`), checking that its keys belong together.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read(path)?;
        let secret = field(&text, "secret-key").ok_or_else(|| KeyError::Missing {
            path: path.into(),
            what: "secret-key",
        })?;
        let pair = Self::from_secret_z85(&secret)?;
        if let Some(public) = field(&text, "public-key") {
            if CurvePublicKey::from_z85(&public)? != pair.public {
                return Err(KeyError::Mismatch { path: path.into() });
            }
        }
        Ok(pair)
    }

    /// Writes the pair as czmq's `zcert_save` does: `path` with the public key and
    /// `path` + `_secret` with both, the latter readable by its owner only. Returns the secret
    /// file's path.
    pub fn save(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let mut secret_path = path.as_os_str().to_owned();
        secret_path.push("_secret");
        let secret_path = PathBuf::from(secret_path);
        let public = format!(
            "#   ZeroMQ CURVE Public Certificate\n\
             #   Exchange securely, or use a secure mechanism to verify the contents\n\
             #   of this file after exchange.\n\
             \n\
             metadata\n\
             curve\n    public-key = \"{}\"\n",
            self.public
        );
        let secret = format!(
            "#   ZeroMQ CURVE **Secret** Certificate\n\
             #   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\
             \n\
             metadata\n\
             curve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
            self.public,
            self.secret_z85()
        );
        write(path, &public, 0o644)?;
        write(&secret_path, &secret, 0o600)?;
        Ok(secret_path)
    }
}

fn decode(text: &str) -> Result<[u8; KEY], KeyError> {
    let text = text.trim();
    let invalid = || KeyError::Z85(text.chars().take(48).collect());
    if text.len() != 40 {
        return Err(invalid());
    }
    let bytes = z85::decode(text).map_err(|_| invalid())?;
    bytes.try_into().map_err(|_| invalid())
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| KeyError::Io {
        path: path.into(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// The value of `name` in the `curve` section of a ZPL certificate: a line indented one level
/// below `curve`, `name = "value"` (quotes optional). Lines starting with `#` are comments; `#`
/// elsewhere is part of a value (it is a Z85 character).
fn field(text: &str, name: &str) -> Option<String> {
    let mut in_curve = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if !indented {
            in_curve = trimmed == "curve";
            continue;
        }
        if !in_curve {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        if key.trim() == name {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            return Some(value.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_32_test_vector() {
        // RFC 32's example: these 8 bytes are "HelloWorld".
        let bytes = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(z85::encode(bytes), "HelloWorld");
    }

    #[test]
    fn keys_round_trip_through_z85_and_bad_text_is_refused() {
        let pair = CurveKeyPair::generate();
        let text = pair.public().to_z85();
        assert_eq!(text.len(), 40);
        assert_eq!(CurvePublicKey::from_z85(&text).unwrap(), pair.public());
        let again = CurveKeyPair::from_secret_z85(&pair.secret_z85()).unwrap();
        assert_eq!(again.public(), pair.public());
        for bad in [
            "",
            "short",
            &text[..39],
            &format!("{text}x"),
            &text.replace(&text[..1], "\""),
        ] {
            assert!(CurvePublicKey::from_z85(bad).is_err(), "{bad:?}");
        }
        assert!(!format!("{pair:?}").contains(&pair.secret_z85()));
    }

    #[test]
    fn libzmq_known_pair() {
        // The server pair in libzmq's test_security_curve.cpp.
        let pair =
            CurveKeyPair::from_secret_z85("JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6").unwrap();
        assert_eq!(
            pair.public().to_z85(),
            "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
        );
    }

    #[test]
    fn certificates_are_written_as_czmq_does_and_read_back() {
        let dir = std::env::temp_dir().join(format!("majordomo-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server");
        let pair = CurveKeyPair::generate();
        let secret_path = pair.save(&path).unwrap();
        assert_eq!(secret_path, dir.join("server_secret"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(CurvePublicKey::load(&path).unwrap(), pair.public());
        assert_eq!(CurvePublicKey::load(&secret_path).unwrap(), pair.public());
        assert_eq!(
            CurveKeyPair::load(&secret_path).unwrap().public(),
            pair.public()
        );
        assert!(matches!(
            CurveKeyPair::load(&path),
            Err(KeyError::Missing {
                what: "secret-key",
                ..
            })
        ));
        // A certificate as czmq writes it, with its header comments and a `#` inside a key.
        let czmq = "#   ****  Generated on 2026-12-06 by CZMQ  ****\n\
                    #   ZeroMQ CURVE **Secret** Certificate\n\n\
                    metadata\n    name = \"x\"\n\
                    curve\n    public-key = \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"\n    \
                    secret-key = \"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6\"\n";
        std::fs::write(&path, czmq).unwrap();
        assert_eq!(
            CurveKeyPair::load(&path).unwrap().public().to_z85(),
            "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
        );
        let mismatched = czmq.replace("rq:rM", "rq:rN");
        std::fs::write(&path, mismatched).unwrap();
        assert!(matches!(
            CurveKeyPair::load(&path),
            Err(KeyError::Mismatch { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
