//! Fencing: a connection whose request timed out (or was abandoned mid-flight) may still carry
//! that request to Redis later, its bytes late in a slow network or a stalled proxy. If it
//! lands after newer writes made on a fresh connection, it silently overwrites them. So the
//! server-side end of every such connection is killed (`CLIENT KILL ID <id> ADDR <addr>`, its
//! identity read with `CLIENT INFO` when it was opened) before a new shared connection serves:
//! once Redis has run the kill, nothing sent on the old connection can run any more.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use resilient_redis_config::ErrorKind;

use crate::PoolError;
use crate::error::classify;

/// At most this many connections wait to be fenced; older ones are forgotten (a flapping
/// network should not grow the list without bound).
const MAX_PENDING: usize = 256;

/// Who a connection is to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    id: i64,
    addr: String,
}

impl Identity {
    /// Reads `id=` and `addr=` from a `CLIENT INFO` line.
    fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        };
        Some(Identity {
            id: field("id")?.parse().ok()?,
            addr: field("addr")?.to_owned(),
        })
    }
}

/// The connection's identity: `Ok(None)` when the server will not say (an ACL user without
/// `CLIENT INFO`, Redis before 6.2), so such a connection cannot be fenced; an error when the
/// connection did not answer in time or broke (it must not serve: it could not be fenced
/// later, though the server would have said who it is).
pub(crate) async fn identify(
    mux: &mut MultiplexedConnection,
    deadline: Duration,
) -> Result<Option<Identity>, PoolError> {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("INFO");
    match tokio::time::timeout(deadline, cmd.query_async::<String>(mux)).await {
        Ok(Ok(info)) => Ok(Identity::parse(&info)),
        Ok(Err(e)) if matches!(classify(&e), ErrorKind::Connection | ErrorKind::Timeout) => {
            Err(PoolError::Connect {
                kind: classify(&e),
                url: String::new(),
                message: format!("CLIENT INFO on a new connection: {e}"),
            })
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "CLIENT INFO refused: timed-out connections cannot be fenced");
            Ok(None)
        }
        Err(_) => Err(PoolError::Connect {
            kind: ErrorKind::Timeout,
            url: String::new(),
            message: format!("CLIENT INFO on a new connection took over {deadline:?}"),
        }),
    }
}

/// Connections to kill before a new shared connection serves.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    pending: Mutex<Vec<Identity>>,
}

impl Fence {
    /// Remembers a connection whose request may still land.
    pub(crate) fn add(&self, who: Option<&Identity>) {
        let Some(who) = who else { return };
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
        }
        pending.push(who.clone());
    }

    /// Whether any connection waits to be fenced.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    /// Kills every remembered connection through `mux`. On a connection failure the rest stay
    /// remembered and the caller must not let `mux` serve yet.
    pub(crate) async fn run(
        &self,
        mux: &mut MultiplexedConnection,
        deadline: Duration,
    ) -> Result<(), PoolError> {
        let todo = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (i, who) in todo.iter().enumerate() {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("KILL")
                .arg("ID")
                .arg(who.id)
                .arg("ADDR")
                .arg(&who.addr);
            let result = match tokio::time::timeout(deadline, cmd.query_async::<i64>(mux)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(PoolError::Command {
                    kind: classify(&e),
                    source: e,
                }),
                Err(_) => Err(PoolError::CommandTimeout(deadline)),
            };
            match result {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout) => {
                    let mut pending = self
                        .pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    pending.extend(todo[i..].iter().cloned());
                    return Err(e);
                }
                Err(e) => {
                    // Not allowed (an ACL user without CLIENT KILL): nothing to wait for.
                    tracing::warn!(error = %e, "cannot fence a timed-out connection");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Identity;

    #[test]
    fn client_info_gives_id_and_address() {
        let info = "id=42 addr=127.0.0.1:50412 laddr=127.0.0.1:6379 fd=9 name= age=0 idle=0";
        assert_eq!(
            Identity::parse(info),
            Some(Identity {
                id: 42,
                addr: "127.0.0.1:50412".into()
            })
        );
        assert_eq!(Identity::parse("laddr=1.2.3.4:5 id=7"), None, "no addr");
    }
}
