//! Bearer tokens of the Flight port (`--auth-token-file`). The file holds
//! one token per line, optionally followed by the store-location prefixes
//! that token may write (`<token> [prefix ...]`, whitespace-separated; blank
//! lines and lines starting with `#` are skipped). A token without prefixes
//! may write wherever the node's `--allow-store` allows.
//!
//! Every Flight call must carry `authorization: Bearer <token>`; otherwise it
//! gets `Unauthenticated`. The token's prefixes travel with the request as a
//! [`Grant`] and admission refuses a put outside them with
//! `PermissionDenied`. Tokens are compared in constant time and never
//! logged (errors name the line, not the token). [`Tokens::reload`] re-reads
//! the file (on SIGHUP); a file that no longer parses keeps the old tokens.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::identity::StoreRoot;

/// Longest token file read (a list of tokens, not a data file).
const TOKEN_FILE_BYTES_MAX: u64 = 1 << 20;

/// What a valid token allows; attached to the request by [`Tokens::check`].
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Store roots the token may write under; empty: no restriction beyond
    /// the node's allowlist.
    pub prefixes: Vec<StoreRoot>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path}: larger than {TOKEN_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("token file {path} line {line}: store prefix {prefix:?}: {problem}")]
    Prefix {
        path: PathBuf,
        line: usize,
        prefix: String,
        problem: String,
    },
    #[error("token file {path}: no token in it (every call would be refused)")]
    Empty { path: PathBuf },
}

struct Entry {
    token: Vec<u8>,
    grant: Grant,
}

/// The tokens of a token file, replaced whole on reload.
pub struct Tokens {
    path: PathBuf,
    entries: RwLock<Arc<Vec<Entry>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.path)
            .field("tokens", &self.len())
            .finish()
    }
}

impl Tokens {
    /// Reads the token file; refuses a file with no token.
    pub fn load(path: impl AsRef<Path>) -> Result<Tokens, TokenFileError> {
        let path = path.as_ref().to_path_buf();
        let entries = read(&path)?;
        Ok(Tokens {
            path,
            entries: RwLock::new(Arc::new(entries)),
        })
    }

    /// Re-reads the file; on error the previous tokens stay in force.
    /// Returns how many tokens are now in force.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let entries = read(&self.path)?;
        let count = entries.len();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
        Ok(count)
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The grant of the bearer token in `authorization`, if it is one of
    /// ours. Every token is compared, each in constant time.
    pub fn grant(&self, authorization: Option<&[u8]>) -> Option<Grant> {
        let presented = authorization.and_then(bearer)?;
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut found = None;
        for entry in entries.iter() {
            if bool::from(entry.token.as_slice().ct_eq(presented)) {
                found = Some(entry.grant.clone());
            }
        }
        found
    }

    /// The interceptor's check: the request gets its [`Grant`] as an
    /// extension, or the call ends with `Unauthenticated`.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        match self.grant(header) {
            Some(grant) => {
                request.extensions_mut().insert(grant);
                Ok(request)
            }
            None => Err(Status::unauthenticated(
                "authorization: a valid \"Bearer <token>\" header is required",
            )),
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let scheme = header.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = header.get(7..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn read(path: &Path) -> Result<Vec<Entry>, TokenFileError> {
    let read_error = |source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let length = std::fs::metadata(path).map_err(read_error)?.len();
    if length > TOKEN_FILE_BYTES_MAX {
        return Err(TokenFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let entries = parse(path, &text)?;
    if entries.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(entries)
}

fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, TokenFileError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(token) = words.next() else {
            continue;
        };
        let prefixes = words
            .map(|prefix| {
                StoreRoot::parse(prefix, &Default::default()).map_err(|error| {
                    TokenFileError::Prefix {
                        path: path.to_path_buf(),
                        line: index + 1,
                        prefix: prefix.to_owned(),
                        problem: error.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.push(Entry {
            token: token.as_bytes().to_vec(),
            grant: Grant { prefixes },
        });
    }
    Ok(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        (dir, tokens)
    }

    #[test]
    fn a_listed_token_is_granted_with_its_prefixes_and_others_are_not() {
        let (_dir, tokens) = tokens("# operators\nalpha\nbeta file:///lake/a s3://bucket/x\n\n");
        assert_eq!(tokens.len(), 2);
        assert!(tokens
            .grant(Some(b"Bearer alpha"))
            .unwrap()
            .prefixes
            .is_empty());
        assert_eq!(
            tokens.grant(Some(b"bearer beta")).unwrap().prefixes.len(),
            2
        );
        assert!(tokens.grant(Some(b"Bearer alph")).is_none());
        assert!(tokens.grant(Some(b"Bearer alphaa")).is_none());
        assert!(tokens.grant(Some(b"Basic alpha")).is_none());
        assert!(tokens.grant(Some(b"Bearer ")).is_none());
        assert!(tokens.grant(None).is_none());
    }

    #[test]
    fn reload_replaces_the_tokens_and_a_bad_file_keeps_the_old_ones() {
        let (dir, tokens) = tokens("alpha\n");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "gamma\n").unwrap();
        assert_eq!(tokens.reload().unwrap(), 1);
        assert!(tokens.grant(Some(b"Bearer alpha")).is_none());
        assert!(tokens.grant(Some(b"Bearer gamma")).is_some());
        std::fs::write(&path, "delta not-a-url\n").unwrap();
        let error = tokens.reload().unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
        assert!(
            !error.contains("delta"),
            "the token is never in an error: {error}"
        );
        assert!(tokens.grant(Some(b"Bearer gamma")).is_some());
    }
}
