#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod error;
mod kind;
#[cfg(feature = "load")]
mod load;
mod model;
mod secret;
mod status;
pub mod units;
mod validate;

pub use error::{ConfigError, Origin, Problem};
pub use kind::ErrorKind;
#[cfg(feature = "load")]
pub use load::{CONFIG_FILE_VAR, ConfigLoader, ENV_ALIASES, ENV_PREFIX, Loaded};
pub use model::{
    CircuitBreakerConfig, FallbackConfig, HealthConfig, MetricsConfig, Mode, PoolConfig,
    RedisConfig, SlidingWindowType, TlsConfig, UnknownKeys,
};
pub use secret::{REDACTED, RedisUrl, Secret, URL_SCHEMES};
pub use status::PoolStatus;
pub use validate::{
    CONNECT_TIMEOUT_RANGE, MAX_COUNT, MAX_DURATION, MAX_FALLBACK_MEMORY, MAX_HALF_OPEN_CALLS,
    MAX_POOL_SIZE, MAX_RETRIES_LIMIT, MAX_SLIDING_WINDOW_SIZE,
};
