//! `ferrogate certgen`: the private CA and the two certificates of the
//! snapshot stream (the controller's server certificate, the dataplanes'
//! client certificate), for a Helm pre-install Job or a local run.
//!
//! ```text
//!  read what exists (Secrets, or files in --out-dir)
//!     ──▶ plan: keep each piece that is still good, issue the rest
//!     ──▶ write only what changed
//! ```
//!
//! Idempotent: running it again changes nothing while everything is good.
//! A piece is good when its key matches its certificate, it is valid for
//! at least `--renew-days` more, and (for the two leaves) it chains to the
//! CA, which is checked with the same rustls verifiers the stream uses; the
//! server certificate must also cover every `--dns-names`. A CA that is not
//! good is replaced, and then both leaves are re-issued from the new one.
//!
//! Kubernetes mode writes three `kubernetes.io/tls` Secrets in
//! `--namespace`: `PREFIX-ca` (the CA and its key: mount it nowhere),
//! `PREFIX-server` and `PREFIX-client`, each with `tls.crt`, `tls.key` and
//! `ca.crt`. `--out-dir` writes `ca.crt`, `ca.key`, `server.crt`,
//! `server.key`, `client.crt`, `client.key` instead (keys mode 0600).
//!
//! Keys are ECDSA P-256. The CA is valid for `--ca-days` (10 years), the
//! leaves for `--cert-days` (2 years); a re-run within `--renew-days` (30)
//! of a leaf's expiry renews it, so the chart runs this Job on upgrades too.

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Options of `ferrogate certgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct CertgenArgs {
    /// Namespace of the Secrets (required unless --out-dir).
    #[arg(long, required_unless_present = "out_dir")]
    pub namespace: Option<String>,
    /// Secret names are PREFIX-ca, PREFIX-server and PREFIX-client.
    #[arg(long, default_value = "ferrogate-stream")]
    pub secret_prefix: String,
    /// kubeconfig file (default: in-cluster, then $KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Names the server certificate covers (comma-separated or repeated;
    /// IP addresses allowed). Default: the controller Service's names
    /// (see --service) plus localhost and 127.0.0.1.
    #[arg(long, value_delimiter = ',')]
    pub dns_names: Vec<String>,
    /// Name of the controller's Service, for the default --dns-names.
    #[arg(long, default_value = "ferrogate-controller")]
    pub service: String,
    /// Write PEM files into this folder instead of Secrets.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Validity of a new CA, in days.
    #[arg(long, default_value_t = 3650)]
    pub ca_days: u32,
    /// Validity of new server and client certificates, in days.
    #[arg(long, default_value_t = 730)]
    pub cert_days: u32,
    /// Replace a certificate that expires within this many days.
    #[arg(long, default_value_t = 30)]
    pub renew_days: u32,
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// The three pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The CA.
    Ca,
    /// The controller's server certificate.
    Server,
    /// The dataplanes' client certificate.
    Client,
}

impl Role {
    const ALL: [Role; 3] = [Role::Ca, Role::Server, Role::Client];

    fn name(self) -> &'static str {
        match self {
            Role::Ca => "ca",
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// What exists already, per role.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// The CA, if readable.
    pub ca: Option<Pair>,
    /// The server certificate, if readable.
    pub server: Option<Pair>,
    /// The client certificate, if readable.
    pub client: Option<Pair>,
}

/// The result of planning: every piece, and which ones are new.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The CA.
    pub ca: Pair,
    /// The server certificate.
    pub server: Pair,
    /// The client certificate.
    pub client: Pair,
    /// Roles that were (re)issued and must be written.
    pub issued: Vec<Role>,
}

impl Plan {
    fn pair(&self, role: Role) -> &Pair {
        match role {
            Role::Ca => &self.ca,
            Role::Server => &self.server,
            Role::Client => &self.client,
        }
    }
}

/// Validity settings.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// New CA lifetime.
    pub ca: Duration,
    /// New leaf lifetime.
    pub leaf: Duration,
    /// Renew what expires within this.
    pub renew_before: Duration,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

fn unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn offset(time: SystemTime) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix(time)).context("time out of range")
}

/// Why an existing piece cannot be kept, or `None` when it can.
fn problem(
    role: Role,
    pair: &Pair,
    ca: &Pair,
    dns_names: &[String],
    now: SystemTime,
    validity: &Validity,
) -> Option<String> {
    // IP addresses are checked by the chain verification below.
    let hosts: Vec<String> = if role == Role::Server {
        dns_names
            .iter()
            .filter(|name| name.parse::<std::net::IpAddr>().is_err())
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    // Key match, names and "still valid after the renewal window".
    let later = unix(now + validity.renew_before);
    if let Err(error) = snapshot::certs::check_certificate(
        pair.cert_pem.as_bytes(),
        pair.key_pem.as_bytes(),
        &hosts,
        later,
    ) {
        return Some(error.to_string());
    }
    if role == Role::Ca {
        return None;
    }
    match verify_chain(role, &pair.cert_pem, &ca.cert_pem, dns_names, now) {
        Ok(()) => None,
        Err(error) => Some(format!("does not chain to the CA: {error:#}")),
    }
}

/// Verifies a leaf against the CA exactly as the stream's peers will.
fn verify_chain(
    role: Role,
    leaf_pem: &str,
    ca_pem: &str,
    dns_names: &[String],
    now: SystemTime,
) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(der.context("CA PEM")?)
            .context("CA certificate")?;
    }
    let roots = Arc::new(roots);
    let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).context("certificate PEM")?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    match role {
        Role::Server => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .context("server verifier")?;
            for name in dns_names {
                let server_name =
                    ServerName::try_from(name.clone()).with_context(|| format!("name {name:?}"))?;
                verifier
                    .verify_server_cert(&leaf, &[], &server_name, &[], now)
                    .with_context(|| format!("as server {name}"))?;
            }
        }
        Role::Client => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .context("client verifier")?;
            verifier
                .verify_client_cert(&leaf, &[], now)
                .context("as client")?;
        }
        Role::Ca => {}
    }
    Ok(())
}

fn new_ca(now: SystemTime, validity: &Validity) -> anyhow::Result<Pair> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Ferrogate snapshot stream CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now - Duration::from_secs(3600))?;
    params.not_after = offset(now + validity.ca)?;
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn new_leaf(
    role: Role,
    ca: &Pair,
    dns_names: &[String],
    now: SystemTime,
    validity: &Validity,
) -> anyhow::Result<Pair> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("the CA certificate")?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (mut params, common_name, usage) = match role {
        Role::Server => (
            CertificateParams::new(dns_names.to_vec())?,
            dns_names
                .first()
                .cloned()
                .unwrap_or_else(|| "ferrogate-controller".to_owned()),
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        _ => (
            CertificateParams::new(Vec::<String>::new())?,
            "ferrogate-dataplane".to_owned(),
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    };
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(now - Duration::from_secs(3600))?;
    params.not_after = offset(now + validity.leaf)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Decides what to keep and issues the rest. `notes` receives one line
/// per replaced piece saying why.
pub fn plan(
    existing: Existing,
    dns_names: &[String],
    now: SystemTime,
    validity: &Validity,
    notes: &mut Vec<String>,
) -> anyhow::Result<Plan> {
    if dns_names.is_empty() {
        bail!("--dns-names: the server certificate needs at least one name");
    }
    let mut issued = Vec::new();
    let ca = match existing.ca {
        Some(ca) => match problem(Role::Ca, &ca, &ca, dns_names, now, validity) {
            None => ca,
            Some(why) => {
                notes.push(format!("replacing the CA: {why}"));
                issued.push(Role::Ca);
                new_ca(now, validity)?
            }
        },
        None => {
            issued.push(Role::Ca);
            new_ca(now, validity)?
        }
    };
    let mut leaf = |role: Role, current: Option<Pair>| -> anyhow::Result<Pair> {
        if let Some(pair) = current {
            if issued.contains(&Role::Ca) {
                notes.push(format!(
                    "re-issuing the {} certificate: new CA",
                    role.name()
                ));
            } else {
                match problem(role, &pair, &ca, dns_names, now, validity) {
                    None => return Ok(pair),
                    Some(why) => {
                        notes.push(format!("re-issuing the {} certificate: {why}", role.name()))
                    }
                }
            }
        }
        issued.push(role);
        let pair = new_leaf(role, &ca, dns_names, now, validity)?;
        if let Some(why) = problem(role, &pair, &ca, dns_names, now, validity) {
            bail!(
                "the {} certificate just issued does not verify ({why}); is the CA a CA?",
                role.name()
            );
        }
        Ok(pair)
    };
    let server = leaf(Role::Server, existing.server)?;
    let client = leaf(Role::Client, existing.client)?;
    Ok(Plan {
        ca,
        server,
        client,
        issued,
    })
}

fn default_dns_names(args: &CertgenArgs) -> Vec<String> {
    if !args.dns_names.is_empty() {
        return args.dns_names.clone();
    }
    let mut names = Vec::new();
    if let Some(ns) = &args.namespace {
        let svc = &args.service;
        names.push(svc.clone());
        names.push(format!("{svc}.{ns}"));
        names.push(format!("{svc}.{ns}.svc"));
        names.push(format!("{svc}.{ns}.svc.cluster.local"));
    }
    names.push("localhost".to_owned());
    names.push("127.0.0.1".to_owned());
    names
}

/// Runs `certgen`.
pub fn run(args: CertgenArgs) -> anyhow::Result<()> {
    let validity = Validity {
        ca: DAY * args.ca_days.max(1),
        leaf: DAY * args.cert_days.max(1),
        renew_before: DAY * args.renew_days,
    };
    if validity.renew_before >= validity.leaf || validity.leaf > validity.ca {
        bail!("need --renew-days < --cert-days <= --ca-days");
    }
    let dns_names = default_dns_names(&args);
    match &args.out_dir {
        Some(dir) => run_files(dir, &dns_names, &validity),
        None => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(run_secrets(&args, &dns_names, &validity))
        }
    }
}

fn report(target: &str, action: &str) {
    println!(
        "{}",
        serde_json::json!({ "event": "certgen", "target": target, "action": action })
    );
}

fn read_pair(dir: &Path, role: Role) -> Option<Pair> {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{}.crt", role.name()))).ok()?;
    let key_pem = std::fs::read_to_string(dir.join(format!("{}.key", role.name()))).ok()?;
    Some(Pair { cert_pem, key_pem })
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn run_files(dir: &Path, dns_names: &[String], validity: &Validity) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let existing = Existing {
        ca: read_pair(dir, Role::Ca),
        server: read_pair(dir, Role::Server),
        client: read_pair(dir, Role::Client),
    };
    let mut notes = Vec::new();
    let plan = plan(existing, dns_names, SystemTime::now(), validity, &mut notes)?;
    for note in notes {
        eprintln!("{note}");
    }
    for role in Role::ALL {
        let cert = dir.join(format!("{}.crt", role.name()));
        if plan.issued.contains(&role) {
            let pair = plan.pair(role);
            write_file(
                &dir.join(format!("{}.key", role.name())),
                &pair.key_pem,
                0o600,
            )?;
            write_file(&cert, &pair.cert_pem, 0o644)?;
            report(&cert.display().to_string(), "issued");
        } else {
            report(&cert.display().to_string(), "kept");
        }
    }
    Ok(())
}

async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration and no kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

fn secret_pair(secret: &Secret) -> Option<Pair> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Pair {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

async fn run_secrets(
    args: &CertgenArgs,
    dns_names: &[String],
    validity: &Validity,
) -> anyhow::Result<()> {
    let Some(namespace) = &args.namespace else {
        bail!("--namespace is required without --out-dir");
    };
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let name = |role: Role| format!("{}-{}", args.secret_prefix, role.name());
    let mut found: BTreeMap<&'static str, Secret> = BTreeMap::new();
    for role in Role::ALL {
        let secret = api
            .get_opt(&name(role))
            .await
            .with_context(|| format!("reading Secret {namespace}/{}", name(role)))?;
        if let Some(secret) = secret {
            found.insert(role.name(), secret);
        }
    }
    let pair = |role: Role| found.get(role.name()).and_then(secret_pair);
    let existing = Existing {
        ca: pair(Role::Ca),
        server: pair(Role::Server),
        client: pair(Role::Client),
    };
    let mut notes = Vec::new();
    let plan = plan(existing, dns_names, SystemTime::now(), validity, &mut notes)?;
    for note in notes {
        eprintln!("{note}");
    }
    for role in Role::ALL {
        let target = format!("secret/{namespace}/{}", name(role));
        if !plan.issued.contains(&role) {
            report(&target, "kept");
            continue;
        }
        let pair = plan.pair(role);
        let mut data = BTreeMap::new();
        data.insert(
            "tls.crt".to_owned(),
            ByteString(pair.cert_pem.clone().into_bytes()),
        );
        data.insert(
            "tls.key".to_owned(),
            ByteString(pair.key_pem.clone().into_bytes()),
        );
        data.insert(
            "ca.crt".to_owned(),
            ByteString(plan.ca.cert_pem.clone().into_bytes()),
        );
        let mut labels = BTreeMap::new();
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            "ferrogate-certgen".to_owned(),
        );
        labels.insert(
            "ferrogate.dev/stream-certificate".to_owned(),
            role.name().to_owned(),
        );
        let existing = found.get(role.name());
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name(role)),
                namespace: Some(namespace.clone()),
                labels: Some(labels),
                resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Secret::default()
        };
        // A replace carries the resourceVersion read above, so a concurrent
        // certgen fails with a conflict instead of mixing two CAs.
        let action = if existing.is_some() {
            api.replace(&name(role), &PostParams::default(), &secret)
                .await
                .with_context(|| format!("replacing {target}"))?;
            "replaced"
        } else {
            api.create(&PostParams::default(), &secret)
                .await
                .with_context(|| format!("creating {target}"))?;
            "created"
        };
        report(&target, action);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validity() -> Validity {
        Validity {
            ca: DAY * 3650,
            leaf: DAY * 730,
            renew_before: DAY * 30,
        }
    }

    fn names() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    #[test]
    fn a_second_plan_keeps_everything() {
        let now = SystemTime::now();
        let mut notes = Vec::new();
        let first =
            plan(Existing::default(), &names(), now, &validity(), &mut notes).expect("plan");
        assert_eq!(first.issued, vec![Role::Ca, Role::Server, Role::Client]);
        let existing = Existing {
            ca: Some(first.ca.clone()),
            server: Some(first.server.clone()),
            client: Some(first.client.clone()),
        };
        let second = plan(existing, &names(), now, &validity(), &mut notes).expect("plan");
        assert!(second.issued.is_empty(), "{notes:?}");
        assert_eq!(second.server, first.server);
    }

    #[test]
    fn leaves_are_renewed_for_new_names_expiry_or_a_foreign_ca() {
        let now = SystemTime::now();
        let mut notes = Vec::new();
        let first =
            plan(Existing::default(), &names(), now, &validity(), &mut notes).expect("plan");
        let other =
            plan(Existing::default(), &names(), now, &validity(), &mut notes).expect("plan");
        // A client certificate from another CA, and new names for the server.
        let existing = Existing {
            ca: Some(first.ca.clone()),
            server: Some(first.server.clone()),
            client: Some(other.client.clone()),
        };
        let mut more = names();
        more.push("controller.example".to_owned());
        let next = plan(existing, &more, now, &validity(), &mut notes).expect("plan");
        assert_eq!(next.issued, vec![Role::Server, Role::Client]);
        assert_eq!(next.ca, first.ca);
        assert!(
            notes.iter().any(|n| n.contains("does not chain")),
            "{notes:?}"
        );
        // Two years later everything is due.
        let later = now + DAY * 720;
        let existing = Existing {
            ca: Some(next.ca.clone()),
            server: Some(next.server.clone()),
            client: Some(next.client.clone()),
        };
        let renewed = plan(existing, &more, later, &validity(), &mut notes).expect("plan");
        assert_eq!(renewed.issued, vec![Role::Server, Role::Client]);
    }
}
