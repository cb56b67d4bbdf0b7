//! The demo's sample services: a small shop split into four HTTP services
//! (products, cart, payments, users) that answer with realistic JSON.
//!
//! Each service is a pure function from a request ([`Call`]) to an answer
//! ([`Answer`]), plus a thin hyper server around it. They exist so that
//! `ferrogate demo` shows the gateway's work on traffic that looks real:
//! product items with heavy fields for mobile trimming, a cart to rate-limit,
//! payments to protect, a user profile for the aggregated home page.
//!
//! Every answer carries `x-demo-service` (which service answered) and
//! `x-demo-upstream-requests` (how many requests that service has seen), so
//! a cached answer is visible: the count does not move.
//!
//! Memory is bounded: request bodies over [`MAX_BODY`] are refused and the
//! cart keeps at most [`MAX_CART_LINES`] lines.

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Largest request body a sample service reads.
pub const MAX_BODY: usize = 16 * 1024;
/// Lines the demo cart holds at most; older lines are dropped first.
pub const MAX_CART_LINES: usize = 100;

/// The four sample services, in port order (base, base+1, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The product catalogue.
    Products,
    /// The shopping cart.
    Cart,
    /// Payments.
    Payments,
    /// User profiles.
    Users,
}

impl Service {
    /// All services, in port order.
    pub const ALL: [Service; 4] = [
        Service::Products,
        Service::Cart,
        Service::Payments,
        Service::Users,
    ];

    /// The service's name, as shown in `x-demo-service`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Products => "products",
            Service::Cart => "cart",
            Service::Payments => "payments",
            Service::Users => "users",
        }
    }
}

/// What a sample service needs to know about a request.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: &'a [u8],
}

/// A sample service's answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// The JSON body.
    pub body: Value,
}

fn answer(status: StatusCode, body: Value) -> Answer {
    Answer { status, body }
}

fn not_found(path: &str) -> Answer {
    answer(
        StatusCode::NOT_FOUND,
        json!({"error": "not_found", "message": format!("no such resource: {path}")}),
    )
}

fn method_not_allowed(method: &Method) -> Answer {
    answer(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": "method_not_allowed", "message": format!("{method} is not supported here")}),
    )
}

/// State shared by the requests of one service.
#[derive(Debug, Default)]
pub struct State {
    requests: AtomicU64,
    cart: Mutex<Vec<Value>>,
    payments: AtomicU64,
}

impl State {
    /// Requests this service has answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// The catalogue: six products with the heavy fields (long description,
/// reviews, images) a phone does not need.
pub fn catalogue() -> Vec<Value> {
    let items = [
        ("p-100", "Trail Running Shoes", 129.00, "footwear", 42, 4.6),
        ("p-101", "Merino Wool Hoodie", 89.50, "apparel", 17, 4.8),
        (
            "p-102",
            "Insulated Water Bottle",
            24.90,
            "accessories",
            230,
            4.4,
        ),
        ("p-103", "Ultralight Rain Jacket", 159.00, "apparel", 8, 4.7),
        ("p-104", "Headlamp 400 lm", 39.95, "accessories", 64, 4.5),
        ("p-105", "Daypack 24 L", 74.00, "bags", 0, 4.3),
    ];
    items
        .iter()
        .map(|(id, name, price, category, stock, rating)| {
            json!({
                "id": id,
                "name": name,
                "category": category,
                "price": {"amount": price, "currency": "EUR"},
                "inStock": *stock > 0,
                "stock": stock,
                "rating": rating,
                "description": format!(
                    "{name}: designed for long days outdoors and tested by our team on \
                     mountain trails in all seasons. Free returns within 30 days; two-year \
                     warranty; ships in recycled packaging."
                ),
                "reviews": [
                    {"author": "Mara K.", "rating": 5, "text": "Exactly as described, fast delivery."},
                    {"author": "Jonas P.", "rating": 4, "text": "Good quality for the price; runs slightly small."}
                ],
                "images": [
                    format!("https://cdn.shop.localhost/img/{id}/front-1600.jpg"),
                    format!("https://cdn.shop.localhost/img/{id}/side-1600.jpg"),
                    format!("https://cdn.shop.localhost/img/{id}/detail-1600.jpg")
                ],
            })
        })
        .collect()
}

fn products(call: &Call<'_>) -> Answer {
    if call.method != Method::GET && call.method != Method::HEAD {
        return method_not_allowed(call.method);
    }
    let items = catalogue();
    match call.path.trim_end_matches('/') {
        "/products" => answer(
            StatusCode::OK,
            json!({"items": items, "total": items.len(), "page": 1, "pageSize": 20}),
        ),
        "/products/featured" => {
            let featured: Vec<Value> = items
                .into_iter()
                .filter(|item| item["rating"].as_f64().unwrap_or(0.0) >= 4.6)
                .collect();
            answer(StatusCode::OK, json!({"items": featured}))
        }
        path => match path.strip_prefix("/products/") {
            Some(id) => items
                .into_iter()
                .find(|item| item["id"] == id)
                .map_or_else(|| not_found(call.path), |item| answer(StatusCode::OK, item)),
            None => not_found(call.path),
        },
    }
}

fn cart_view(lines: &[Value]) -> Value {
    let count: u64 = lines.iter().filter_map(|l| l["quantity"].as_u64()).sum();
    // A fold from +0.0: an empty f64 sum is -0.0, which would print as such.
    let subtotal = lines.iter().fold(0.0, |sum, l| {
        sum + l["unitPrice"]["amount"].as_f64().unwrap_or(0.0)
            * l["quantity"].as_f64().unwrap_or(0.0)
    });
    json!({
        "items": lines,
        "count": count,
        "subtotal": {"amount": (subtotal * 100.0).round() / 100.0, "currency": "EUR"},
    })
}

fn cart(call: &Call<'_>, state: &State) -> Answer {
    let path = call.path.trim_end_matches('/');
    let mut lines = match state.cart.lock() {
        Ok(lines) => lines,
        Err(poisoned) => poisoned.into_inner(),
    };
    match (call.method, path) {
        (&Method::GET | &Method::HEAD, "/cart") => answer(StatusCode::OK, cart_view(&lines)),
        (&Method::DELETE, "/cart") => {
            lines.clear();
            answer(StatusCode::OK, cart_view(&lines))
        }
        (&Method::POST, "/cart/items") => {
            let request: Value = if call.body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(call.body) {
                    Ok(value) => value,
                    Err(e) => {
                        return answer(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "invalid_json", "message": e.to_string()}),
                        )
                    }
                }
            };
            let product_id = request["productId"].as_str().unwrap_or("p-100");
            let quantity = request["quantity"].as_u64().unwrap_or(1).clamp(1, 99);
            let Some(product) = catalogue().into_iter().find(|p| p["id"] == product_id) else {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error": "unknown_product", "message": format!("no product {product_id}")}),
                );
            };
            if lines.len() >= MAX_CART_LINES {
                lines.remove(0);
            }
            let line = json!({
                "productId": product_id,
                "name": product["name"],
                "quantity": quantity,
                "unitPrice": product["price"],
            });
            lines.push(line.clone());
            answer(
                StatusCode::CREATED,
                json!({"added": line, "cart": cart_view(&lines)}),
            )
        }
        (_, "/cart" | "/cart/items") => method_not_allowed(call.method),
        _ => not_found(call.path),
    }
}

fn payments(call: &Call<'_>, state: &State) -> Answer {
    // What the gateway passed on: the route's request header, and whether
    // the caller's credentials reached us (they are stripped by default).
    let seen = json!({
        "x-forwarded-service": call.headers.get("x-forwarded-service").and_then(|v| v.to_str().ok()),
        "credentialsForwarded": call.headers.contains_key(header::AUTHORIZATION)
            || call.headers.contains_key("x-api-key"),
    });
    match (call.method, call.path.trim_end_matches('/')) {
        (&Method::GET | &Method::HEAD, "/payments") => answer(
            StatusCode::OK,
            json!({
                "payments": [
                    {"id": "pay_7Qm2", "amount": {"amount": 218.50, "currency": "EUR"}, "status": "captured", "method": "card", "createdAt": "2026-11-20T09:14:03Z"},
                    {"id": "pay_7Qm1", "amount": {"amount": 39.95, "currency": "EUR"}, "status": "refunded", "method": "paypal", "createdAt": "2026-11-12T17:40:51Z"}
                ],
                "gateway": seen,
            }),
        ),
        (&Method::POST, "/payments") => {
            let n = state.payments.fetch_add(1, Ordering::Relaxed) + 1;
            answer(
                StatusCode::CREATED,
                json!({"id": format!("pay_demo{n:04}"), "status": "authorized", "gateway": seen}),
            )
        }
        (_, "/payments") => method_not_allowed(call.method),
        _ => not_found(call.path),
    }
}

fn users(call: &Call<'_>) -> Answer {
    if call.method != Method::GET && call.method != Method::HEAD {
        return method_not_allowed(call.method);
    }
    let profile = |id: &str, name: &str, email: &str, org: &str, tier: &str| {
        json!({
            "id": id,
            "name": name,
            "email": email,
            "organization": org,
            "loyalty": {"tier": tier, "points": 1240},
            "addresses": [{"type": "shipping", "city": "Lyon", "country": "FR"}],
        })
    };
    match call.path.trim_end_matches('/') {
        "/users/me" => answer(
            StatusCode::OK,
            profile(
                "u-1001",
                "Alice Martin",
                "alice@shop.localhost",
                "A",
                "gold",
            ),
        ),
        "/users/u-1001" => answer(
            StatusCode::OK,
            profile(
                "u-1001",
                "Alice Martin",
                "alice@shop.localhost",
                "A",
                "gold",
            ),
        ),
        "/users/u-1002" => answer(
            StatusCode::OK,
            profile(
                "u-1002",
                "Bob Schneider",
                "bob@shop.localhost",
                "B",
                "silver",
            ),
        ),
        _ => not_found(call.path),
    }
}

/// Answers one call of `service`. Pure apart from `state` (request count,
/// cart lines).
pub fn respond(service: Service, call: &Call<'_>, state: &State) -> Answer {
    state.requests.fetch_add(1, Ordering::Relaxed);
    match service {
        Service::Products => products(call),
        Service::Cart => cart(call, state),
        Service::Payments => payments(call, state),
        Service::Users => users(call),
    }
}

async fn handle(
    service: Service,
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"{\"error\":\"body_too_large\"}\n",
            )));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Ok(response);
        }
    };
    let call = Call {
        method: &parts.method,
        path: parts.uri.path(),
        headers: &parts.headers,
        body: &body,
    };
    let Answer { status, body } = respond(service, &call, &state);
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-demo-service",
        header::HeaderValue::from_static(service.name()),
    );
    headers.insert(
        "x-demo-upstream-requests",
        header::HeaderValue::from(state.requests()),
    );
    Ok(response)
}

/// Serves `service` on `listener` until the task is dropped.
pub async fn serve(service: Service, listener: TcpListener) {
    let state = Arc::new(State::default());
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off briefly.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(service, state.clone(), req));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(
        method: &'a Method,
        path: &'a str,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> Call<'a> {
        Call {
            method,
            path,
            headers,
            body,
        }
    }

    #[test]
    fn products_list_carries_the_heavy_fields_mobile_trimming_removes() {
        let state = State::default();
        let h = HeaderMap::new();
        let a = respond(
            Service::Products,
            &call(&Method::GET, "/products", &h, b""),
            &state,
        );
        assert_eq!(a.status, StatusCode::OK);
        let items = a.body["items"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(items, 6);
        for field in ["description", "reviews", "images", "price", "name"] {
            assert!(!a.body["items"][0][field].is_null(), "{field} missing");
        }
        let one = respond(
            Service::Products,
            &call(&Method::GET, "/products/p-103", &h, b""),
            &state,
        );
        assert_eq!(one.body["name"], "Ultralight Rain Jacket");
        let none = respond(
            Service::Products,
            &call(&Method::GET, "/products/nope", &h, b""),
            &state,
        );
        assert_eq!(none.status, StatusCode::NOT_FOUND);
        assert_eq!(state.requests(), 3);
    }

    #[test]
    fn cart_adds_lines_and_stays_bounded() {
        let state = State::default();
        let h = HeaderMap::new();
        let added = respond(
            Service::Cart,
            &call(
                &Method::POST,
                "/cart/items",
                &h,
                br#"{"productId":"p-101","quantity":2}"#,
            ),
            &state,
        );
        assert_eq!(added.status, StatusCode::CREATED);
        assert_eq!(added.body["cart"]["count"], 2);
        assert_eq!(added.body["cart"]["subtotal"]["amount"], 179.0);
        for _ in 0..(MAX_CART_LINES + 10) {
            respond(
                Service::Cart,
                &call(&Method::POST, "/cart/items", &h, b""),
                &state,
            );
        }
        let view = respond(Service::Cart, &call(&Method::GET, "/cart", &h, b""), &state);
        assert_eq!(
            view.body["items"].as_array().map(Vec::len),
            Some(MAX_CART_LINES)
        );
        let bad = respond(
            Service::Cart,
            &call(&Method::POST, "/cart/items", &h, b"{"),
            &state,
        );
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let unknown = respond(
            Service::Cart,
            &call(&Method::POST, "/cart/items", &h, br#"{"productId":"zzz"}"#),
            &state,
        );
        assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn payments_report_whether_credentials_reached_them() {
        let state = State::default();
        let mut h = HeaderMap::new();
        let a = respond(
            Service::Payments,
            &call(&Method::GET, "/payments", &h, b""),
            &state,
        );
        assert_eq!(a.body["gateway"]["credentialsForwarded"], false);
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer x"),
        );
        let a = respond(
            Service::Payments,
            &call(&Method::GET, "/payments", &h, b""),
            &state,
        );
        assert_eq!(a.body["gateway"]["credentialsForwarded"], true);
        let created = respond(
            Service::Payments,
            &call(&Method::POST, "/payments", &h, b""),
            &state,
        );
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(created.body["id"], "pay_demo0001");
    }

    #[test]
    fn users_answer_me_and_known_ids() {
        let state = State::default();
        let h = HeaderMap::new();
        let me = respond(
            Service::Users,
            &call(&Method::GET, "/users/me", &h, b""),
            &state,
        );
        assert_eq!(me.body["organization"], "A");
        let bob = respond(
            Service::Users,
            &call(&Method::GET, "/users/u-1002", &h, b""),
            &state,
        );
        assert_eq!(bob.body["name"], "Bob Schneider");
        let post = respond(
            Service::Users,
            &call(&Method::POST, "/users/me", &h, b""),
            &state,
        );
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
