//! TLS termination: the certificate store and the SNI resolver.
//!
//! Certificates arrive in the snapshot as PEM (already checked by the
//! controller with `snapshot::certs::check_certificate`). When a snapshot is
//! swapped in, [`SniResolver::build`] turns them into rustls keys and
//! per-certificate server configurations, off the request path; the listener
//! then publishes the result with [`SwappableResolver::store`]. New handshakes
//! see the new certificates; established connections keep the keys they
//! negotiated with, so rotation fails no request. Each build starts an empty
//! TLS session cache, so a swap also ends session resumption (on purpose: a
//! resumed session never skips a check that the new snapshot added). Rebuild
//! only when the certificates change, not on every snapshot.
//!
//! ```text
//!  snapshot ──build──▶ SniResolver ──store──▶ SwappableResolver ◀──load── accept(io)
//!                      exact:    host   ─▶ entry                           │
//!                      wildcard: suffix ─▶ entry                           ▼
//!                      entry = certificate + key + ServerConfig ── handshake with that config
//! ```
//!
//! # Lookup
//!
//! Names are compared lowercase without a trailing dot. An exact host wins over
//! a wildcard; `*.example.com` serves exactly one extra label (`a.example.com`,
//! not `example.com` nor `a.b.example.com`). A ClientHello without SNI, or with
//! a name no certificate covers, gets no certificate at all: the handshake
//! fails with an alert. There is deliberately no default certificate, so a
//! client never sees another host's certificate (and the names on it).
//!
//! # Two ways to terminate
//!
//! * [`SwappableResolver::accept`] (preferred) reads the ClientHello first
//!   (tokio-rustls `LazyConfigAcceptor`), looks up the SNI, and runs the
//!   handshake with that certificate's own [`ServerConfig`]. This is what makes
//!   the per-host settings exact: `min_tls13` builds a TLS 1.3-only
//!   configuration and `client_ca_pem` one that requires a client certificate
//!   issued by that CA.
//! * [`server_config`] makes one shared [`ServerConfig`] around a resolver, for
//!   a plain `tokio_rustls::TlsAcceptor`. rustls chooses the protocol version
//!   before asking the resolver and does not tell it which one it chose, and a
//!   shared configuration cannot ask for client certificates for some hosts
//!   only. So in this mode a certificate with `min_tls13` or `client_ca_pem`
//!   is refused (fail closed) rather than served with weaker settings.
//!
//! Both ways offer ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3 only, with the
//! ring provider.
//!
//! # Misdirected requests
//!
//! A client may reuse a connection for another host its certificate covers
//! (HTTP/2 coalescing). [`SniResolver::matches`] tells whether a request's
//! Host is served by the same certificate entry as the connection's SNI; when
//! it is not, the proxy answers 421 Misdirected Request, so that a Host header
//! can never bypass another host's TLS settings (such as client certificates).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ConfigBuilder, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// ALPN protocols offered, in order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Resumable TLS sessions kept per [`SniResolver`] (bounded memory).
const SESSION_CACHE_SIZE: usize = 4096;

/// One certificate as the snapshot delivers it.
#[derive(Clone)]
pub struct CertSource {
    /// Server names it serves (`a.example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert_chain_pem: Vec<u8>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// Refuse TLS 1.2 for these hosts.
    pub min_tls13: bool,
    /// When set, clients must present a certificate issued by one of these
    /// PEM CA certificates.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSource")
            .field("hosts", &self.hosts)
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &format_args!("<redacted>"))
            .field("min_tls13", &self.min_tls13)
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// Why a set of certificates could not be turned into a resolver. `name` is
/// the certificate's first host (or `#index` when it has none).
#[derive(Debug, thiserror::Error)]
pub enum TlsBuildError {
    /// A certificate lists no host.
    #[error("certificate {name}: no hosts")]
    NoHosts {
        /// Which certificate.
        name: String,
    },
    /// A host is not a DNS name or a `*.` wildcard.
    #[error("certificate {name}: invalid host {host:?}: {reason}")]
    InvalidHost {
        /// Which certificate.
        name: String,
        /// The offending host.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two certificates claim the same host.
    #[error("host {host:?} is claimed by two certificates ({first} and {second})")]
    DuplicateHost {
        /// The host.
        host: String,
        /// The certificate that claimed it first.
        first: String,
        /// The certificate that claimed it again.
        second: String,
    },
    /// The certificate chain is not usable.
    #[error("certificate {name}: invalid certificate chain: {reason}")]
    InvalidCertificate {
        /// Which certificate.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not usable or does not match the certificate.
    #[error("certificate {name}: invalid private key: {reason}")]
    InvalidPrivateKey {
        /// Which certificate.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The client CA bundle is not usable.
    #[error("certificate {name}: invalid client CA certificates: {reason}")]
    InvalidClientCa {
        /// Which certificate.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the server configuration (a provider setup bug).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// One certificate, ready to serve.
struct CertEntry {
    name: String,
    certified: Arc<CertifiedKey>,
    min_tls13: bool,
    client_auth: bool,
    /// The configuration [`SniResolver::config_for`] hands out for this entry.
    config: Arc<ServerConfig>,
}

impl fmt::Debug for CertEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertEntry")
            .field("name", &self.name)
            .field("min_tls13", &self.min_tls13)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// The certificates of one snapshot, by server name. Immutable; build a new one
/// to change anything.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertEntry>>,
    /// Key: the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertEntry>>,
    /// Handed out for unknown names: its resolver finds no certificate, so
    /// rustls fails the handshake with an alert.
    reject: Arc<ServerConfig>,
    /// Set once a certificate was refused in the shared-configuration mode,
    /// so that clients cannot flood the log with that warning.
    warned_shared_mode: AtomicBool,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut exact: Vec<_> = self.exact.keys().collect();
        exact.sort();
        let mut wildcard: Vec<_> = self.wildcard.keys().collect();
        wildcard.sort();
        f.debug_struct("SniResolver")
            .field("exact", &exact)
            .field("wildcard", &wildcard)
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    /// Parses every source and indexes it by host. Any error rejects the whole
    /// set (the dataplane then keeps its last good resolver and NACKs).
    pub fn build(sources: &[CertSource]) -> Result<SniResolver, TlsBuildError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // One cache for the whole set, dropped with it: a session can only be
        // resumed under the same SNI (rustls checks), hence the same entry of
        // the same build, so it never skips a client certificate check that a
        // newer snapshot added.
        let sessions = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let mut exact: HashMap<String, Arc<CertEntry>> = HashMap::new();
        let mut wildcard: HashMap<String, Arc<CertEntry>> = HashMap::new();

        for (index, source) in sources.iter().enumerate() {
            let name = source
                .hosts
                .first()
                .map(|host| normalize(host).into_owned())
                .unwrap_or_else(|| format!("#{index}"));
            if source.hosts.is_empty() {
                return Err(TlsBuildError::NoHosts { name });
            }
            let entry = Arc::new(build_entry(&provider, &sessions, name, source)?);
            for host in &source.hosts {
                let (map, key) = match classify_host(host) {
                    Ok(HostPattern::Exact(key)) => (&mut exact, key),
                    Ok(HostPattern::Wildcard(suffix)) => (&mut wildcard, suffix),
                    Err(reason) => {
                        return Err(TlsBuildError::InvalidHost {
                            name: entry.name.clone(),
                            host: host.clone(),
                            reason,
                        })
                    }
                };
                if let Some(existing) = map.get(&key) {
                    if Arc::ptr_eq(existing, &entry) {
                        continue;
                    }
                    return Err(TlsBuildError::DuplicateHost {
                        host: host.clone(),
                        first: existing.name.clone(),
                        second: entry.name.clone(),
                    });
                }
                map.insert(key, entry.clone());
            }
        }

        let reject = config_builder(&provider, false)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate));
        Ok(SniResolver {
            exact,
            wildcard,
            reject: Arc::new(reject),
            warned_shared_mode: AtomicBool::new(false),
        })
    }

    /// Whether a certificate serves `host` (a server name, port allowed).
    pub fn covers(&self, host: &str) -> bool {
        self.lookup(strip_port(host)).is_some()
    }

    /// Whether a request whose Host is `host` (port allowed) may be served on a
    /// connection whose SNI was `sni`: both must resolve to the same
    /// certificate entry, hence the same certificate and TLS settings. When
    /// this is false the proxy answers 421 Misdirected Request.
    pub fn matches(&self, sni: &str, host: &str) -> bool {
        match (self.lookup(sni), self.lookup(strip_port(host))) {
            (Some(connection), Some(request)) => Arc::ptr_eq(connection, request),
            _ => false,
        }
    }

    /// The server configuration for a ClientHello's SNI: that certificate's
    /// own (with its minimum version and client certificate check), or one
    /// that fails the handshake when no certificate serves the name.
    pub fn config_for(&self, sni: Option<&str>) -> Arc<ServerConfig> {
        match sni.and_then(|sni| self.lookup(sni)) {
            Some(entry) => entry.config.clone(),
            None => {
                tracing::debug!(sni, "no certificate for server name");
                self.reject.clone()
            }
        }
    }

    /// Terminates TLS on `io` with this resolver's certificates; see
    /// [`SwappableResolver::accept`].
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let config = self.config_for(start.client_hello().server_name());
        start.into_stream(config).await
    }

    fn lookup(&self, name: &str) -> Option<&Arc<CertEntry>> {
        let name = normalize(name);
        if let Some(entry) = self.exact.get(name.as_ref()) {
            return Some(entry);
        }
        let (label, suffix) = name.split_once('.')?;
        if label.is_empty() || label.contains('*') {
            return None;
        }
        self.wildcard.get(suffix)
    }
}

/// The shared-configuration mode (see the module docs): serves only
/// certificates without per-host settings.
impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        let Some(entry) = sni.and_then(|sni| self.lookup(sni)) else {
            tracing::debug!(sni, "no certificate for server name");
            return None;
        };
        if entry.min_tls13 || entry.client_auth {
            if self.warned_shared_mode.swap(true, Ordering::Relaxed) {
                tracing::debug!(sni, certificate = %entry.name, "certificate refused in shared mode");
            } else {
                tracing::warn!(
                    sni,
                    certificate = %entry.name,
                    min_tls13 = entry.min_tls13,
                    client_auth = entry.client_auth,
                    "certificate refused: its TLS settings need per-host configurations \
                     (tls::SwappableResolver::accept); further refusals are logged at debug level"
                );
            }
            return None;
        }
        Some(entry.certified.clone())
    }
}

/// The listener's handle on the current [`SniResolver`]: swapped whole when a
/// snapshot changes certificates, read once per handshake without locks.
pub struct SwappableResolver(ArcSwap<SniResolver>);

impl fmt::Debug for SwappableResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SwappableResolver")
            .field(&*self.0.load())
            .finish()
    }
}

impl SwappableResolver {
    /// Starts with `initial`.
    pub fn new(initial: Arc<SniResolver>) -> Self {
        SwappableResolver(ArcSwap::new(initial))
    }

    /// Publishes `resolver` for all handshakes that start from now on.
    /// Established connections are unaffected.
    pub fn store(&self, resolver: Arc<SniResolver>) {
        self.0.store(resolver);
    }

    /// The current resolver, e.g. for [`SniResolver::matches`].
    pub fn load(&self) -> Arc<SniResolver> {
        self.0.load_full()
    }

    /// Terminates TLS on `io`: reads the ClientHello, picks the configuration
    /// of the certificate serving its SNI in the current resolver, and
    /// completes the handshake with it. Fails (after sending an alert) when no
    /// certificate serves the name, and enforces the entry's minimum version
    /// and client certificate requirement exactly.
    ///
    /// Callers should bound it with a handshake timeout.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        // Take the configuration and release the resolver before awaiting.
        let config = self.0.load().config_for(start.client_hello().server_name());
        start.into_stream(config).await
    }
}

impl ResolvesServerCert for SwappableResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().resolve(client_hello)
    }
}

/// One [`ServerConfig`] around `resolver` (an `Arc<SniResolver>` or
/// `Arc<SwappableResolver>`), for a plain `tokio_rustls::TlsAcceptor`: ALPN
/// `h2` and `http/1.1`, TLS 1.2 and 1.3, ring, no client certificates.
/// Certificates with `min_tls13` or `client_ca_pem` are refused in this mode;
/// prefer [`SwappableResolver::accept`].
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    #[allow(clippy::expect_used)]
    let builder = config_builder(&provider, false)
        // The ring provider has suites for both versions; a unit test covers it.
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let mut config = builder.with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = alpn_protocols();
    Arc::new(config)
}

fn alpn_protocols() -> Vec<Vec<u8>> {
    ALPN_PROTOCOLS.iter().map(|proto| proto.to_vec()).collect()
}

fn config_builder(
    provider: &Arc<CryptoProvider>,
    tls13_only: bool,
) -> Result<ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsBuildError> {
    let versions: &[&'static SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|err| TlsBuildError::Config(err.to_string()))
}

fn build_entry(
    provider: &Arc<CryptoProvider>,
    sessions: &Arc<ServerSessionMemoryCache>,
    name: String,
    source: &CertSource,
) -> Result<CertEntry, TlsBuildError> {
    let chain = CertificateDer::pem_slice_iter(&source.cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsBuildError::InvalidCertificate {
            name: name.clone(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsBuildError::InvalidCertificate {
            name,
            reason: "no CERTIFICATE PEM block".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&source.key_pem).map_err(|err| {
        TlsBuildError::InvalidPrivateKey {
            name: name.clone(),
            reason: err.to_string(),
        }
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|err| match err {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsBuildError::InvalidCertificate {
                name: name.clone(),
                reason: err.to_string(),
            }
        }
        other => TlsBuildError::InvalidPrivateKey {
            name: name.clone(),
            reason: other.to_string(),
        },
    })?;
    let certified = Arc::new(certified);

    let client_verifier = match &source.client_ca_pem {
        Some(pem) => Some(client_verifier(provider, &name, pem)?),
        None => None,
    };
    let builder = config_builder(provider, source.min_tls13)?;
    let builder = match client_verifier.clone() {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCertificate(certified.clone())));
    config.alpn_protocols = alpn_protocols();
    config.session_storage = sessions.clone();

    Ok(CertEntry {
        name,
        certified,
        min_tls13: source.min_tls13,
        client_auth: client_verifier.is_some(),
        config: Arc::new(config),
    })
}

fn client_verifier(
    provider: &Arc<CryptoProvider>,
    name: &str,
    pem: &[u8],
) -> Result<Arc<dyn ClientCertVerifier>, TlsBuildError> {
    let invalid = |reason: String| TlsBuildError::InvalidClientCa {
        name: name.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|err| invalid(err.to_string()))?;
        roots.add(cert).map_err(|err| invalid(err.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no CERTIFICATE PEM block".to_owned()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| invalid(err.to_string()))
}

/// The resolver inside an entry's own configuration: the SNI was already
/// looked up to choose that configuration.
#[derive(Debug)]
struct FixedCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The resolver of the configuration for unknown names.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

enum HostPattern {
    Exact(String),
    /// The suffix after `*.`.
    Wildcard(String),
}

fn classify_host(host: &str) -> Result<HostPattern, &'static str> {
    let host = normalize(host);
    if host.is_empty() {
        return Err("empty");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'))
    {
        return Err("only letters, digits, '-', '.' and a leading '*.' are allowed");
    }
    if host.split('.').any(str::is_empty) {
        return Err("empty label");
    }
    match host.strip_prefix("*.") {
        Some(suffix) if !suffix.contains('*') => Ok(HostPattern::Wildcard(suffix.to_owned())),
        None if !host.contains('*') => Ok(HostPattern::Exact(host.into_owned())),
        _ => Err("a wildcard must be the whole leftmost label, as in *.example.com"),
    }
}

/// Lowercase without a trailing dot; borrows when already normal (the SNI
/// rustls hands over is lowercase), so lookups do not allocate.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// `example.com:8443` -> `example.com`. Bracketed IPv6 literals are returned
/// unchanged (no certificate is indexed under them).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::ClientConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::client::TlsStream as ClientTlsStream;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A test CA that issues server and client certificates.
    struct Ca {
        pem: String,
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ca {
                pem: cert.pem(),
                der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        /// (chain PEM, key PEM, leaf DER) for `names`.
        fn issue(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
            let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
            let params = CertificateParams::new(names).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (
                format!("{}{}", cert.pem(), self.pem),
                key.serialize_pem(),
                cert.der().clone(),
            )
        }

        fn source(&self, names: &[&str]) -> (CertSource, CertificateDer<'static>) {
            let (chain, key, leaf) = self.issue(names);
            let source = CertSource {
                hosts: names.iter().map(|name| (*name).to_owned()).collect(),
                cert_chain_pem: chain.into_bytes(),
                key_pem: key.into_bytes(),
                min_tls13: false,
                client_ca_pem: None,
            };
            (source, leaf)
        }

        fn client(&self) -> ClientBuilder {
            ClientBuilder {
                roots: vec![self.der.clone()],
                tls12_only: false,
                sni: true,
                identity: None,
            }
        }
    }

    struct ClientBuilder {
        roots: Vec<CertificateDer<'static>>,
        tls12_only: bool,
        sni: bool,
        identity: Option<(String, String)>,
    }

    impl ClientBuilder {
        fn tls12_only(mut self) -> Self {
            self.tls12_only = true;
            self
        }

        fn without_sni(mut self) -> Self {
            self.sni = false;
            self
        }

        fn identity(mut self, chain: String, key: String) -> Self {
            self.identity = Some((chain, key));
            self
        }

        fn build(self) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            for root in self.roots {
                roots.add(root).unwrap();
            }
            let versions: &[&'static SupportedProtocolVersion] = if self.tls12_only {
                &[&rustls::version::TLS12]
            } else {
                &[&rustls::version::TLS12, &rustls::version::TLS13]
            };
            let builder = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
            let mut config = match self.identity {
                Some((chain, key)) => builder
                    .with_client_auth_cert(
                        CertificateDer::pem_slice_iter(chain.as_bytes())
                            .collect::<Result<_, _>>()
                            .unwrap(),
                        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            config.enable_sni = self.sni;
            config.alpn_protocols = alpn_protocols();
            Arc::new(config)
        }
    }

    /// How the server side terminates TLS in a test.
    #[derive(Clone)]
    enum Server {
        /// `SwappableResolver::accept`.
        Accept(Arc<SwappableResolver>),
        /// A plain `TlsAcceptor` over `server_config`.
        Shared(TlsAcceptor),
    }

    impl Server {
        fn accept(resolver: SniResolver) -> (Server, Arc<SwappableResolver>) {
            let swappable = Arc::new(SwappableResolver::new(Arc::new(resolver)));
            (Server::Accept(swappable.clone()), swappable)
        }

        fn shared(resolver: SniResolver) -> (Server, Arc<SwappableResolver>) {
            let swappable = Arc::new(SwappableResolver::new(Arc::new(resolver)));
            let acceptor = TlsAcceptor::from(server_config(swappable.clone()));
            (Server::Shared(acceptor), swappable)
        }

        async fn handshake(
            &self,
            client: Arc<ClientConfig>,
            sni: &str,
        ) -> Result<(ClientTlsStream<DuplexStream>, TlsStream<DuplexStream>), String> {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let server = async {
                match self {
                    Server::Accept(resolver) => resolver.accept(server_io).await,
                    Server::Shared(acceptor) => acceptor.accept(server_io).await,
                }
            };
            let name = ServerName::try_from(sni.to_owned()).unwrap();
            let client = TlsConnector::from(client).connect(name, client_io);
            match tokio::join!(server, client) {
                (Ok(server), Ok(client)) => Ok((client, server)),
                (server, client) => Err(format!(
                    "server: {:?}, client: {:?}",
                    server.err(),
                    client.err()
                )),
            }
        }

        /// The leaf certificate the client was shown for `sni`.
        async fn leaf_for(&self, client: Arc<ClientConfig>, sni: &str) -> Result<Vec<u8>, String> {
            let (client, _server) = self.handshake(client, sni).await?;
            Ok(client.get_ref().1.peer_certificates().unwrap()[0].to_vec())
        }
    }

    fn both(resolver: impl Fn() -> SniResolver) -> [Server; 2] {
        [Server::accept(resolver()).0, Server::shared(resolver()).0]
    }

    #[tokio::test]
    async fn each_name_gets_its_own_certificate() {
        let ca = Ca::new("Test CA");
        let (a, a_leaf) = ca.source(&["a.example.com"]);
        let (b, b_leaf) = ca.source(&["B.Example.com"]);
        let (wild, wild_leaf) = ca.source(&["*.wild.example.com"]);
        let (special, special_leaf) = ca.source(&["special.wild.example.com"]);
        let sources = [a, b, wild, special];
        let client = ca.client().build();

        for server in both(|| SniResolver::build(&sources).unwrap()) {
            for (sni, leaf) in [
                ("a.example.com", &a_leaf),
                ("b.example.com", &b_leaf),
                ("x.wild.example.com", &wild_leaf),
                ("y.wild.example.com", &wild_leaf),
                ("special.wild.example.com", &special_leaf),
            ] {
                assert_eq!(
                    server.leaf_for(client.clone(), sni).await.unwrap(),
                    leaf.to_vec(),
                    "{sni}"
                );
            }
            let (client, server) = server
                .handshake(client.clone(), "a.example.com")
                .await
                .unwrap();
            assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            assert_eq!(server.get_ref().1.server_name(), Some("a.example.com"));
        }
    }

    #[tokio::test]
    async fn unknown_or_missing_sni_gets_no_certificate() {
        let ca = Ca::new("Test CA");
        let (a, _) = ca.source(&["a.example.com", "*.wild.example.com"]);
        let sources = [a];
        // A client that would accept any name on a certificate from the CA.
        let client = ca.client().build();

        for server in both(|| SniResolver::build(&sources).unwrap()) {
            for sni in [
                "c.example.com",
                "wild.example.com",
                "x.y.wild.example.com",
                "example.com",
            ] {
                let err = server.handshake(client.clone(), sni).await.unwrap_err();
                assert!(
                    err.contains("no server certificate") || err.contains("AccessDenied"),
                    "{sni}: {err}"
                );
            }
            let no_sni = ca.client().without_sni().build();
            assert!(server.handshake(no_sni, "a.example.com").await.is_err());
        }

        for server in both(|| SniResolver::build(&[]).unwrap()) {
            assert!(server
                .handshake(client.clone(), "a.example.com")
                .await
                .is_err());
        }
    }

    async fn echo_once(client: &mut ClientTlsStream<DuplexStream>, message: &[u8]) -> Vec<u8> {
        client.write_all(message).await.unwrap();
        let mut buf = vec![0; message.len()];
        client.read_exact(&mut buf).await.unwrap();
        buf
    }

    fn spawn_echo(mut server: TlsStream<DuplexStream>) {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }

    #[tokio::test]
    async fn rotation_affects_new_handshakes_only() {
        let ca = Ca::new("Test CA");
        let (v1, v1_leaf) = ca.source(&["a.example.com"]);
        let (v2, v2_leaf) = ca.source(&["a.example.com", "b.example.com"]);

        for accept_mode in [true, false] {
            let resolver = SniResolver::build(std::slice::from_ref(&v1)).unwrap();
            let (server, swappable) = if accept_mode {
                Server::accept(resolver)
            } else {
                Server::shared(resolver)
            };
            // This client keeps TLS sessions: it resumes when the server lets it.
            let client = ca.client().build();
            let (mut old, old_server) = server
                .handshake(client.clone(), "a.example.com")
                .await
                .unwrap();
            spawn_echo(old_server);
            assert_eq!(echo_once(&mut old, b"before").await, b"before");
            assert!(server
                .handshake(client.clone(), "b.example.com")
                .await
                .is_err());

            swappable.store(Arc::new(
                SniResolver::build(std::slice::from_ref(&v2)).unwrap(),
            ));

            // A new client gets the new certificate, for the old and new hosts.
            for sni in ["a.example.com", "b.example.com"] {
                let leaf = server.leaf_for(ca.client().build(), sni).await.unwrap();
                assert_eq!(leaf, v2_leaf.to_vec(), "{sni}");
            }
            // Sessions from before the swap: `accept` starts a new session
            // cache with each resolver, so they are not resumed; a shared
            // configuration keeps its cache, so they are (as in any TLS server
            // whose certificate is replaced).
            let leaf = server
                .leaf_for(client.clone(), "a.example.com")
                .await
                .unwrap();
            let expected = if accept_mode { &v2_leaf } else { &v1_leaf };
            assert_eq!(leaf, expected.to_vec(), "accept mode: {accept_mode}");

            // The established connection still works, with the old certificate.
            assert_eq!(echo_once(&mut old, b"after").await, b"after");
            assert_eq!(
                old.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
                v1_leaf.to_vec()
            );

            // Removing the host stops new handshakes for it, resumed or not.
            swappable.store(Arc::new(SniResolver::build(&[]).unwrap()));
            for client in [client.clone(), ca.client().build()] {
                assert!(server.handshake(client, "a.example.com").await.is_err());
            }
            assert_eq!(echo_once(&mut old, b"still").await, b"still");
        }
    }

    #[tokio::test]
    async fn minimum_tls13_is_enforced_per_host() {
        let ca = Ca::new("Test CA");
        let (mut modern, _) = ca.source(&["modern.example.com"]);
        modern.min_tls13 = true;
        let (legacy, _) = ca.source(&["legacy.example.com"]);
        let sources = [modern, legacy];
        let (server, _) = Server::accept(SniResolver::build(&sources).unwrap());

        let tls12 = ca.client().tls12_only().build();
        assert!(server
            .handshake(tls12.clone(), "modern.example.com")
            .await
            .is_err());
        let (client, _) = server.handshake(tls12, "legacy.example.com").await.unwrap();
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let (client, _) = server
            .handshake(ca.client().build(), "modern.example.com")
            .await
            .unwrap();
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );

        // A shared configuration cannot enforce it, so it refuses the host.
        let (shared, _) = Server::shared(SniResolver::build(&sources).unwrap());
        assert!(shared
            .handshake(ca.client().build(), "modern.example.com")
            .await
            .is_err());
        assert!(shared
            .handshake(ca.client().build(), "legacy.example.com")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn client_certificates_are_required_per_host() {
        let ca = Ca::new("Server CA");
        let clients_ca = Ca::new("Clients CA");
        let other_ca = Ca::new("Other CA");
        let (mut mtls, _) = ca.source(&["mtls.example.com"]);
        mtls.client_ca_pem = Some(clients_ca.pem.clone().into_bytes());
        let (open, _) = ca.source(&["open.example.com"]);
        let sources = [mtls, open];
        let (server, _) = Server::accept(SniResolver::build(&sources).unwrap());

        let (chain, key, client_leaf) = clients_ca.issue(&["client.example.com"]);
        let with_identity = ca.client().identity(chain, key).build();
        let (_, server_side) = server
            .handshake(with_identity.clone(), "mtls.example.com")
            .await
            .unwrap();
        assert_eq!(
            server_side.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            client_leaf.to_vec()
        );

        // No client certificate, or one from another CA: refused. With TLS 1.3
        // the client learns it on its first read.
        let (chain, key, _) = other_ca.issue(&["client.example.com"]);
        for client in [
            ca.client().build(),
            ca.client().identity(chain, key).build(),
        ] {
            match server.handshake(client, "mtls.example.com").await {
                Err(_) => {}
                Ok((mut client, _server)) => {
                    let mut buf = [0u8; 1];
                    assert!(client.read(&mut buf).await.is_err());
                }
            }
        }

        // Other hosts do not ask for one.
        assert!(server
            .handshake(ca.client().build(), "open.example.com")
            .await
            .is_ok());

        // A shared configuration cannot ask per host, so it refuses the host.
        let (shared, _) = Server::shared(SniResolver::build(&sources).unwrap());
        assert!(shared
            .handshake(with_identity, "mtls.example.com")
            .await
            .is_err());
    }

    #[test]
    fn matches_tells_misdirected_requests() {
        let ca = Ca::new("Test CA");
        let (ab, _) = ca.source(&["a.example.com", "b.example.com"]);
        let (c, _) = ca.source(&["c.example.com"]);
        let (wild, _) = ca.source(&["*.wild.example.com"]);
        let resolver = SniResolver::build(&[ab, c, wild]).unwrap();

        assert!(resolver.matches("a.example.com", "a.example.com"));
        assert!(resolver.matches("a.example.com", "A.Example.com:443"));
        assert!(resolver.matches("a.example.com", "a.example.com."));
        assert!(resolver.matches("a.example.com", "b.example.com"));
        assert!(resolver.matches("x.wild.example.com", "y.wild.example.com:8443"));
        assert!(!resolver.matches("a.example.com", "c.example.com"));
        assert!(!resolver.matches("a.example.com", "x.wild.example.com"));
        assert!(!resolver.matches("a.example.com", "unknown.example.com"));
        assert!(!resolver.matches("unknown.example.com", "unknown.example.com"));
        assert!(!resolver.matches("a.example.com", "[::1]:443"));
        assert!(!resolver.matches("a.example.com", ""));

        assert!(resolver.covers("b.example.com:80"));
        assert!(resolver.covers("z.wild.example.com"));
        assert!(!resolver.covers("wild.example.com"));
        assert!(!resolver.covers("*.wild.example.com"));
    }

    #[test]
    fn build_errors_name_the_certificate() {
        let ca = Ca::new("Test CA");
        let (a, _) = ca.source(&["a.example.com"]);
        let (other, _) = ca.source(&["a.example.com"]);

        let err = SniResolver::build(&[a.clone(), other.clone()]).unwrap_err();
        assert!(matches!(err, TlsBuildError::DuplicateHost { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "host \"a.example.com\" is claimed by two certificates (a.example.com and a.example.com)"
        );

        let mut dup_in_one = a.clone();
        dup_in_one.hosts.push("A.EXAMPLE.COM".to_owned());
        assert!(SniResolver::build(&[dup_in_one]).is_ok());

        let mut mismatched = a.clone();
        mismatched.key_pem = other.key_pem.clone();
        let err = SniResolver::build(&[mismatched]).unwrap_err();
        assert!(
            matches!(err, TlsBuildError::InvalidPrivateKey { .. }),
            "{err}"
        );

        let mut no_cert = a.clone();
        no_cert.cert_chain_pem = b"garbage".to_vec();
        let err = SniResolver::build(&[no_cert]).unwrap_err();
        assert!(
            matches!(err, TlsBuildError::InvalidCertificate { .. }),
            "{err}"
        );

        let mut no_key = a.clone();
        no_key.key_pem = Vec::new();
        let err = SniResolver::build(&[no_key]).unwrap_err();
        assert!(
            matches!(err, TlsBuildError::InvalidPrivateKey { .. }),
            "{err}"
        );

        let mut no_hosts = a.clone();
        no_hosts.hosts.clear();
        let err = SniResolver::build(&[no_hosts]).unwrap_err();
        assert_eq!(err.to_string(), "certificate #0: no hosts");

        for host in [
            "",
            "*",
            "*.",
            "a.*.com",
            "w*.example.com",
            "a..com",
            "a b.com",
            "*.*.com",
        ] {
            let mut bad = a.clone();
            bad.hosts = vec!["ok.example.com".to_owned(), host.to_owned()];
            let err = SniResolver::build(&[bad]).unwrap_err();
            assert!(
                matches!(err, TlsBuildError::InvalidHost { .. }),
                "{host:?}: {err}"
            );
        }

        let mut bad_ca = a.clone();
        bad_ca.client_ca_pem = Some(b"not a CA".to_vec());
        let err = SniResolver::build(&[bad_ca]).unwrap_err();
        assert!(
            matches!(err, TlsBuildError::InvalidClientCa { .. }),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_keys() {
        let ca = Ca::new("Test CA");
        let (a, _) = ca.source(&["a.example.com"]);
        let key_text = String::from_utf8(a.key_pem.clone()).unwrap();
        let key_line = key_text.lines().nth(1).unwrap();
        let resolver = SwappableResolver::new(Arc::new(
            SniResolver::build(std::slice::from_ref(&a)).unwrap(),
        ));
        for debug in [format!("{a:?}"), format!("{resolver:?}")] {
            assert!(!debug.contains(key_line), "{debug}");
            assert!(debug.contains("a.example.com"), "{debug}");
        }
    }

    #[test]
    fn shared_server_config_offers_h2_and_http11() {
        let config = server_config(Arc::new(SniResolver::build(&[]).unwrap()));
        assert_eq!(config.alpn_protocols, alpn_protocols());
    }

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.com:443"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("a.com:"), "a.com:");
        assert_eq!(strip_port("[::1]:443"), "[::1]:443");
        assert_eq!(strip_port("::1"), "::1");
    }
}
