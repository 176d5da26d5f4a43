//! Loading: defaults < TOML file < environment, with every value's origin remembered so that a
//! problem names the variable or file key it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};

use crate::error::{ConfigError, Origin, Problem};
use crate::model::RedisConfig;
use crate::secret::{REDACTED, redact_url};

/// Prefix of every environment variable this crate reads.
pub const ENV_PREFIX: &str = "REDIS_";

/// Names the TOML file to read, if any.
pub const CONFIG_FILE_VAR: &str = "REDIS_CONFIG_FILE";

/// The conventional variable names for nested fields, and the field each sets. Every field is
/// also reachable as `REDIS_<SECTION>__<FIELD>`, which wins when both are set.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("REDIS_POOL_MIN_SIZE", "pool.min_size"),
    ("REDIS_POOL_MAX_SIZE", "pool.max_size"),
    ("REDIS_HEALTH_CHECK_INTERVAL", "health.check_interval"),
    (
        "REDIS_CIRCUIT_BREAKER_THRESHOLD",
        "circuit_breaker.failure_threshold",
    ),
    ("REDIS_FALLBACK_ENABLED", "fallback.enabled"),
    ("REDIS_METRICS_ENABLED", "metrics.enabled"),
];

/// Top-level fields, set as `REDIS_<FIELD>` (`REDIS_URL`, `REDIS_CONNECT_TIMEOUT`, ...).
const TOP_LEVEL: &[&str] = &[
    "url",
    "mode",
    "sentinels",
    "master_name",
    "nodes",
    "read_from_replicas",
    "username",
    "password",
    "password_file",
    "connect_timeout",
    "socket_timeout",
    "retry_delay",
    "max_retries",
];

/// Fields whose text is taken as it is (never read as a number or boolean) and never shown.
const SECRET_FIELDS: &[&str] = &["password"];
/// Fields whose text is taken as it is (never read as a number or boolean).
const TEXT_FIELDS: &[&str] = &[
    "url",
    "username",
    "password",
    "password_file",
    "journal_path",
    "journal_key_file",
    "sentinels",
    "master_name",
    "nodes",
    "ca_file",
    "cert_file",
    "key_file",
    "server_name",
];

/// A loaded configuration and where each value that was not a default came from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Loaded {
    /// The validated configuration.
    pub config: RedisConfig,
    /// Dotted field path to where its value came from; fields absent here are defaults.
    pub origins: BTreeMap<String, Origin>,
}

impl Loaded {
    /// Where `field` (dotted path) got its value.
    #[must_use]
    pub fn origin(&self, field: &str) -> Origin {
        self.origins.get(field).cloned().unwrap_or(Origin::Default)
    }
}

/// Builds a [`RedisConfig`] from defaults, an optional TOML file and environment variables.
///
/// [`RedisConfig::load`] is `ConfigLoader::from_process_env().load()`. Tests and embedders can
/// hand in their own variables with [`ConfigLoader::with_env`], so nothing leaks between them.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl ConfigLoader {
    /// A loader reading the process environment (`REDIS_*`, and the file named by
    /// `REDIS_CONFIG_FILE` if set).
    pub fn from_process_env() -> Self {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                k.starts_with(ENV_PREFIX)
                    .then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect();
        Self::default().with_env(env)
    }

    /// Uses these variables as the environment instead of the process's. A `REDIS_CONFIG_FILE`
    /// among them names the file unless [`ConfigLoader::file`] is called.
    pub fn with_env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.env.sort();
        if self.file.is_none() {
            self.file = self
                .env
                .iter()
                .find(|(k, _)| k == CONFIG_FILE_VAR)
                .map(|(_, v)| PathBuf::from(v));
        }
        self
    }

    /// Reads this TOML file (it must exist), instead of the one `REDIS_CONFIG_FILE` names.
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        self.file = Some(path.as_ref().to_owned());
        self
    }

    /// Loads and validates.
    ///
    /// # Errors
    /// [`ConfigError::ReadFile`] / [`ConfigError::Syntax`] for an unreadable file;
    /// [`ConfigError::Invalid`] listing every value that does not parse or breaks a rule, each
    /// with its field path, its variable or file key, and its value (secrets redacted).
    pub fn load(self) -> Result<RedisConfig, ConfigError> {
        self.load_with_origins().map(|loaded| loaded.config)
    }

    /// Like [`ConfigLoader::load`], and also says where each value came from.
    ///
    /// # Errors
    /// As [`ConfigLoader::load`].
    pub fn load_with_origins(self) -> Result<Loaded, ConfigError> {
        let mut layers: Vec<Layer> = Vec::new();
        if let Some(path) = &self.file {
            layers.push(file_layer(path)?);
        }
        layers.extend(env_layers(&self.env));

        let origins: BTreeMap<String, Entry> = layers
            .iter()
            .flat_map(|layer| layer.entries.iter().map(|e| (e.field.clone(), e.clone())))
            .collect();

        // Values that do not parse are reported, and the rest of the configuration is still
        // validated (with defaults in their place) so that every problem shows at once.
        let mut problems = Vec::new();
        let mut config: RedisConfig = match merged(&layers, &[]).extract() {
            Ok(config) => config,
            Err(err) => {
                problems = parse_problems(&origins, &err);
                let bad: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
                match merged(&layers, &bad).extract() {
                    Ok(config) => config,
                    Err(_) => return Err(ConfigError::Invalid(problems)),
                }
            }
        };
        let parse_failures = problems.len();

        if config.password.is_none()
            && let Some(path) = config.password_file.clone()
        {
            match read_secret_file(&path) {
                Ok(secret) => config.password = Some(crate::Secret::new(secret)),
                Err(message) => problems.push(Problem::new(
                    "password_file",
                    Some(path.display().to_string()),
                    message,
                )),
            }
            // The file has been read; validation treats the password as set once, not twice.
            config.password_file = None;
        }
        problems.extend(config.problems());
        for problem in &mut problems[parse_failures..] {
            if let Some(entry) = origins.get(&problem.field) {
                problem.origin = entry.origin.clone();
                if problem.value.is_some() {
                    problem.value = Some(entry.shown.clone());
                }
            } else {
                problem.origin = Origin::Default;
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(Loaded {
            config,
            origins: origins.into_iter().map(|(k, e)| (k, e.origin)).collect(),
        })
    }
}

impl RedisConfig {
    /// Loads the configuration: defaults < TOML file named by `REDIS_CONFIG_FILE` < `REDIS_*`
    /// environment variables, then validates it.
    ///
    /// # Errors
    /// See [`ConfigLoader::load`].
    pub fn load() -> Result<RedisConfig, ConfigError> {
        ConfigLoader::from_process_env().load()
    }

    /// Loads with an explicit TOML file (which must exist) and the process environment.
    ///
    /// # Errors
    /// See [`ConfigLoader::load`].
    pub fn load_from(path: impl AsRef<Path>) -> Result<RedisConfig, ConfigError> {
        ConfigLoader::from_process_env().file(path).load()
    }
}

/// One value a source provided.
#[derive(Clone, Debug)]
struct Entry {
    field: String,
    origin: Origin,
    /// The value as given, for messages; secrets redacted.
    shown: String,
    value: Value,
}

/// A source: the values it sets, in order.
struct Layer {
    entries: Vec<Entry>,
}

impl Layer {
    fn new(entries: Vec<Entry>) -> Self {
        Self { entries }
    }
}

/// Defaults with every layer merged over them, leaving out the `skip`ped fields.
fn merged(layers: &[Layer], skip: &[&str]) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(RedisConfig::default()));
    for layer in layers {
        let mut dict = Dict::new();
        for entry in layer
            .entries
            .iter()
            .filter(|e| !skip.contains(&e.field.as_str()))
        {
            insert_path(&mut dict, &entry.field, entry.value.clone());
        }
        figment = figment.merge(Serialized::defaults(dict));
    }
    figment
}

fn insert_path(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = child {
                insert_path(inner, rest, value);
            }
        }
    }
}

fn shown(field: &str, raw: &str) -> String {
    let leaf = field.rsplit('.').next().unwrap_or(field);
    if SECRET_FIELDS.contains(&leaf) {
        REDACTED.to_owned()
    } else if leaf == "url" {
        redact_url(raw)
    } else {
        raw.to_owned()
    }
}

fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let data = Toml::string(&text)
        .data()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            // The parser's message quotes the offending line, which may hold a password: keep the
            // first line (location) and the last (reason).
            message: {
                let msg = e.to_string();
                let lines: Vec<&str> = msg.lines().filter(|l| !l.trim().is_empty()).collect();
                match (lines.first(), lines.last()) {
                    (Some(first), Some(last)) if lines.len() > 1 => format!("{first}: {last}"),
                    _ => msg,
                }
            },
        })?;
    let mut entries = Vec::new();
    for dict in data.into_values() {
        flatten(&dict, "", &mut |field, value| {
            let raw = match value {
                Value::String(_, s) => s.clone(),
                other => to_text(other),
            };
            entries.push(Entry {
                field: field.to_owned(),
                origin: Origin::File {
                    path: path.to_owned(),
                    key: field.to_owned(),
                },
                shown: shown(field, &raw),
                value: value.clone(),
            });
        });
    }
    Ok(Layer::new(entries))
}

fn flatten(dict: &Dict, prefix: &str, out: &mut dyn FnMut(&str, &Value)) {
    for (key, value) in dict {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Dict(_, inner) => flatten(inner, &path, out),
            other => out(&path, other),
        }
    }
}

fn to_text(value: &Value) -> String {
    match value {
        Value::String(_, s) => s.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => {
            if let Some(i) = n.to_i128() {
                i.to_string()
            } else {
                n.to_f64()
                    .map_or_else(|| format!("{n:?}"), |f| f.to_string())
            }
        }
        other => format!("{other:?}"),
    }
}

/// The environment as two layers: the conventional aliases, then `REDIS_<SECTION>__<FIELD>` and
/// `REDIS_<FIELD>` (which win over an alias for the same field).
fn env_layers(env: &[(String, String)]) -> [Layer; 2] {
    let mut aliases = Vec::new();
    let mut generic = Vec::new();
    for (var, raw) in env {
        if var == CONFIG_FILE_VAR {
            continue;
        }
        if let Some((_, field)) = ENV_ALIASES.iter().find(|(alias, _)| alias == var) {
            aliases.push(env_entry(var, field, raw));
            continue;
        }
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let field = rest.to_ascii_lowercase();
        if rest.contains("__") {
            generic.push(env_entry(var, &field.replace("__", "."), raw));
        } else if TOP_LEVEL.contains(&field.as_str()) {
            generic.push(env_entry(var, &field, raw));
        }
        // Any other REDIS_* variable (REDIS_VERSION of the official image, say) is not ours.
    }
    [Layer::new(aliases), Layer::new(generic)]
}

fn env_entry(var: &str, field: &str, raw: &str) -> Entry {
    let leaf = field.rsplit('.').next().unwrap_or(field);
    let value = if TEXT_FIELDS.contains(&leaf) {
        Value::from(raw.to_owned())
    } else {
        // Read like figment's own Env provider: `5` is a number, `true` a boolean.
        raw.parse::<Value>()
            .unwrap_or_else(|_| Value::from(raw.to_owned()))
    };
    Entry {
        field: field.to_owned(),
        origin: Origin::Env {
            var: var.to_owned(),
        },
        shown: shown(field, raw),
        value,
    }
}

/// Extraction failed: find every provided value that does not parse by trying each on its own
/// over the defaults, so all of them are reported, not just the first.
fn parse_problems(origins: &BTreeMap<String, Entry>, err: &figment::Error) -> Vec<Problem> {
    let mut problems = Vec::new();
    for entry in origins.values() {
        let mut dict = Dict::new();
        insert_path(&mut dict, &entry.field, entry.value.clone());
        let probe = Figment::from(Serialized::defaults(RedisConfig::default()))
            .merge(Serialized::defaults(dict))
            .extract::<RedisConfig>();
        if let Err(e) = probe {
            let leaf = entry.field.rsplit('.').next().unwrap_or(&entry.field);
            let message = if SECRET_FIELDS.contains(&leaf) {
                "is not valid text".to_owned()
            } else {
                describe(&e)
            };
            problems.push(Problem {
                field: entry.field.clone(),
                origin: entry.origin.clone(),
                value: Some(entry.shown.clone()),
                message,
            });
        }
    }
    if problems.is_empty() {
        // Not reached in practice: every failure comes from some provided value. Keep the
        // figment error rather than lose it.
        problems.push(Problem::new(&err.path.join("."), None, describe(err)));
    }
    problems
}

fn describe(err: &figment::Error) -> String {
    use figment::error::Kind;
    match &err.kind {
        Kind::UnknownField(field, expected) => format!(
            "is not a known setting (`{field}`); expected one of: {}",
            expected.join(", ")
        ),
        Kind::InvalidType(actual, expected) => {
            format!("has the wrong type: found {actual}, expected {expected}")
        }
        Kind::InvalidValue(actual, expected) => {
            format!("is not valid: found {actual}, expected {expected}")
        }
        other => format!("is not valid: {other}"),
    }
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read: {e}"))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(secret.to_owned())
}
