//! `resilient-redis journal inspect PATH`: what a fallback journal file holds.

use std::path::Path;

use resilient_redis_fallback::{
    DeadLetter, Entry, JournalKey, JournalReport, Op, inspect_journal_with_key,
};

/// Prints the journal's server, replay state, pending entries and dead letters. Values are
/// shown only with `show_values` (they may be sensitive); keys always are.
pub(crate) fn inspect(path: &Path, show_values: bool, key_file: Option<&Path>) -> bool {
    let key = match key_file.map(JournalKey::from_file).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    match inspect_journal_with_key(path, key.as_ref()) {
        Ok(report) => {
            print!("{}", render(&report, show_values));
            true
        }
        Err(e) => {
            eprintln!("cannot inspect the journal: {e}");
            false
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

fn describe(op: &Op, show_values: bool) -> String {
    let v = |b: &[u8]| {
        if show_values {
            format!(" {:?}", text(b))
        } else {
            format!(" ({} bytes)", b.len())
        }
    };
    match op {
        Op::Set {
            key,
            value,
            expire_at,
        } => format!(
            "SET {:?}{}{}",
            text(key),
            v(value),
            expire_at.map_or(String::new(), |d| format!(" PXAT {d}"))
        ),
        Op::Del { keys } => format!(
            "DEL {}",
            keys.iter()
                .map(|k| format!("{:?}", text(k)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Op::ExpireAt { key, at } => format!("PEXPIREAT {:?} {at}", text(key)),
        Op::IncrBy { key, delta } => format!("INCRBY {:?} {delta}", text(key)),
        Op::HSet { key, fields } => format!(
            "HSET {:?} {} fields{}",
            text(key),
            fields.len(),
            if show_values {
                fields
                    .iter()
                    .map(|(f, x)| format!(" {:?}={:?}", text(f), text(x)))
                    .collect::<String>()
            } else {
                String::new()
            }
        ),
        Op::HDel { key, fields } => format!("HDEL {:?} {} fields", text(key), fields.len()),
    }
}

fn entry_line(e: &Entry, show_values: bool) -> String {
    format!(
        "  #{:<6} at {} ms  {}\n",
        e.seq,
        e.at,
        describe(&e.op, show_values)
    )
}

fn dead_line(d: &DeadLetter, show_values: bool) -> String {
    format!(
        "{}           refused: {}\n",
        entry_line(&d.entry, show_values).trim_end(),
        d.reason
    )
}

/// The report as text.
pub(crate) fn render(r: &JournalReport, show_values: bool) -> String {
    let mut out = String::new();
    let server = if r.server.is_empty() {
        "(unknown)"
    } else {
        &r.server
    };
    out.push_str(&format!("server:        {server}\n"));
    out.push_str(&format!("instance:      {:032x}\n", r.instance));
    if r.first_format {
        out.push_str("format:        first (it is converted when a store opens it)\n");
    }
    match r.replay {
        Some((last, batches, done)) => out.push_str(&format!(
            "replay:        in progress over entries up to #{last}, {done} of {batches} batches applied\n"
        )),
        None => out.push_str("replay:        none in progress\n"),
    }
    if let Some(c) = &r.cut {
        out.push_str(&format!(
            "damage:        {} bytes from offset {} ({}); a store opening it keeps every whole record\n",
            c.dropped,
            c.offset,
            if c.truncated { "a last record cut short" } else { "checksum failure" }
        ));
    }
    out.push_str(&format!("pending:       {}\n", r.pending.len()));
    for e in &r.pending {
        out.push_str(&entry_line(e, show_values));
    }
    out.push_str(&format!("dead letters:  {}\n", r.dead_letters.len()));
    for d in &r.dead_letters {
        out.push_str(&dead_line(d, show_values));
    }
    out
}

#[cfg(test)]
mod tests {
    use resilient_redis_config::FallbackConfig;
    use resilient_redis_fallback::{FallbackStoreExt, MemoryStore, inspect_journal};

    #[test]
    fn inspect_lists_pending_writes_and_hides_values_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.journal");
        let mut c = FallbackConfig::default();
        c.journal_path = Some(path.clone());
        let store = MemoryStore::builder(&c)
            .server("cache:6379/0")
            .build()
            .unwrap();
        store.set(b"session:42", b"s3cret", None).unwrap();
        store.incr_by(b"visits", 2).unwrap();
        let report = inspect_journal(&path).unwrap();
        let hidden = super::render(&report, false);
        assert!(hidden.contains("server:        cache:6379/0"), "{hidden}");
        assert!(hidden.contains("pending:       2"), "{hidden}");
        assert!(
            hidden.contains("session:42") && hidden.contains("(6 bytes)"),
            "{hidden}"
        );
        assert!(!hidden.contains("s3cret"), "{hidden}");
        assert!(hidden.contains("INCRBY \"visits\" 2"), "{hidden}");
        assert!(super::render(&report, true).contains("s3cret"));
    }

    #[test]
    fn a_sealed_journal_is_inspected_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.journal");
        let key = dir.path().join("journal.key");
        std::fs::write(&key, "7f".repeat(32)).unwrap();
        let mut c = FallbackConfig::default();
        c.journal_path = Some(path.clone());
        c.journal_key_file = Some(key.clone());
        let store = MemoryStore::builder(&c).build().unwrap();
        store.set(b"session:42", b"s3cret", None).unwrap();
        assert!(super::inspect(&path, false, Some(&key)));
        assert!(
            !super::inspect(&path, false, None),
            "sealed: no key, no report"
        );
        let wrong = dir.path().join("wrong.key");
        std::fs::write(&wrong, "00".repeat(32)).unwrap();
        assert!(!super::inspect(&path, false, Some(&wrong)));
    }
}
