//! Serde forms for durations and byte sizes.
//!
//! A duration is an integer number of milliseconds (`250`) or a string with a unit (`"250ms"`,
//! `"5s"`, `"1m 30s"`, parsed by `humantime`). A byte size is an integer number of bytes or a
//! string with a unit (`"64MiB"`, `"1 GB"`, parsed by `bytesize`). Both serialize as integers, so
//! a configuration written back out reads in again unchanged.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// `#[serde(with = "units::millis")]` for `Duration` fields.
pub(crate) mod millis {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

/// `#[serde(with = "units::bytes")]` for byte-count fields.
/// A list of URLs: a sequence, or (from an environment variable) one string of
/// comma-separated items.
pub(crate) mod url_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::RedisUrl;

    pub(crate) fn serialize<S: Serializer>(v: &[RedisUrl], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RedisUrl>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            List(Vec<String>),
            Text(String),
        }
        let items = match Either::deserialize(d)? {
            Either::List(items) => items,
            Either::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        Ok(items.into_iter().map(RedisUrl::new).collect())
    }
}

pub(crate) mod bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(BytesVisitor)
    }
}

/// Parses a duration the way configuration accepts it.
///
/// # Errors
/// The text is neither a whole number of milliseconds nor a number with a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!(
            "`{text}` is not a duration ({e}); use milliseconds (250) or a unit (\"250ms\", \"5s\")"
        )
    })
}

/// Parses a byte size the way configuration accepts it.
///
/// # Errors
/// The text is neither a whole number of bytes nor a number with a unit.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    text.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            format!("`{text}` is not a byte size ({e}); use bytes (1048576) or a unit (\"64MiB\")")
        })
}

/// Shows a duration the way a person writes it (`250ms`, `5s`).
#[must_use]
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a duration: milliseconds as an integer, or a string such as \"250ms\" or \"5s\"",
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_millis(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_millis)
            .map_err(|_| E::custom(format!("`{v}` is negative; a duration must be 0 or more")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{v}` is not a whole number of milliseconds; write \"{v}s\" for seconds"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

struct BytesVisitor;

impl Visitor<'_> for BytesVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte size: bytes as an integer, or a string such as \"64MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("`{v}` is negative; a size must be 0 or more")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_bytes(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_integers_as_millis_and_units() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        let err = parse_duration("soon").unwrap_err();
        assert!(err.contains("`soon` is not a duration"), "{err}");
    }

    #[test]
    fn byte_sizes_accept_integers_and_units() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_bytes("1 KB"), Ok(1000));
        let err = parse_bytes("lots").unwrap_err();
        assert!(err.contains("`lots` is not a byte size"), "{err}");
    }

    #[test]
    fn durations_format_for_people() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    }
}
