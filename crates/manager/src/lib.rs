#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod adapters;
mod api;
pub mod audit;
mod builder;
mod compat;
mod error;
#[cfg(feature = "axum")]
pub mod http;
mod manager;
mod recovery;
mod recycle;
pub mod replay;
mod report;
mod request;
mod slots;

pub use adapters::{ClusterProbe, PoolProbe, server_identity};
pub use api::{RedisApi, RedisApiExt, Served, ServedBy};
pub use builder::RedisManagerBuilder;
pub use compat::ManagedConnection;
pub use error::{AMBIGUOUS_CODE, Error, FALLBACK_CODE, Source, UNAVAILABLE_CODE};
pub use manager::RedisManager;
pub use replay::RedisSyncTarget;
pub use report::{HealthReport, Verdict};
pub use request::CallOptions;

#[cfg(any(test, feature = "mock"))]
pub use api::MockRedisApi;

// Re-exported so applications need one dependency.
pub use resilient_redis_config::{ConfigError, ErrorKind, RedisConfig};
pub use resilient_redis_fallback::Ttl;
