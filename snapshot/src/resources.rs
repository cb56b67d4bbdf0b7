//! The compiler's input: every Kubernetes object it may read, as plain
//! collections. The controller fills it from its watch index; `ferrogate
//! serve` and `validate` fill it from YAML files.

use crds::{ApiRoute, AuthPolicy, RateLimitPolicy, TlsCertificate};
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// All objects the compiler reads. Order does not matter: the compiler sorts.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// ApiRoutes.
    pub api_routes: Vec<ApiRoute>,
    /// AuthPolicies.
    pub auth_policies: Vec<AuthPolicy>,
    /// RateLimitPolicies.
    pub rate_limit_policies: Vec<RateLimitPolicy>,
    /// TlsCertificates.
    pub tls_certificates: Vec<TlsCertificate>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices (`discovery.k8s.io/v1`). When a Service has slices,
    /// its Endpoints object is ignored.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Endpoints (core/v1), for clusters without EndpointSlice v1.
    pub endpoints: Vec<Endpoints>,
    /// Secrets (TLS, API keys, htpasswd, JWKS, HMAC).
    pub secrets: Vec<Secret>,
}
