//! MQTT usernames and passwords: a file of `user:argon2-hash` lines (`smarthub passwd FILE USER`).
//! Plaintext passwords never appear in `broker.toml`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {path}, line {line}: {why}")]
    Format {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("user name `{0}`: use 1 to 64 characters without `:` or white space")]
    BadUser(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Users and their argon2 hashes.
#[derive(Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && !user.contains(':')
        && !user.contains(char::is_whitespace)
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let format_err = |why: &str| AuthError::Format {
                path: path.to_owned(),
                line: i + 1,
                why: why.into(),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format_err("expected `user:argon2-hash`"))?;
            PasswordHash::new(hash)
                .map_err(|_| format_err("not an argon2 hash (make it with `smarthub passwd`)"))?;
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(PasswordFile { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a user's password (slow on purpose: call it off the async workers).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    }
}

/// Adds or replaces `user` in the password file (created when missing).
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<(), AuthError> {
    if !valid_user(user) {
        return Err(AuthError::BadUser(user.to_owned()));
    }
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?
        .to_string();
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut out: Vec<String> = existing
        .lines()
        .filter(|l| l.split_once(':').map(|(u, _)| u) != Some(user))
        .map(str::to_owned)
        .collect();
    out.push(format!("{user}:{hash}"));
    let tmp = path.with_extension("tmp");
    let io = |source| AuthError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, out.join("\n") + "\n").map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        set_password(&path, "ha", "s3cret").unwrap();
        set_password(&path, "node", "other").unwrap();
        set_password(&path, "ha", "new").unwrap();
        let pw = PasswordFile::load(&path).unwrap();
        assert_eq!(pw.len(), 2);
        assert!(pw.verify("ha", "new"));
        assert!(!pw.verify("ha", "s3cret"));
        assert!(!pw.verify("nobody", "new"));
        assert!(!std::fs::read_to_string(&path).unwrap().contains("new"));
        assert!(matches!(
            set_password(&path, "a:b", "x"),
            Err(AuthError::BadUser(_))
        ));
    }
}
