//! Certificate issuance by `ferrogate controller` against a real
//! kube-apiserver: a TlsCertificate with `issuer` gets its
//! `kubernetes.io/tls` Secret written (a certificate for its hosts signed
//! by the CA Secret, owned by the TlsCertificate), its status shows
//! `notAfter`, `renewalTime` and `Issued`/`Expiring`, and the Secret is
//! re-issued with a new key `renewBefore` its expiry (validity 2m,
//! renewBefore 1m50s: every 10 s). A missing CA is reported, not retried
//! in a hot loop.

mod controller_common;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use controller_common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn ca() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferrogate issuer test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA cert");
    (cert.pem(), key.serialize_pem())
}

fn secret_data(secret: &Value, key: &str) -> Result<String> {
    let encoded = secret["data"][key]
        .as_str()
        .with_context(|| format!("no {key} in the Secret"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    Ok(String::from_utf8(bytes)?)
}

/// `openssl verify` of the leaf (first block of `chain`) against `ca`.
fn verify(dir: &std::path::Path, ca: &str, chain: &str) -> Result<()> {
    let leaf_end = chain
        .find("-----END CERTIFICATE-----")
        .context("no certificate")?
        + "-----END CERTIFICATE-----".len();
    std::fs::write(dir.join("ca.pem"), ca)?;
    std::fs::write(dir.join("leaf.pem"), &chain[..leaf_end])?;
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join("ca.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .context("running openssl verify")?;
    ensure!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn issues_and_renews_with_a_new_key() -> Result<()> {
    let api = apiserver_with_crds()?;
    let dir = tempfile::tempdir()?;
    let (ca_pem, ca_key) = ca();
    std::fs::write(dir.path().join("ca.crt"), &ca_pem)?;
    std::fs::write(dir.path().join("ca.key"), &ca_key)?;
    let cert = dir.path().join("ca.crt").display().to_string();
    let key = dir.path().join("ca.key").display().to_string();
    api.kubectl(&[
        "create", "secret", "tls", "shop-ca", "--cert", &cert, "--key", &key,
    ])?;
    api.kubectl_apply_stdin(
        "apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop.example.com, '*.shop.example.com']
  secretName: shop-tls
  issuer: {caSecretName: shop-ca, validity: 2m, renewBefore: 1m50s}
---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {name: orphan, namespace: default}
spec:
  hosts: [orphan.example.com]
  secretName: orphan-tls
  issuer: {caSecretName: no-such-ca}
",
    )?;

    let controller = ControllerProcess::start(api.kubeconfig_path(), "issuer-1", &["--no-stream"])?;

    let secret = wait_for(
        WAIT,
        "Secret shop-tls",
        || {
            let out = api.kubectl_output(&["get", "secret", "shop-tls", "-o", "json"], None)?;
            Ok(out
                .success()
                .then(|| serde_json::from_str::<Value>(&out.stdout))
                .transpose()?)
        },
        || controller.log(),
    )?;
    ensure!(secret["type"] == "kubernetes.io/tls", "{}", secret["type"]);
    let owner = &secret["metadata"]["ownerReferences"][0];
    ensure!(
        owner["kind"] == "TlsCertificate" && owner["name"] == "shop",
        "{owner}"
    );
    let chain = secret_data(&secret, "tls.crt")?;
    let first_key = secret_data(&secret, "tls.key")?;
    ensure!(
        secret_data(&secret, "ca.crt")?.trim() == ca_pem.trim(),
        "ca.crt is the CA"
    );
    verify(dir.path(), &ca_pem, &chain)?;
    let hosts = [
        "shop.example.com".to_owned(),
        "*.shop.example.com".to_owned(),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let info =
        snapshot::certs::check_certificate(chain.as_bytes(), first_key.as_bytes(), &hosts, now)
            .map_err(|e| anyhow::anyhow!("issued certificate does not serve: {e}"))?;
    ensure!(
        (110..=130).contains(&(info.not_after - now)),
        "validity is 2m: expires in {}s",
        info.not_after - now
    );

    // Status: accepted, issued, notAfter and the renewal time.
    let status = wait_for(
        WAIT,
        "shop: Accepted, Issued, notAfter",
        || {
            let v = get(&api, "tlscertificate", "default", "shop")?;
            Ok((has(&v, "Accepted", "True", "Accepted")
                && has(&v, "Issued", "True", "Issued")
                && v["status"]["notAfter"].is_string())
            .then_some(v))
        },
        || controller.log(),
    )?;
    ensure!(
        has(&status, "Expiring", "False", "RenewalScheduled"),
        "{}",
        status["status"]
    );
    let not_after = status["status"]["notAfter"].as_str().unwrap_or_default();
    let renewal = status["status"]["renewalTime"].as_str().unwrap_or_default();
    ensure!(
        !renewal.is_empty() && renewal < not_after,
        "{}",
        status["status"]
    );

    // Renewal with a new key, about 10 s after issuance.
    let renewed = wait_for(
        WAIT,
        "a renewed Secret with a new key",
        || {
            let v: Value =
                serde_json::from_str(&api.kubectl(&["get", "secret", "shop-tls", "-o", "json"])?)?;
            let key = secret_data(&v, "tls.key")?;
            Ok((key != first_key).then_some(v))
        },
        || controller.log(),
    )?;
    let new_chain = secret_data(&renewed, "tls.crt")?;
    verify(dir.path(), &ca_pem, &new_chain)?;
    let new_key = secret_data(&renewed, "tls.key")?;
    let new_info =
        snapshot::certs::check_certificate(new_chain.as_bytes(), new_key.as_bytes(), &hosts, now)
            .map_err(|e| anyhow::anyhow!("renewed certificate does not serve: {e}"))?;
    ensure!(
        new_info.not_after > info.not_after,
        "the renewal expires later"
    );
    ensure!(new_info.fingerprint_sha256 != info.fingerprint_sha256);

    // The status follows the new certificate.
    wait_for(
        WAIT,
        "status notAfter of the renewed certificate",
        || {
            let v = get(&api, "tlscertificate", "default", "shop")?;
            Ok((v["status"]["notAfter"].as_str() > Some(not_after)).then_some(()))
        },
        || controller.log(),
    )?;

    // A missing CA is reported on the resource and with an Event.
    let orphan = wait_for(
        WAIT,
        "orphan: Issued=False/CASecretNotFound",
        || {
            let v = get(&api, "tlscertificate", "default", "orphan")?;
            Ok(has(&v, "Issued", "False", "CASecretNotFound").then_some(v))
        },
        || controller.log(),
    )?;
    let (_, _, message) = condition(&orphan, "Issued").unwrap_or_default();
    ensure!(message.contains("no-such-ca"), "{message}");
    let events: Value = serde_json::from_str(&api.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=orphan",
        "-o",
        "json",
    ])?)?;
    ensure!(
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "CASecretNotFound"),
        "{events}"
    );
    let attempts = controller.log().matches("cannot issue").count();
    ensure!(
        attempts <= 6,
        "a missing CA is retried with backoff, not {attempts} times"
    );
    Ok(())
}
