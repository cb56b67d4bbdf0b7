//! The admin listener (default 127.0.0.1:9901): `/healthz`, `/readyz`,
//! `/config` and `/metrics`. Bound to loopback by default: it shows the
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
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(response)
}

/// Serves the admin endpoints until `shutdown` turns true.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
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
