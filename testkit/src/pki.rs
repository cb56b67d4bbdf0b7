//! Credentials for a throwaway cluster: a CA, a serving certificate for
//! 127.0.0.1/localhost signed by it, a service-account signing key pair and
//! an admin bearer token. Made fresh for every apiserver, in memory.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::io::Read;

/// Names the serving certificate is valid for. The apiserver is only ever
/// reached on loopback; the in-cluster names cost nothing and let a client
/// that insists on `kubernetes.default.svc` connect too.
pub const SERVING_NAMES: [&str; 5] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
];

/// PEM-encoded material for one cluster.
#[derive(Clone)]
pub struct ClusterPki {
    /// The CA certificate (trust anchor for clients; also the client CA).
    pub ca_cert_pem: String,
    /// The apiserver's serving certificate.
    pub serving_cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub serving_key_pem: String,
    /// Private key that signs service-account tokens (PKCS#8, ECDSA P-256).
    pub sa_key_pem: String,
    /// Public key that verifies service-account tokens (SPKI).
    pub sa_pub_pem: String,
    /// Bearer token of the admin user (group `system:masters`).
    pub admin_token: String,
}

impl std::fmt::Debug for ClusterPki {
    // Keys and tokens stay out of test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki").finish_non_exhaustive()
    }
}

impl ClusterPki {
    /// Generates a fresh CA, serving certificate, service-account key pair
    /// and admin token.
    pub fn generate() -> Result<Self> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .context("building the CA certificate parameters")?;
        ca_params.distinguished_name = distinguished_name("ferrogate-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA certificate")?;

        let serving_key = KeyPair::generate().context("generating the serving key")?;
        let mut serving_params = CertificateParams::new(
            SERVING_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .context("building the serving certificate parameters")?;
        serving_params.distinguished_name = distinguished_name("kube-apiserver");
        serving_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let serving_cert = serving_params
            .signed_by(&serving_key, &issuer)
            .context("signing the serving certificate")?;

        let sa_key = KeyPair::generate().context("generating the service-account key")?;

        Ok(ClusterPki {
            ca_cert_pem: ca_cert.pem(),
            serving_cert_pem: serving_cert.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            sa_key_pem: sa_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
            admin_token: random_token()?,
        })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// 32 random hex characters from the kernel's generator.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the admin token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A static token file line (`token,user,uid,"group1,group2"`), the format
/// of kube-apiserver's `--token-auth-file`.
pub fn token_file_line(token: &str, user: &str, uid: &str, groups: &[&str]) -> String {
    format!("{token},{user},{uid},\"{}\"\n", groups.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem_material_and_distinct_tokens() -> Result<()> {
        let a = ClusterPki::generate()?;
        let b = ClusterPki::generate()?;
        assert!(a.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a
            .serving_cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.serving_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(a.sa_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(a.sa_pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_ne!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(a.admin_token.len(), 32);
        assert!(a.admin_token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.admin_token, b.admin_token);
        Ok(())
    }

    #[test]
    fn debug_output_hides_secrets() -> Result<()> {
        let pki = ClusterPki::generate()?;
        let shown = format!("{pki:?}");
        assert!(!shown.contains(&pki.admin_token));
        assert!(!shown.contains("PRIVATE KEY"));
        Ok(())
    }

    #[test]
    fn token_file_lines_quote_the_groups() {
        assert_eq!(
            token_file_line("t0k", "admin", "uid-1", &["system:masters", "extra"]),
            "t0k,admin,uid-1,\"system:masters,extra\"\n"
        );
    }
}
