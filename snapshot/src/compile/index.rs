//! Lookups over the plain Kubernetes objects (Services, EndpointSlices,
//! Endpoints, Secrets) and the reference rules: cross-namespace grants,
//! Service port to ready endpoints, Secret keys.
//!
//! The maps here are only ever read by key; nothing iterates them into the
//! output, so their order does not matter. Where two objects share a
//! namespace/name (possible when loading files), the one with the smallest
//! uid (then smallest JSON) is used, whatever the input order.

use crate::model::Endpoint;
use crate::resources::Resources;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

type NsName = (String, String);

/// Why a reference does not resolve: a condition reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefError {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// A Service port and its ready endpoints.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedService {
    pub(crate) endpoints: Vec<Endpoint>,
    /// The cluster IP, unless headless or ExternalName.
    pub(crate) cluster_ip: Option<String>,
}

pub(crate) struct Index<'a> {
    services: HashMap<NsName, &'a Service>,
    slices: HashMap<NsName, Vec<&'a EndpointSlice>>,
    endpoints: HashMap<NsName, &'a Endpoints>,
    secrets: HashMap<NsName, &'a Secret>,
    /// Secrets per namespace, sorted by name (for label selectors).
    secrets_by_namespace: BTreeMap<String, Vec<(String, &'a Secret)>>,
}

fn ns_name(meta: &ObjectMeta) -> NsName {
    (
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Inserts keeping the deterministic winner among duplicates.
fn insert_unique<'a, T: Serialize>(
    map: &mut HashMap<NsName, &'a T>,
    key: NsName,
    item: &'a T,
    meta: impl Fn(&T) -> &ObjectMeta,
) {
    match map.get(&key) {
        None => {
            map.insert(key, item);
        }
        Some(existing) => {
            let rank = |t: &T| {
                (
                    meta(t).uid.clone().unwrap_or_default(),
                    serde_json::to_string(t).unwrap_or_default(),
                )
            };
            if rank(item) < rank(existing) {
                map.insert(key, item);
            }
        }
    }
}

impl<'a> Index<'a> {
    pub(crate) fn new(resources: &'a Resources) -> Self {
        let mut services = HashMap::with_capacity(resources.services.len());
        for s in &resources.services {
            insert_unique(&mut services, ns_name(&s.metadata), s, |s| &s.metadata);
        }
        let mut endpoints = HashMap::with_capacity(resources.endpoints.len());
        for e in &resources.endpoints {
            insert_unique(&mut endpoints, ns_name(&e.metadata), e, |e| &e.metadata);
        }
        let mut secrets = HashMap::with_capacity(resources.secrets.len());
        for s in &resources.secrets {
            insert_unique(&mut secrets, ns_name(&s.metadata), s, |s| &s.metadata);
        }
        let mut secrets_by_namespace: BTreeMap<String, Vec<(String, &Secret)>> = BTreeMap::new();
        for ((ns, name), secret) in &secrets {
            secrets_by_namespace
                .entry(ns.clone())
                .or_default()
                .push((name.clone(), *secret));
        }
        for list in secrets_by_namespace.values_mut() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let mut slices: HashMap<NsName, Vec<&EndpointSlice>> = HashMap::new();
        for slice in &resources.endpoint_slices {
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let (ns, _) = ns_name(&slice.metadata);
            slices.entry((ns, service.clone())).or_default().push(slice);
        }
        Index {
            services,
            slices,
            endpoints,
            secrets,
            secrets_by_namespace,
        }
    }

    /// Resolves a Service port referenced from `from_namespace`.
    pub(crate) fn service_port(
        &self,
        from_namespace: &str,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<ResolvedService, RefError> {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(service) = self.services.get(&key) else {
            return Err(RefError {
                reason: "BackendNotFound",
                message: format!("Service {namespace}/{name} not found"),
            });
        };
        check_grant(
            &service.metadata,
            "Service",
            from_namespace,
            namespace,
            name,
        )?;
        let spec = service.spec.as_ref();
        let ports: &[k8s_openapi::api::core::v1::ServicePort] =
            spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
        let external_name = spec
            .filter(|s| s.type_.as_deref() == Some("ExternalName"))
            .and_then(|s| s.external_name.as_ref());
        if let Some(host) = external_name {
            return Ok(ResolvedService {
                endpoints: vec![Endpoint {
                    host: host.trim_end_matches('.').to_ascii_lowercase(),
                    port,
                }],
                cluster_ip: None,
            });
        }
        let Some(service_port) = ports.iter().find(|p| p.port == i32::from(port)) else {
            let mut known: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
            known.sort();
            return Err(RefError {
                reason: "BackendNotFound",
                message: format!(
                    "Service {namespace}/{name} has no port {port} (its ports: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        };
        let port_name = service_port.name.as_deref().unwrap_or("");
        let mut endpoints = match self.slices.get(&key) {
            Some(slices) => endpoints_from_slices(slices, port_name),
            None => self
                .endpoints
                .get(&key)
                .map(|e| endpoints_from_core(e, port_name))
                .unwrap_or_default(),
        };
        endpoints.sort();
        endpoints.dedup();
        let cluster_ip = spec
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None");
        Ok(ResolvedService {
            endpoints,
            cluster_ip,
        })
    }

    /// Finds a Secret referenced from `from_namespace`.
    pub(crate) fn secret(
        &self,
        from_namespace: &str,
        namespace: &str,
        name: &str,
    ) -> Result<&'a Secret, RefError> {
        let Some(secret) = self.secrets.get(&(namespace.to_owned(), name.to_owned())) else {
            return Err(RefError {
                reason: "SecretNotFound",
                message: format!("Secret {namespace}/{name} not found"),
            });
        };
        check_grant(&secret.metadata, "Secret", from_namespace, namespace, name)?;
        Ok(secret)
    }

    /// Secrets of a namespace whose labels include all of `selector`,
    /// sorted by name.
    pub(crate) fn secrets_matching(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<(&str, &'a Secret)> {
        self.secrets_by_namespace
            .get(namespace)
            .map(|list| {
                list.iter()
                    .filter(|(_, s)| {
                        let labels = s.metadata.labels.as_ref();
                        selector
                            .iter()
                            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                    })
                    .map(|(n, s)| (n.as_str(), *s))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The bytes of a Secret key: `stringData` (as the apiserver would merge
/// it) over `data`.
pub(crate) fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.as_bytes().to_vec());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
}

/// A reference from `from_namespace` to an object in `namespace` is allowed
/// when they are the same, or the object's allowed-namespaces annotation
/// lists `from_namespace` or `*`.
fn check_grant(
    meta: &ObjectMeta,
    kind: &str,
    from_namespace: &str,
    namespace: &str,
    name: &str,
) -> Result<(), RefError> {
    if from_namespace == namespace {
        return Ok(());
    }
    let granted = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(crds::ALLOWED_NAMESPACES_ANNOTATION))
        .is_some_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n == from_namespace)
        });
    if granted {
        Ok(())
    } else {
        Err(RefError {
            reason: "RefNotPermitted",
            message: format!(
                "{kind} {namespace}/{name} is in another namespace and does not allow references from namespace {from_namespace:?} (add {from_namespace:?} to its annotation {})",
                crds::ALLOWED_NAMESPACES_ANNOTATION
            ),
        })
    }
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0)
}

fn endpoints_from_slices(slices: &[&EndpointSlice], port_name: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .as_ref()
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            })
            .and_then(|p| p.port)
            .and_then(port_u16)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            // Addresses of one endpoint are fungible; use the first.
            if let Some(address) = endpoint.addresses.first() {
                out.push(Endpoint {
                    host: address.clone(),
                    port,
                });
            }
        }
    }
    out
}

fn endpoints_from_core(endpoints: &Endpoints, port_name: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let Some(port) = subset
            .ports
            .as_ref()
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            })
            .and_then(|p| port_u16(p.port))
        else {
            continue;
        };
        for address in subset.addresses.iter().flatten() {
            out.push(Endpoint {
                host: address.ip.clone(),
                port,
            });
        }
    }
    out
}
