//! Every way a request can fail, and the one place that turns a failure into
//! an HTTP response.
//!
//! A [`ProxyError`] records who caused it (the client, an upstream, or
//! Ferrogate itself) and whether another attempt may succeed. Responses are a
//! small JSON body with the status, a stable error code and the request id;
//! they never carry internal details (addresses, error chains), which go to
//! the log instead.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something we refuse.
    Client,
    /// An upstream failed or was unreachable.
    Upstream,
    /// Ferrogate's configuration or an internal limit.
    Internal,
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No virtual host or route matches.
    #[error("no route matches the request")]
    NoRoute,
    /// The request's Host is served by another certificate than the
    /// connection's SNI.
    #[error("host does not match the TLS server name of the connection")]
    Misdirected,
    /// The request is malformed (bad Host, bad URI).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Connecting to the upstream failed.
    #[error("upstream connect failed: {0}")]
    UpstreamConnect(String),
    /// The upstream failed after the request was sent.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The route's backend has no healthy endpoint (or no endpoints).
    #[error("no healthy endpoint")]
    NoHealthyEndpoint,
    /// The route names a cluster the snapshot does not have.
    #[error("backend not available")]
    BackendUnavailable,
    /// Too many connections or requests.
    #[error("overloaded")]
    Overloaded,
}

impl ProxyError {
    /// Who caused the failure.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute | ProxyError::Misdirected | ProxyError::BadRequest(_) => {
                Blame::Client
            }
            ProxyError::UpstreamConnect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::NoHealthyEndpoint => Blame::Upstream,
            ProxyError::BackendUnavailable | ProxyError::Overloaded => Blame::Internal,
        }
    }

    /// Whether another attempt may succeed without risk of doing the request
    /// twice (nothing reached the upstream).
    pub fn retry_safe(&self) -> bool {
        matches!(self, ProxyError::UpstreamConnect(_))
    }

    /// The status code the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamConnect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoHealthyEndpoint | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BackendUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable code for the body and the access log.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Misdirected => "misdirected_request",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UpstreamConnect(_) => "upstream_connect_failure",
            ProxyError::Upstream(_) => "upstream_failure",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::NoHealthyEndpoint => "no_healthy_endpoint",
            ProxyError::BackendUnavailable => "backend_unavailable",
            ProxyError::Overloaded => "overloaded",
        }
    }
}

/// Builds the JSON error response for `status` with `code` and the request
/// id. Used for proxy errors and for local refusals (401, 403, 429, 431).
pub fn error_response(status: StatusCode, code: &str, request_id: &str) -> Response<Bytes> {
    let body = serde_json::json!({
        "status": status.as_u16(),
        "error": code,
        "request_id": request_id,
    });
    let bytes = Bytes::from(body.to_string());
    let mut response = Response::new(bytes);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

impl ProxyError {
    /// The response the client gets for this error.
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        error_response(self.status(), self.code(), request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_and_hide_details() {
        let cases = [
            (ProxyError::NoRoute, 404),
            (ProxyError::Misdirected, 421),
            (
                ProxyError::UpstreamConnect("10.0.0.1:80 refused".into()),
                502,
            ),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::NoHealthyEndpoint, 503),
        ];
        for (error, status) in cases {
            let response = error.to_response("req-1");
            assert_eq!(response.status().as_u16(), status);
            let body: serde_json::Value =
                serde_json::from_slice(response.body()).expect("json body");
            assert_eq!(body["status"], status);
            assert_eq!(body["request_id"], "req-1");
            assert!(!String::from_utf8_lossy(response.body()).contains("10.0.0.1"));
        }
    }

    #[test]
    fn only_connect_failures_are_retry_safe() {
        assert!(ProxyError::UpstreamConnect(String::new()).retry_safe());
        assert!(!ProxyError::Upstream(String::new()).retry_safe());
        assert!(!ProxyError::UpstreamTimeout.retry_safe());
    }
}
