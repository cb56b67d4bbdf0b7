//! Pooled HTTP clients to upstreams.
//!
//! Plain-text HTTP/1.1 clusters, the common case, use the per-endpoint
//! pools of `connpool` (kept here too, so that they survive snapshot
//! swaps). HTTPS and HTTP/2 clusters use hyper-util's client: one per
//! (protocol, connect timeout) pair, kept across
//! snapshot swaps so that pooled keep-alive connections survive
//! configuration changes. Each client speaks plain HTTP and HTTPS (rustls,
//! system roots); HTTP/2 clusters use prior knowledge over clear text and
//! ALPN over TLS.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Body of a request sent upstream: the client's body streamed through, or
/// a buffered copy that can be sent again on retry.
pub type UpstreamBody = Either<crate::body::RequestBody, Full<Bytes>>;

/// A pooled client.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    http2: bool,
    connect_timeout_ms: u64,
}

/// The set of pooled clients, shared by all snapshots.
#[derive(Default)]
pub struct Clients {
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
    /// Connections of plain-text HTTP/1.1 clusters.
    pub pools: crate::connpool::Pools,
    tls: Mutex<Option<Arc<rustls::ClientConfig>>>,
}

impl Clients {
    /// The client for a protocol and connect timeout, created on first use.
    /// Called while building a table, never on the request path.
    pub fn get(&self, http2: bool, connect_timeout: Duration) -> HttpClient {
        let key = ClientKey {
            http2,
            connect_timeout_ms: u64::try_from(connect_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let client = self.build(key);
        clients.insert(key, client.clone());
        client
    }

    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        let mut tls = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = tls.as_ref() {
            return config.clone();
        }
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs_load();
        for cert in native {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(rustls::DEFAULT_VERSIONS)
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| unreachable_config())
            });
        let config = Arc::new(config);
        *tls = Some(config.clone());
        config
    }

    fn build(&self, key: ClientKey) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(key.connect_timeout_ms)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = (*self.tls_config()).clone();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if key.http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .retry_canceled_requests(true)
            .set_host(false);
        if key.http2 {
            client.http2_only(true);
        }
        client.build(connector)
    }
}

fn rustls_native_certs_load() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let result = rustls_native_certs::load_native_certs();
    for error in &result.errors {
        tracing::debug!(%error, "skipping a system root certificate");
    }
    result.certs
}

/// A client configuration with no roots: used only if the ring provider
/// refuses the default protocol versions, which it does not; kept so that
/// building a client can never panic.
fn unreachable_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}
