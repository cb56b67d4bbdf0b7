//! The admin listener (default 127.0.0.1:9901): `/healthz`, `/readyz`,
//! `/config`, `/metrics`, and `POST /cache/purge?prefix=...` (removes the
//! cached responses whose key starts with the prefix: `host/path...`,
//! percent-decoded; an empty prefix purges everything). Bound to loopback by default: it shows the
//! configuration summary and is not meant for the public.

use crate::Shared;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if shared.ready.load(Ordering::Acquire) {
                respond(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no snapshot loaded yet\n".into(),
                )
            }
        }
        "/config" => {
            let table = shared.table.load();
            let snapshot = &table.snapshot;
            let routes: usize = snapshot.virtual_hosts.iter().map(|v| v.routes.len()).sum();
            let body = serde_json::json!({
                "version": snapshot.version,
                "hash": snapshot.hash,
                "virtual_hosts": snapshot.virtual_hosts.len(),
                "routes": routes,
                "clusters": snapshot.clusters.len(),
                "endpoints": snapshot.clusters.values().map(|c| c.endpoints.len()).sum::<usize>(),
                "certificates": snapshot.certificates.iter().map(|c| serde_json::json!({
                    "name": c.name,
                    "hosts": c.hosts,
                    "not_after": c.not_after,
                })).collect::<Vec<_>>(),
                "auth_policies": snapshot.auth_policies.len(),
                "rate_limits": snapshot.rate_limits.len(),
            });
            respond(StatusCode::OK, "application/json", format!("{body}\n"))
        }
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(),
        ),
        "/cache/purge" => purge(&req, &shared).await,
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(response)
}

/// `POST /cache/purge?prefix=host/path`: removes cached responses by key
/// prefix and says how many.
async fn purge(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != http::Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST /cache/purge?prefix=host/path\n".into(),
        );
    }
    let prefix = req.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("prefix="))
            .map(percent_decode)
    });
    let Some(Some(prefix)) = prefix else {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "prefix is required (percent-encoded; prefix= with nothing purges everything)\n".into(),
        );
    };
    let purged = shared.cache.purge(&prefix).await;
    let body = serde_json::json!({ "prefix": prefix, "purged": purged });
    respond(StatusCode::OK, "application/json", format!("{body}\n"))
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Serves the admin endpoints until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone()));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
