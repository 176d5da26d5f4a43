//! Support for resilient-redis's end-to-end and fault tests: a real `redis-server` per test on a
//! free loopback port ([`RedisServer`]) and a fault-injecting TCP proxy in front of it
//! ([`FaultProxy`]). Nothing here uses a fixed or shared port, and every process and task it
//! starts ends when its handle is dropped. The CLI's demo starts its own server with the same
//! [`RedisServer`].
#![forbid(unsafe_code)]

mod cluster;
mod proxy;
mod server;

pub use cluster::RedisCluster;
pub use proxy::{Fault, FaultProxy};
pub use server::{RedisServer, RedisServerBuilder, free_port};
