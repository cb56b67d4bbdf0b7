//! The kubeconfig handed to kubectl, kube-rs and the controller under test.
//!
//! Written as JSON (a subset of YAML, so every kubeconfig reader accepts
//! it), with the CA inline so the file is self-contained.

use base64::Engine as _;

/// Name of the cluster, user and context in the generated kubeconfig.
pub const CONTEXT_NAME: &str = "ferrogate-test";

/// Renders a kubeconfig for `server_url` that trusts `ca_pem` and
/// authenticates with the bearer `token`, namespace `default`.
pub fn render(server_url: &str, ca_pem: &str, token: &str) -> String {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT_NAME,
            "cluster": {
                "server": server_url,
                "certificate-authority-data": ca_data,
            },
        }],
        "users": [{
            "name": CONTEXT_NAME,
            "user": { "token": token },
        }],
        "contexts": [{
            "name": CONTEXT_NAME,
            "context": {
                "cluster": CONTEXT_NAME,
                "user": CONTEXT_NAME,
                "namespace": "default",
            },
        }],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    });
    // `Value`'s Display is infallible JSON; pretty-print for humans.
    format!("{config:#}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_has_server_ca_data_and_token() -> anyhow::Result<()> {
        let text = render("https://127.0.0.1:6443", "PEM", "secret");
        let v: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(v["current-context"], CONTEXT_NAME);
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(v["users"][0]["user"]["token"], "secret");
        assert_eq!(v["contexts"][0]["context"]["user"], CONTEXT_NAME);
        assert_eq!(v["contexts"][0]["context"]["namespace"], "default");
        Ok(())
    }
}
