//! The watchers: one kube-runtime watcher (list, then watch, with the
//! default exponential backoff on errors) per kind and namespace scope,
//! each feeding the [`SharedIndex`].
//!
//! ```text
//! apiserver ─► watcher(Api<K>, selectors).default_backoff()
//!               Init ─► buffer ─► InitDone ─► Index::replace_scope (one swap)
//!               Apply ─► Index::apply      Delete ─► Index::delete
//! ```
//!
//! What is watched:
//!
//! - ApiRoutes, AuthPolicies, RateLimitPolicies, TlsCertificates, Services;
//! - endpoints: EndpointSlices (`discovery.k8s.io/v1`) when the cluster
//!   serves that version (asked once at start through discovery), else
//!   core/v1 Endpoints;
//! - Secrets: their metadata only (no data); [`crate::secrets`] reads
//!   the data of the Secrets Ferrogate resources reference.
//!
//! With `--namespaces a,b` every kind is watched in each listed namespace
//! (a watcher per kind and namespace, RBAC can then be namespaced Roles);
//! otherwise across all namespaces.

use crate::index::{stores, Index, Indexed, SharedIndex, Store};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Which endpoint kind the cluster offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSlices,
    /// core/v1 Endpoints (clusters older than 1.21).
    Endpoints,
}

/// Asks discovery whether `discovery.k8s.io/v1` is served.
pub async fn endpoint_source(client: &Client) -> Result<EndpointSource, kube::Error> {
    let groups = client.list_api_groups().await?;
    let served = groups
        .groups
        .iter()
        .any(|g| g.name == "discovery.k8s.io" && g.versions.iter().any(|v| v.version == "v1"));
    Ok(if served {
        EndpointSource::EndpointSlices
    } else {
        EndpointSource::Endpoints
    })
}

/// Starts every watcher on `tasks`. `namespaces` empty means all.
pub fn spawn_all(
    tasks: &mut JoinSet<()>,
    client: &Client,
    namespaces: &[String],
    endpoints: EndpointSource,
    shared: &Arc<SharedIndex>,
) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let plain = watcher::Config::default();
    for scope in scopes {
        let s = &scope;
        spawn(tasks, client, s, shared, stores::api_routes, plain.clone());
        spawn(
            tasks,
            client,
            s,
            shared,
            stores::auth_policies,
            plain.clone(),
        );
        spawn(
            tasks,
            client,
            s,
            shared,
            stores::rate_limit_policies,
            plain.clone(),
        );
        spawn(
            tasks,
            client,
            s,
            shared,
            stores::tls_certificates,
            plain.clone(),
        );
        spawn(tasks, client, s, shared, stores::services, plain.clone());
        match endpoints {
            EndpointSource::EndpointSlices => spawn(
                tasks,
                client,
                s,
                shared,
                stores::endpoint_slices,
                plain.clone(),
            ),
            EndpointSource::Endpoints => {
                spawn(tasks, client, s, shared, stores::endpoints, plain.clone())
            }
        }
        spawn::<PartialObjectMeta<Secret>>(
            tasks,
            client,
            s,
            shared,
            stores::secret_meta,
            plain.clone(),
        );
    }
}

fn spawn<K>(
    tasks: &mut JoinSet<()>,
    client: &Client,
    namespace: &Option<String>,
    shared: &Arc<SharedIndex>,
    store: fn(&mut Index) -> &mut Store<K>,
    config: watcher::Config,
) where
    K: Indexed
        + kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    shared.register_watcher();
    tasks.spawn(run(api, config, shared.clone(), store, namespace.clone()));
}

async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<SharedIndex>,
    store: fn(&mut Index) -> &mut Store<K>,
    namespace: Option<String>,
) where
    K: Indexed + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let scope = namespace.as_deref().unwrap_or("*");
    let mut synced = false;
    let mut buffer: Vec<K> = Vec::new();
    let stream = watcher::watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(object)) => {
                shared.update(|index| index.apply(store, object));
            }
            Ok(Event::Delete(object)) => {
                shared.update(|index| index.delete(store, &object));
            }
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(object)) => buffer.push(object),
            Ok(Event::InitDone) => {
                let objects = std::mem::take(&mut buffer);
                let count = objects.len();
                shared.update(|index| index.replace_scope(store, namespace.as_deref(), objects));
                if !synced {
                    synced = true;
                    shared.watcher_synced();
                    tracing::info!(kind = %kind, namespace = scope, objects = count, "listed");
                } else {
                    tracing::debug!(kind = %kind, namespace = scope, objects = count, "re-listed");
                }
            }
            Err(error) => {
                tracing::warn!(kind = %kind, namespace = scope, error = %error, "watch failed; retrying with backoff");
            }
        }
    }
}
