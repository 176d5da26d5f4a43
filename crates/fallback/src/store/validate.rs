//! What Redis would refuse at replay is refused at the call.

use super::*;

pub(super) fn invalid(reason: impl Into<String>) -> FallbackError {
    FallbackError::InvalidWrite {
        reason: reason.into(),
    }
}

/// Refuses what Redis would refuse when the write is replayed, so that no acknowledged write
/// can fail its replay for its shape.
pub(super) fn validate(op: &Op) -> Result<(), FallbackError> {
    let bulk = |what: &str, b: &[u8]| {
        if b.len() > MAX_BULK_LEN {
            Err(invalid(format!(
                "{what} of {} bytes is longer than Redis accepts ({MAX_BULK_LEN} bytes)",
                b.len()
            )))
        } else {
            Ok(())
        }
    };
    let deadline = |at: u64| {
        if at > MAX_DEADLINE_MS {
            Err(invalid(format!(
                "ttl ends at Unix time {at} ms, past the latest Redis accepts ({MAX_DEADLINE_MS} ms)"
            )))
        } else {
            Ok(())
        }
    };
    match op {
        Op::Set {
            key,
            value,
            expire_at,
        } => {
            bulk("key", key)?;
            bulk("value", value)?;
            expire_at.map_or(Ok(()), deadline)
        }
        Op::Del { keys } => {
            if keys.is_empty() {
                return Err(invalid("keys: DEL needs at least one key"));
            }
            keys.iter().try_for_each(|k| bulk("key", k))
        }
        Op::ExpireAt { key, at } => {
            bulk("key", key)?;
            deadline(*at)
        }
        Op::IncrBy { key, .. } => bulk("key", key),
        Op::HSet { key, fields } => {
            bulk("key", key)?;
            if fields.is_empty() {
                return Err(invalid("fields: HSET needs at least one field"));
            }
            fields
                .iter()
                .try_for_each(|(f, v)| bulk("field", f).and_then(|()| bulk("value", v)))
        }
        Op::HDel { key, fields } => {
            bulk("key", key)?;
            if fields.is_empty() {
                return Err(invalid("fields: HDEL needs at least one field"));
            }
            fields.iter().try_for_each(|f| bulk("field", f))
        }
    }
}
