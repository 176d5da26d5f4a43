//! Session state an exclusive connection may carry past a command: an open transaction, watched
//! keys, a selected database, client tracking, subscriptions. A connection that may carry any
//! of it is closed when it is given back instead of being handed to the next borrower, who
//! would otherwise find its `SET` answered `QUEUED` and never run.

use redis::{Arg, Cmd};

/// What a command does to the connection's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing that outlives it.
    None,
    /// State that stays until the connection closes (or `RESET`): `SELECT`, `CLIENT TRACKING`,
    /// subscriptions, `MONITOR`, `HELLO`, `AUTH`, `READONLY`, ...
    Sticky,
    /// `MULTI`: a transaction is open until `EXEC` or `DISCARD`.
    Multi,
    /// `WATCH`: keys are watched until `EXEC`, `DISCARD` or `UNWATCH`.
    Watch,
    /// `EXEC` or `DISCARD`: ends the transaction and the watches.
    EndTransaction,
    /// `UNWATCH`.
    Unwatch,
    /// `RESET`: back to a fresh connection's state.
    Reset,
}

/// A command name (or other command word), upper case, on the stack (no allocation on the request path); words longer
/// than any command name come out empty.
#[derive(Clone, Copy, Debug)]
pub struct Word {
    buf: [u8; 24],
    len: usize,
}

impl Word {
    /// The word `b`, upper case.
    #[must_use]
    pub fn of(b: &[u8]) -> Self {
        let mut w = Word {
            buf: [0; 24],
            len: 0,
        };
        if b.len() <= w.buf.len() {
            w.buf[..b.len()].copy_from_slice(b);
            w.buf[..b.len()].make_ascii_uppercase();
            w.len = b.len();
        }
        w
    }

    /// Its bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl PartialEq<[u8]> for Word {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

fn word(arg: Option<Arg<&[u8]>>) -> Word {
    match arg {
        Some(Arg::Simple(b)) => Word::of(b),
        _ => Word::of(b""),
    }
}

/// The effect of `cmd` on its connection's session.
pub(crate) fn effect(cmd: &Cmd) -> Effect {
    let mut args = cmd.args_iter();
    let name = word(args.next());
    effect_of(name.as_slice(), || word(args.next()))
}

/// The effect of the command named `name` (upper case); `second` reads its next word, only for
/// the commands whose effect depends on it.
fn effect_of(name: &[u8], second: impl FnOnce() -> Word) -> Effect {
    match name {
        b"MULTI" => Effect::Multi,
        b"WATCH" => Effect::Watch,
        b"EXEC" | b"DISCARD" => Effect::EndTransaction,
        b"UNWATCH" => Effect::Unwatch,
        b"RESET" => Effect::Reset,
        b"SELECT" | b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"MONITOR" | b"HELLO"
        | b"AUTH" | b"READONLY" | b"READWRITE" | b"SWAPDB" => Effect::Sticky,
        b"CLIENT" => match second().as_slice() {
            b"TRACKING" | b"REPLY" | b"CACHING" | b"NO-EVICT" | b"NO-TOUCH" | b"SETNAME"
            | b"SETINFO" | b"PAUSE" => Effect::Sticky,
            _ => Effect::None,
        },
        _ => Effect::None,
    }
}

/// Why `cmd` must not run on a connection shared by every caller, if it must not: it holds or
/// changes the connection's session, changes how replies are delivered, or blocks it.
#[must_use]
pub fn shared_refusal(cmd: &Cmd) -> Option<String> {
    word(cmd.args_iter().next()).shared_refusal(cmd)
}

impl Word {
    /// [`shared_refusal`] for `cmd` whose name (upper case) is `self`, already read by the
    /// caller: on every request of the redis-rs path, the rest of the command is read only
    /// for the few names where it matters.
    #[must_use]
    pub fn shared_refusal(&self, cmd: &Cmd) -> Option<String> {
        let name = self;
        let refused = match name.as_slice() {
            b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BLMPOP" | b"BZPOPMIN"
            | b"BZPOPMAX" | b"BZMPOP" | b"WAIT" | b"WAITAOF" | b"SYNC" | b"PSYNC"
            | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" | b"QUIT" => true,
            b"XREAD" | b"XREADGROUP" => xread_block(cmd).is_some(),
            other => effect_of(other, || word(cmd.args_iter().nth(1))) != Effect::None,
        };
        refused.then(|| {
            format!(
                "{} holds, changes or blocks a connection: run it on an exclusive connection \
             (RedisManager::connection() / ConnectionPool::get()), not on the shared one",
                String::from_utf8_lossy(name.as_slice())
            )
        })
    }
}

/// How long a blocking command may block (`BLPOP ... 5` blocks up to 5 s, `0` forever), so
/// its reply deadline can be its block time plus the socket timeout. `None` for a command that
/// does not block.
#[must_use]
pub fn block_time(cmd: &Cmd) -> Option<std::time::Duration> {
    let args: Vec<Vec<u8>> = cmd
        .args_iter()
        .map(|a| match a {
            Arg::Simple(b) => b.to_vec(),
            _ => Vec::new(),
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let seconds = |b: &[u8]| -> Option<f64> { std::str::from_utf8(b).ok()?.parse::<f64>().ok() };
    let forever = std::time::Duration::from_secs(u64::from(u32::MAX));
    let of_seconds = |s: f64| {
        if s <= 0.0 {
            forever
        } else {
            std::time::Duration::try_from_secs_f64(s).unwrap_or(forever)
        }
    };
    match name.as_slice() {
        // Timeout last.
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" | b"BRPOPLPUSH" | b"BLMOVE" => {
            seconds(args.last()?).map(of_seconds)
        }
        // Timeout first.
        b"BLMPOP" | b"BZMPOP" => seconds(args.get(1)?).map(of_seconds),
        // Milliseconds last.
        b"WAIT" | b"WAITAOF" => {
            let ms: u64 = std::str::from_utf8(args.last()?).ok()?.parse().ok()?;
            Some(if ms == 0 {
                forever
            } else {
                std::time::Duration::from_millis(ms)
            })
        }
        b"XREAD" | b"XREADGROUP" => {
            let ms = xread_block(cmd)?;
            Some(if ms == 0 {
                forever
            } else {
                std::time::Duration::from_millis(ms)
            })
        }
        _ => None,
    }
}

/// The `BLOCK` milliseconds of an `XREAD`/`XREADGROUP`: looked for only among its options, before
/// `STREAMS` (after `GROUP group consumer` for `XREADGROUP`), so a stream or consumer named
/// `block` is not taken for it.
fn xread_block(cmd: &Cmd) -> Option<u64> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        _ => &b""[..],
    });
    let group = match Word::of(args.next()?).as_slice() {
        b"XREAD" => false,
        b"XREADGROUP" => true,
        _ => return None,
    };
    if group {
        // GROUP group consumer
        for _ in 0..3 {
            args.next()?;
        }
    }
    while let Some(a) = args.next() {
        match Word::of(a).as_slice() {
            b"STREAMS" => return None,
            b"BLOCK" => return std::str::from_utf8(args.next()?).ok()?.parse().ok(),
            b"COUNT" => {
                args.next()?;
            }
            _ => {}
        }
    }
    None
}

/// The session a connection may carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    sticky: bool,
    multi: bool,
    watch: bool,
}

impl Session {
    /// Before sending: assume the worst until the reply says otherwise (a future dropped
    /// before its reply leaves the state unknown).
    pub(crate) fn before(&mut self, effect: Effect) {
        match effect {
            Effect::Sticky => self.sticky = true,
            Effect::Multi => self.multi = true,
            Effect::Watch => self.watch = true,
            Effect::None | Effect::EndTransaction | Effect::Unwatch | Effect::Reset => {}
        }
    }

    /// After a successful reply.
    pub(crate) fn after_ok(&mut self, effect: Effect) {
        match effect {
            Effect::EndTransaction => {
                self.multi = false;
                self.watch = false;
            }
            Effect::Unwatch if !self.multi => self.watch = false,
            Effect::Reset => *self = Session::default(),
            _ => {}
        }
    }

    /// Whether the connection may carry state into its next borrower.
    pub(crate) fn is_dirty(self) -> bool {
        self.sticky || self.multi || self.watch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(session: &mut Session, words: &[&str]) {
        let mut cmd = redis::cmd(words[0]);
        for w in &words[1..] {
            cmd.arg(*w);
        }
        let e = effect(&cmd);
        session.before(e);
        session.after_ok(e);
    }

    #[test]
    fn transactions_are_clean_once_they_end_and_sticky_state_stays() {
        let mut s = Session::default();
        run(&mut s, &["WATCH", "k"]);
        run(&mut s, &["multi"]);
        run(&mut s, &["SET", "k", "v"]);
        assert!(s.is_dirty(), "inside the transaction");
        run(&mut s, &["EXEC"]);
        assert!(!s.is_dirty(), "EXEC ends the transaction and the watch");
        run(&mut s, &["client", "tracking", "on"]);
        assert!(s.is_dirty());
        run(&mut s, &["RESET"]);
        assert!(!s.is_dirty());
        run(&mut s, &["CLIENT", "ID"]);
        assert!(!s.is_dirty());
    }

    #[test]
    fn blocking_commands_say_how_long_they_may_block() {
        use std::time::Duration;
        let c = |words: &[&str]| {
            let mut c = redis::cmd(words[0]);
            for w in &words[1..] {
                c.arg(*w);
            }
            c
        };
        assert_eq!(
            block_time(&c(&["BLPOP", "a", "b", "1.5"])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            block_time(&c(&["BLMPOP", "2", "1", "l", "LEFT"])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            block_time(&c(&["XREAD", "BLOCK", "250", "STREAMS", "s", "$"])),
            Some(Duration::from_millis(250))
        );
        assert!(block_time(&c(&["BLPOP", "a", "0"])).unwrap() > Duration::from_secs(86_400));
        assert_eq!(block_time(&c(&["GET", "k"])), None);
        assert_eq!(block_time(&c(&["XREAD", "STREAMS", "s", "0"])), None);
        assert_eq!(
            block_time(&c(&["XREAD", "STREAMS", "block", "0"])),
            None,
            "a stream named block"
        );
        assert_eq!(
            block_time(&c(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "block",
                "BLOCK",
                "500",
                "STREAMS",
                "s",
                ">"
            ])),
            Some(Duration::from_millis(500)),
            "a consumer named block"
        );
    }

    #[test]
    fn a_command_whose_reply_never_came_leaves_the_session_unknown() {
        let mut s = Session::default();
        s.before(effect(&redis::cmd("MULTI")));
        assert!(s.is_dirty());
        let mut s = Session::default();
        run(&mut s, &["MULTI"]);
        s.before(effect(&redis::cmd("EXEC"))); // no reply: the transaction may still be open
        assert!(s.is_dirty());
    }
}
