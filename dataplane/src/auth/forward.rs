//! Forward authentication: ask an HTTP service whether a request may pass.
//!
//! The service gets `GET <url>` with the configured request headers and
//! `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto` and `-For` (no body).
//! A 2xx answer lets the request through and the configured answer headers
//! are copied to the upstream request; any other answer is returned to the
//! client as it is (status, headers, body up to 64 KiB). No answer within
//! the timeout, or no connection, refuses the request (fail closed, 503).

use super::Identity;
use crate::upstream::HttpClient;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use snapshot::model::ForwardConfig;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer body passed back to the client.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Headers of a denial never passed to the client.
const DROPPED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "set-cookie2",
];

/// One forward-auth method.
pub struct ForwardAuth {
    uri: Uri,
    host: HeaderValue,
    client: HttpClient,
    request_headers: Vec<HeaderName>,
    /// Answer headers copied to the upstream request.
    pub upstream_headers: Vec<HeaderName>,
    timeout: Duration,
}

/// What the service said.
pub enum Verdict {
    /// 2xx: pass, with these headers for the upstream.
    Allow(Identity, Vec<(HeaderName, HeaderValue)>),
    /// Anything else: this answer goes to the client.
    Deny(Response<Bytes>),
    /// No answer (connection failure, timeout, unreadable answer).
    Unreachable,
}

/// The request facts sent to the service.
pub struct Subject<'a> {
    /// The client's request headers.
    pub headers: &'a HeaderMap,
    /// Method.
    pub method: &'a http::Method,
    /// Path and query as received.
    pub uri: &'a Uri,
    /// Host.
    pub host: &'a str,
    /// The connection is TLS.
    pub tls: bool,
    /// The client's address.
    pub client_ip: IpAddr,
}

fn names(list: &[String]) -> Result<Vec<HeaderName>, String> {
    list.iter()
        .map(|h| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("{h:?} is not a header name"))
        })
        .collect()
}

impl ForwardAuth {
    /// Builds the method; `client` is the dataplane's own client.
    pub fn build(config: &ForwardConfig, client: HttpClient) -> Result<ForwardAuth, String> {
        let uri: Uri = config
            .url
            .parse()
            .map_err(|_| format!("forward auth URL {:?} is invalid", config.url))?;
        let host = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or_else(|| format!("forward auth URL {:?} has no host", config.url))?;
        Ok(ForwardAuth {
            uri,
            host,
            client,
            request_headers: names(&config.request_headers)?,
            upstream_headers: names(&config.upstream_headers)?,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        })
    }

    /// Asks the service.
    pub async fn check(&self, subject: &Subject<'_>) -> Verdict {
        let mut request = Request::new(Either::Right(Full::new(Bytes::new())));
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        for name in &self.request_headers {
            for value in subject.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::HOST, self.host.clone());
        let path = subject
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let forwarded = [
            ("x-forwarded-method", subject.method.as_str().to_owned()),
            ("x-forwarded-uri", path),
            ("x-forwarded-host", subject.host.to_owned()),
            (
                "x-forwarded-proto",
                if subject.tls { "https" } else { "http" }.to_owned(),
            ),
            ("x-forwarded-for", subject.client_ip.to_string()),
        ];
        for (name, value) in forwarded {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        let call = async {
            let response = self.client.request(request).await.ok()?;
            let (parts, body) = response.into_parts();
            if parts.status.is_success() {
                return Some(Verdict::Allow(
                    Identity {
                        consumer: None,
                        organization: None,
                        groups: Arc::new([]),
                        claims: None,
                        method: "forward",
                    },
                    self.upstream_headers
                        .iter()
                        .flat_map(|name| {
                            parts
                                .headers
                                .get_all(name)
                                .iter()
                                .map(move |v| (name.clone(), v.clone()))
                        })
                        .collect(),
                ));
            }
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .ok()?
                .to_bytes();
            let mut denial = Response::new(body);
            *denial.status_mut() = parts.status;
            for (name, value) in &parts.headers {
                if !DROPPED.contains(&name.as_str()) {
                    denial.headers_mut().append(name.clone(), value.clone());
                }
            }
            Some(Verdict::Deny(denial))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Some(verdict)) => verdict,
            Ok(None) | Err(_) => Verdict::Unreachable,
        }
    }
}
