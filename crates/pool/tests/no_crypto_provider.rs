//! A `rediss://` URL in a process that installed no rustls crypto provider (and without the
//! `ring-provider` feature): a clear `Tls` error naming the fix, at build, not a panic deep in
//! rustls. Its own test binary: a provider, once installed, stays for the process.

use resilient_redis_config::{ErrorKind, RedisConfig, RedisUrl};

#[cfg(not(feature = "ring-provider"))]
#[test]
fn tls_without_a_crypto_provider_is_a_tls_error_naming_the_fix() {
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    let mut config = RedisConfig::default();
    config.url = RedisUrl::new("rediss://127.0.0.1:6380");
    let err = resilient_redis_pool::redis_client(&config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("ring-provider"), "{err}");
    assert!(err.to_string().contains("install_default"), "{err}");
}

#[cfg(feature = "ring-provider")]
#[test]
fn tls_with_the_ring_provider_feature_installs_ring() {
    let mut config = RedisConfig::default();
    config.url = RedisUrl::new("rediss://127.0.0.1:6380");
    resilient_redis_pool::redis_client(&config).unwrap();
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());
}
