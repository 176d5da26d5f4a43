//! `resilient-redis config`: the effective configuration and each value's origin.

use resilient_redis_config::{ConfigLoader, Origin};

pub(crate) fn run() -> bool {
    let loaded = match ConfigLoader::from_process_env().load_with_origins() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    // Serialize redacts secrets; flatten to dotted paths.
    let value = match serde_json::to_value(&loaded.config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cannot show the configuration: {e}");
            return false;
        }
    };
    let mut rows = Vec::new();
    flatten(&value, "", &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, shown) in rows {
        let origin = match loaded.origin(&key) {
            Origin::Default => "default".to_owned(),
            other => other.to_string(),
        };
        println!("{key:<width$}  {shown:<28}  {origin}");
    }
    println!("\n(durations in milliseconds; secrets shown as ***)");
    true
}

fn flatten(value: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, &path, out);
            }
        }
        serde_json::Value::Null => out.push((prefix.to_owned(), "(none)".to_owned())),
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}
