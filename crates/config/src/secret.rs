//! Values that carry credentials and never print them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every redacted secret prints as.
pub const REDACTED: &str = "***";

/// A secret string (a password). `Debug`, `Display` and `Serialize` print `***`; only
/// [`Secret::expose`] gives the text, so a secret cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret text, for handing to the Redis client. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// The address of a Redis server: `redis://`, `rediss://` (TLS), `unix://` or `redis+unix://`.
///
/// The URL may carry a user and password (`redis://user:pass@host:6379/0`). `Debug`, `Display`
/// and `Serialize` print it with the password replaced by `***`; [`RedisUrl::expose`] gives the
/// full text for the client. Parsing is checked by [`crate::RedisConfig::validate`], not here, so
/// that every problem of a configuration is reported at once.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

/// URL schemes [`RedisUrl`] accepts.
pub const URL_SCHEMES: [&str; 4] = ["redis", "rediss", "unix", "redis+unix"];

impl RedisUrl {
    /// Wraps a URL without checking it (see [`RedisUrl::check`]).
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The full URL including any password, for handing to the Redis client. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password (in the authority or a `pass`/`password` query parameter)
    /// replaced by `***`. Text that does not parse as a URL is shown up to any `@`, so a
    /// malformed URL with a password still does not leak it.
    #[must_use]
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Checks the URL: it parses, its scheme is one of [`URL_SCHEMES`], a TCP URL names a
    /// host and a Unix URL names a socket path. Returns the problem in words.
    pub fn check(&self) -> Result<(), String> {
        let parsed = url::Url::parse(&self.0).map_err(|e| format!("is not a valid URL ({e})"))?;
        match parsed.scheme() {
            "redis" | "rediss" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err("names no host (expected redis://host:port)".into());
                }
                if let Some(db) = parsed.path().strip_prefix('/').filter(|p| !p.is_empty())
                    && db.parse::<u16>().is_err()
                {
                    return Err(format!("has database `{db}`, which is not a number"));
                }
                Ok(())
            }
            "unix" | "redis+unix" => {
                if parsed.path().is_empty() || parsed.path() == "/" {
                    return Err("names no socket path (expected unix:///path/to/redis.sock)".into());
                }
                Ok(())
            }
            other => Err(format!(
                "has scheme `{other}`; expected one of {}",
                URL_SCHEMES.map(|s| format!("{s}://")).join(", ")
            )),
        }
    }

    /// Whether the URL carries credentials: a user or a password in its authority, or a
    /// `pass`/`password` query parameter.
    #[must_use]
    pub fn has_credentials(&self) -> bool {
        url::Url::parse(&self.0).is_ok_and(|u| {
            !u.username().is_empty()
                || u.password().is_some()
                || u.query_pairs().any(|(k, _)| k == "pass" || k == "password")
        })
    }

    /// The database the URL names: the path of `redis://host:6379/3`, the `db` query parameter
    /// of a Unix socket URL; 0 when it names none or does not parse.
    #[must_use]
    pub fn db(&self) -> i64 {
        let Ok(u) = url::Url::parse(&self.0) else {
            return 0;
        };
        let text = match u.scheme() {
            "redis" | "rediss" => u.path().trim_start_matches('/').to_owned(),
            _ => u
                .query_pairs()
                .find(|(k, _)| k == "db")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default(),
        };
        text.parse().unwrap_or(0)
    }

    /// Whether the URL asks for TLS (`rediss://`).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }
}

impl Default for RedisUrl {
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379")
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(RedisUrl)
    }
}

/// Redacts the password of any URL-like text.
pub(crate) fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) => {
            let has_secret_query = parsed
                .query_pairs()
                .any(|(k, _)| k == "pass" || k == "password");
            if parsed.password().is_none() && !has_secret_query {
                // Nothing to hide: show it exactly as given.
                return text.to_owned();
            }
            if parsed.password().is_some() {
                // Cannot fail: a URL that has a password can carry one.
                let _ = parsed.set_password(Some(REDACTED));
            }
            if has_secret_query {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "pass" || k == "password" {
                            REDACTED.to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        // Not a URL: keep what cannot be a credential. Everything before the last `@` may be.
        Err(_) => match text.rfind('@') {
            Some(at) => match text.find("://") {
                Some(scheme_end) if scheme_end < at => {
                    format!("{}://{REDACTED}{}", &text[..scheme_end], &text[at..])
                }
                _ => format!("{REDACTED}{}", &text[at..]),
            },
            None => text.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn url_password_is_redacted_in_debug_and_display() {
        let url = RedisUrl::new("redis://u:hunter2@h:6379/0");
        assert_eq!(url.to_string(), "redis://u:***@h:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.expose(), "redis://u:hunter2@h:6379/0");
    }

    #[test]
    fn url_password_in_query_is_redacted() {
        let url = RedisUrl::new("redis+unix:///tmp/r.sock?db=1&pass=hunter2");
        let shown = url.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db=1"), "{shown}");
    }

    #[test]
    fn malformed_url_with_password_is_redacted() {
        let shown = RedisUrl::new("redis://u:hunter2@[bad:6379").to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.starts_with("redis://***@"), "{shown}");
    }

    #[test]
    fn url_check_accepts_every_documented_scheme() {
        for ok in [
            "redis://localhost:6379",
            "rediss://user:pw@cache.example:6380/2",
            "unix:///var/run/redis.sock",
            "redis+unix:///var/run/redis.sock?db=3",
        ] {
            assert_eq!(RedisUrl::new(ok).check(), Ok(()), "{ok}");
        }
    }

    #[test]
    fn url_check_names_the_problem() {
        let scheme = RedisUrl::new("http://x").check().unwrap_err();
        assert!(scheme.contains("scheme `http`"), "{scheme}");
        let garbage = RedisUrl::new("not a url").check().unwrap_err();
        assert!(garbage.contains("not a valid URL"), "{garbage}");
        let db = RedisUrl::new("redis://h:6379/abc").check().unwrap_err();
        assert!(db.contains("database `abc`"), "{db}");
        let sock = RedisUrl::new("unix://").check().unwrap_err();
        assert!(sock.contains("socket path"), "{sock}");
    }
}
