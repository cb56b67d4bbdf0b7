//! AuthPolicy end to end: the real `ferrogate serve`, a real upstream, a
//! JWKS server and a forward-auth service under the test's control, tokens
//! minted here. Every refused request is also checked not to have reached
//! the upstream.

mod support;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{upstream, Answer, Behavior, Client, Gateway, Upstream};
use tokio::net::TcpListener;

const HOST: &str = "api.test";
const ISSUER: &str = "https://issuer.test";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A route `api` for HOST sending everything to `backend`.
fn route(backend: &Upstream) -> String {
    support::route_yaml("api", HOST, "/", &format!("http://{}", backend.addr))
}

/// An AuthPolicy `auth` on the route `api` with `spec` (YAML, indented by
/// two spaces under `spec:`).
fn policy(spec: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth, namespace: default}}
spec:
  targetRefs: [{{kind: ApiRoute, name: api}}]
{spec}"
    )
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture key")
}

/// A signing key and its public JWK (with `kid`).
struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
    jwk: Jwk,
}

fn rsa_key(file: &str, kid: &str) -> SigningKey {
    let key = EncodingKey::from_rsa_pem(&fixture(file)).expect("RSA key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    SigningKey {
        key,
        alg: Algorithm::RS256,
        kid: kid.to_owned(),
        jwk,
    }
}

fn ec_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let key = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    SigningKey {
        key,
        alg: Algorithm::ES256,
        kid: kid.to_owned(),
        jwk,
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .expect("jwks json")
}

/// Standard claims valid for an hour.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": "shop",
        "sub": "alice",
        "org": "A",
        "groups": ["buyers"],
        "tier": "gold",
        "iat": now(),
        "exp": now() + 3600,
    })
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn mint(key: &SigningKey, claims: &Value) -> String {
    mint_with(key, key.alg, Some(&key.kid), claims)
}

fn mint_with(key: &SigningKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.key).expect("sign token")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS endpoint whose document and availability the test changes.
struct JwksServer {
    addr: SocketAddr,
    state: Arc<Mutex<(String, bool, usize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new((document, true, 0usize)));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let (body, up) = {
                                let mut s = state.lock().expect("jwks state");
                                s.2 += 1;
                                (s.0.clone(), s.1)
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            if !up {
                                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn set(&self, document: String) {
        self.state.lock().expect("jwks state").0 = document;
    }

    fn set_up(&self, up: bool) {
        self.state.lock().expect("jwks state").1 = up;
    }

    fn fetches(&self) -> usize {
        self.state.lock().expect("jwks state").2
    }
}

async fn bearer(client: &Client, token: &str) -> Answer {
    client
        .send(
            "GET",
            HOST,
            "/orders",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
}

fn jwt_policy(jwks_uri: &str, extra: &str) -> String {
    policy(&format!(
        "  authentication:
    methods:
    - jwt:
        issuer: {ISSUER}
        audiences: [shop]
        algorithms: [RS256, ES256]
        jwksUri: \"{jwks_uri}\"
        claimsToHeaders:
        - {{claim: sub, header: x-user}}
        - {{claim: org, header: x-org}}
{extra}"
    ))
}

#[tokio::test]
async fn valid_tokens_pass_and_claims_reach_the_upstream() {
    let backend = upstream("backend", Behavior::default()).await;
    let rsa = rsa_key("rsa-1.pem", "k1");
    let ec = ec_key("e1");
    let server = JwksServer::start(jwks(&[&rsa, &ec])).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        ("auth.yaml", &jwt_policy(&server.url(), "")),
    ]);
    let client = Client::new(gateway.http);

    let answer = bearer(&client, &mint(&rsa, &claims())).await;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.log());
    let seen = answer.json()["headers"].clone();
    assert_eq!(seen["x-user"], "alice");
    assert_eq!(seen["x-org"], "A");
    assert!(
        seen.get("authorization").is_none(),
        "the token is stripped: {seen}"
    );

    // ES256 from the same JWKS.
    let answer = bearer(&client, &mint(&ec, &claims())).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // A client cannot forge the claim headers.
    let answer = client
        .send(
            "GET",
            HOST,
            "/orders",
            &[
                (
                    "authorization",
                    &format!(
                        "Bearer {}",
                        mint(&rsa, &with(claims(), json!({"org": null})))
                    ),
                ),
                ("x-org", "forged"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.json()["headers"].get("x-org").is_none(),
        "{}",
        answer.body
    );

    // `exp` a little in the past is within the 30 s skew.
    let answer = bearer(
        &client,
        &mint(&rsa, &with(claims(), json!({"exp": now() - 10}))),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn bad_tokens_get_401_and_never_reach_the_upstream() {
    let backend = upstream("backend", Behavior::default()).await;
    let rsa = rsa_key("rsa-1.pem", "k1");
    let server = JwksServer::start(jwks(&[&rsa])).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        ("auth.yaml", &jwt_policy(&server.url(), "")),
    ]);
    let client = Client::new(gateway.http);
    // Warm the JWKS cache so that every case below is about the token.
    assert_eq!(bearer(&client, &mint(&rsa, &claims())).await.status, 200);
    let hits_before = backend.hits();

    let valid = mint(&rsa, &claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let header_json =
        |alg: &str| b64(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k1"}}"#).as_bytes());
    let payload = b64(claims().to_string().as_bytes());

    // alg=none, unsigned.
    let none = format!("{}.{payload}.", header_json("none"));
    // HS256 "signed" with the RSA public key as the HMAC secret.
    let public_pem = fixture("rsa-1.pub.pem");
    let hs_key = SigningKey {
        key: EncodingKey::from_secret(&public_pem),
        alg: Algorithm::HS256,
        kid: "k1".into(),
        jwk: rsa.jwk.clone(),
    };
    let confused = mint(&hs_key, &claims());
    // RS512: a real signature with the right key, but not an allowed
    // algorithm.
    let rs512 = mint_with(&rsa, Algorithm::RS512, Some("k1"), &claims());
    // Tampered payload: sub changed after signing.
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(with(claims(), json!({"sub": "admin"}))
            .to_string()
            .as_bytes()),
        parts[2]
    );
    let unknown_kid = mint_with(&rsa, Algorithm::RS256, Some("nope"), &claims());
    let long_kid = "k".repeat(20_000);
    let hostile_kids = [
        "k".repeat(2_000),
        "../../../../etc/passwd".to_owned(),
        "' OR '1'='1".to_owned(),
        "http://evil.example/jwks.json".to_owned(),
        "\u{0}\r\nx-injected: 1".to_owned(),
        long_kid,
    ];

    let cases: Vec<(&str, String)> = vec![
        ("alg none", none),
        ("HS256 with the RSA public key", confused),
        ("algorithm not allowed", rs512),
        (
            "expired beyond skew",
            mint(&rsa, &with(claims(), json!({"exp": now() - 120}))),
        ),
        (
            "nbf in the future",
            mint(&rsa, &with(claims(), json!({"nbf": now() + 600}))),
        ),
        (
            "iat in the future",
            mint(&rsa, &with(claims(), json!({"iat": now() + 600}))),
        ),
        (
            "wrong iss",
            mint(&rsa, &with(claims(), json!({"iss": "https://evil.test"}))),
        ),
        (
            "wrong aud",
            mint(&rsa, &with(claims(), json!({"aud": "other"}))),
        ),
        (
            "missing exp",
            mint(&rsa, &with(claims(), json!({"exp": null}))),
        ),
        ("tampered payload", tampered),
        ("unknown kid", unknown_kid),
        ("garbage", "not.a.token".to_owned()),
        ("empty signature", format!("{}.{}.", parts[0], parts[1])),
    ];
    let mut cases = cases;
    for kid in &hostile_kids {
        cases.push((
            "hostile kid",
            mint_with(&rsa, Algorithm::RS256, Some(kid), &claims()),
        ));
    }
    for (what, token) in &cases {
        let answer = bearer(&client, token).await;
        assert_eq!(answer.status, 401, "{what}: {answer:?}");
        assert_eq!(answer.json()["error"], "invalid_credentials", "{what}");
        let challenge = answer
            .headers
            .get("www-authenticate")
            .cloned()
            .unwrap_or_default();
        assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
    }
    // No token at all.
    let answer = client.get(HOST, "/orders").await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"], "missing_credentials");
    assert_eq!(
        answer.headers["www-authenticate"],
        "Bearer realm=\"ferrogate\""
    );

    assert_eq!(
        backend.hits(),
        hits_before,
        "a refused request reached the upstream"
    );
    // Hostile and unknown kids cost at most a couple of refetches.
    assert!(server.fetches() <= 3, "{} JWKS fetches", server.fetches());
    let metrics = support::blocking_get(gateway.admin, "/metrics");
    for reason in [
        "algorithm",
        "expired",
        "signature",
        "unknown_key",
        "audience",
        "issuer",
        "missing_exp",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "no auth_refusals for {reason}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn jwks_key_rotation_is_picked_up() {
    let backend = upstream("backend", Behavior::default()).await;
    let old = rsa_key("rsa-1.pem", "old");
    let new = rsa_key("rsa-2.pem", "new");
    let server = JwksServer::start(jwks(&[&old])).await;
    // Cache for 20 s: the refetch for an unknown kid (cooldown 2 s) is what
    // picks up the new key, not the cache expiry.
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "auth.yaml",
            &jwt_policy(&server.url(), "        jwksCacheDuration: 20s\n"),
        ),
    ]);
    let client = Client::new(gateway.http);
    let old_token = mint(&old, &claims());
    assert_eq!(bearer(&client, &old_token).await.status, 200);

    // The issuer rotates: only the new key is published.
    server.set(jwks(&[&new]));
    let new_token = mint(&new, &claims());
    let started = Instant::now();
    support::eventually(
        Duration::from_secs(10),
        "the new key to be accepted",
        async || bearer(&client, &new_token).await.status == 200,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The old key is gone: its (cached) token no longer passes.
    assert_eq!(bearer(&client, &old_token).await.status, 401);
}

#[tokio::test]
async fn jwks_outage_keeps_cached_keys_then_fails_closed() {
    let backend = upstream("backend", Behavior::default()).await;
    let key = rsa_key("rsa-1.pem", "k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "auth.yaml",
            &jwt_policy(
                &server.url(),
                "        jwksCacheDuration: 1s\n        jwksMaxStaleness: 4s\n",
            ),
        ),
    ]);
    let client = Client::new(gateway.http);
    let token = mint(&key, &claims());
    assert_eq!(bearer(&client, &token).await.status, 200);

    server.set_up(false);
    let down_at = Instant::now();
    // Past the cache duration, within the staleness limit: cached keys.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        bearer(&client, &token).await.status,
        200,
        "cached keys during the outage"
    );
    // Past the staleness limit: fail closed.
    support::eventually(
        Duration::from_secs(10),
        "requests to fail closed",
        async || bearer(&client, &token).await.status == 401,
    )
    .await;
    assert!(
        down_at.elapsed() >= Duration::from_millis(2_500),
        "failed closed too early"
    );
    let hits = backend.hits();
    assert_eq!(bearer(&client, &token).await.status, 401);
    assert_eq!(backend.hits(), hits);

    // The JWKS comes back: so does the service.
    server.set_up(true);
    support::eventually(Duration::from_secs(10), "recovery", async || {
        bearer(&client, &token).await.status == 200
    })
    .await;
}

/// A Secret holding an API key for `consumer` of `organization`.
fn api_key_secret(
    name: &str,
    key: &str,
    consumer: &str,
    organization: &str,
    groups: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: default
  labels: {{auth.test/consumer: \"true\"}}
stringData:
  api-key: {key}
  consumer: {consumer}
  organization: {organization}
  groups: {groups}
"
    )
}

fn api_key_secrets() -> String {
    [
        api_key_secret("alice", "key-alice-0123456789", "alice", "A", "buyers"),
        api_key_secret("bob", "key-bob-0123456789", "bob", "B", "buyers,admins"),
        api_key_secret("carol", "key-carol-0123456789", "carol", "C", "buyers"),
    ]
    .join("---\n")
}

#[tokio::test]
async fn api_keys_and_organization_rules() {
    let backend = upstream("backend", Behavior::default()).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        ("secrets.yaml", &api_key_secrets()),
        (
            "auth.yaml",
            &policy(
                "  authentication:
    methods:
    - apiKey:
        secretSelector: {auth.test/consumer: \"true\"}
  authorization:
    rules:
    - name: admins-only-delete
      action: Deny
      methods: [DELETE]
      paths: [/orders]
    - name: organizations-a-and-b
      action: Allow
      organizations: [A, B]
",
            ),
        ),
    ]);
    let client = Client::new(gateway.http);
    let with_key = |key: &'static str| [("x-api-key", key)];

    let a = client
        .send("GET", HOST, "/orders", &with_key("key-alice-0123456789"))
        .await;
    assert_eq!(a.status, 200, "{a:?}\n{}", gateway.log());
    assert!(
        a.json()["headers"].get("x-api-key").is_none(),
        "the key is stripped"
    );
    let b = client
        .send("GET", HOST, "/orders", &with_key("key-bob-0123456789"))
        .await;
    assert_eq!(b.status, 200);

    let hits = backend.hits();
    let c = client
        .send("GET", HOST, "/orders", &with_key("key-carol-0123456789"))
        .await;
    assert_eq!(c.status, 403, "{c:?}");
    assert_eq!(c.headers["content-type"], "application/json");
    assert_eq!(c.json()["error"], "forbidden");
    let delete = client
        .send(
            "DELETE",
            HOST,
            "/orders/7",
            &with_key("key-alice-0123456789"),
        )
        .await;
    assert_eq!(delete.status, 403);
    let unknown = client
        .send("GET", HOST, "/orders", &with_key("key-mallory"))
        .await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.headers.contains_key("www-authenticate"));
    let missing = client.get(HOST, "/orders").await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        backend.hits(),
        hits,
        "refused requests reached the upstream"
    );
    assert!(!gateway.log().contains("key-mallory"), "a key was logged");
}

#[tokio::test]
async fn api_keys_from_a_query_parameter_are_stripped() {
    let backend = upstream("backend", Behavior::default()).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        ("secrets.yaml", &api_key_secrets()),
        (
            "auth.yaml",
            &policy(
                "  authentication:
    methods:
    - apiKey:
        secretSelector: {auth.test/consumer: \"true\"}
        keyFrom: {query: api_key}
",
            ),
        ),
    ]);
    let client = Client::new(gateway.http);
    let answer = client
        .get(HOST, "/orders?page=2&api_key=key-bob-0123456789&sort=asc")
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["uri"], "/orders?page=2&sort=asc");
    assert_eq!(client.get(HOST, "/orders?api_key=wrong").await.status, 401);
    // Neither key reaches the access log (it logs the path without the
    // query) nor the gateway's own log.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gateway.stdout_lines().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = gateway.stdout_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for text in [lines.join("\n"), gateway.log()] {
        assert!(
            !text.contains("key-bob-0123456789"),
            "a key was logged: {text}"
        );
        assert!(
            !text.contains("api_key"),
            "the key parameter was logged: {text}"
        );
    }
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(first["path"], "/orders");
}

#[tokio::test]
async fn basic_auth_against_a_bcrypt_htpasswd() {
    let backend = upstream("backend", Behavior::default()).await;
    let htpasswd = format!(
        "alice:{}\nbob:{}\n",
        bcrypt::hash("wonderland", 5).expect("bcrypt"),
        bcrypt::hash("builder", 5).expect("bcrypt"),
    );
    let secret = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: users, namespace: default}}
stringData:
  htpasswd: |
{}",
        htpasswd
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        ("secret.yaml", &secret),
        (
            "auth.yaml",
            &policy(
                "  authentication:
    methods:
    - basic:
        secretRef: {name: users, key: htpasswd}
        realm: shop
",
            ),
        ),
    ]);
    let client = Client::new(gateway.http);
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let ok = client
        .send(
            "GET",
            HOST,
            "/",
            &[("authorization", &basic("alice", "wonderland"))],
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gateway.log());
    assert!(ok.json()["headers"].get("authorization").is_none());
    let hits = backend.hits();
    for (user, password) in [("alice", "builder"), ("mallory", "wonderland"), ("", "x")] {
        let answer = client
            .send(
                "GET",
                HOST,
                "/",
                &[("authorization", &basic(user, password))],
            )
            .await;
        assert_eq!(answer.status, 401, "{user}:{password}");
        assert_eq!(
            answer.headers["www-authenticate"],
            "Basic realm=\"shop\", charset=\"UTF-8\""
        );
    }
    assert_eq!(client.get(HOST, "/").await.status, 401);
    assert_eq!(backend.hits(), hits);
}

type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

/// A forward-auth service: `Bearer good` passes (with `x-auth-user` and
/// an exchanged `authorization`),
/// anything else gets 403 with a JSON body. While `slow` is set it takes
/// 3 s to answer.
async fn auth_service() -> (
    SocketAddr,
    Seen,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind auth service");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let slow = Arc::new(AtomicBool::new(false));
    let (log, is_slow) = (seen.clone(), slow.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (log, is_slow) = (log.clone(), is_slow.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (log, is_slow) = (log.clone(), is_slow.clone());
                    async move {
                        if is_slow.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        log.lock().expect("log").push(req.headers().clone());
                        let good = req
                            .headers()
                            .get("authorization")
                            .is_some_and(|v| v == "Bearer good");
                        let response = if good {
                            Response::builder()
                                .header("x-auth-user", "alice")
                                .header("authorization", "Bearer exchanged")
                                .header("x-ignored", "1")
                                .body(Full::new(Bytes::new()))
                        } else {
                            Response::builder()
                                .status(403)
                                .header("content-type", "application/json")
                                .header("x-auth-reason", "bad token")
                                .body(Full::new(Bytes::from_static(
                                    br#"{"denied":"by the auth service"}"#,
                                )))
                        };
                        Ok::<_, std::convert::Infallible>(response.expect("response"))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, slow, task)
}

fn forward_policy(url: &str) -> String {
    policy(&format!(
        "  authentication:
    methods:
    - forward:
        url: \"{url}\"
        requestHeaders: [Authorization]
        upstreamHeaders: [X-Auth-User, Authorization]
        timeout: 500ms
"
    ))
}

#[tokio::test]
async fn forward_auth_allows_denies_and_fails_closed() {
    let backend = upstream("backend", Behavior::default()).await;
    let (auth_addr, seen, slow, _task) = auth_service().await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "auth.yaml",
            &forward_policy(&format!("http://{auth_addr}/check")),
        ),
    ]);
    let client = Client::new(gateway.http);

    let ok = client
        .send(
            "POST",
            HOST,
            "/cart?item=7",
            &[
                ("authorization", "Bearer good"),
                ("x-auth-user", "forged"),
                ("cookie", "c=1"),
            ],
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gateway.log());
    let upstream_saw = ok.json()["headers"].clone();
    assert_eq!(upstream_saw["x-auth-user"], "alice", "{upstream_saw}");
    // The service may exchange the client's credential for another.
    assert_eq!(upstream_saw["authorization"], "Bearer exchanged");
    assert!(upstream_saw.get("x-ignored").is_none());
    {
        let seen = seen.lock().expect("seen");
        let asked = seen.last().expect("the service was asked");
        assert_eq!(asked["x-forwarded-method"], "POST");
        assert_eq!(asked["x-forwarded-uri"], "/cart?item=7");
        assert_eq!(asked["x-forwarded-host"], HOST);
        assert!(
            asked.get("cookie").is_none(),
            "only the chosen headers are sent"
        );
    }

    let hits = backend.hits();
    let denied = client
        .send("GET", HOST, "/cart", &[("authorization", "Bearer bad")])
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["denied"], "by the auth service");
    assert_eq!(denied.headers["x-auth-reason"], "bad token");
    assert_eq!(backend.hits(), hits);

    // The service stops answering in time (timeout 500 ms): fail closed.
    slow.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let late = client
        .send("GET", HOST, "/cart", &[("authorization", "Bearer good")])
        .await;
    assert_eq!(late.status, 503, "{late:?}");
    assert_eq!(late.json()["error"], "auth_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(backend.hits(), hits);

    // Nothing listens where the service should be: fail closed too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "auth.yaml",
            &forward_policy(&format!("http://{closed}/check")),
        ),
    ]);
    let client = Client::new(gateway.http);
    let down = client
        .send("GET", HOST, "/cart", &[("authorization", "Bearer good")])
        .await;
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(backend.hits(), hits);
}

#[tokio::test]
async fn the_first_method_that_succeeds_authenticates() {
    let backend = upstream("backend", Behavior::default()).await;
    let rsa = rsa_key("rsa-1.pem", "k1");
    let server = JwksServer::start(jwks(&[&rsa])).await;
    let hmac_secret = "an HMAC secret of at least 32 bytes!";
    let secret = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: hmac, namespace: default}}
stringData:
  secret: \"{hmac_secret}\"
"
    );
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "secrets.yaml",
            &format!("{}---\n{secret}", api_key_secrets()),
        ),
        (
            "auth.yaml",
            &policy(&format!(
                "  authentication:
    methods:
    - jwt:
        issuer: {ISSUER}
        jwksUri: \"{}\"
    - jwt:
        issuer: https://internal.test
        algorithms: [HS256]
        hmacSecretRef: {{name: hmac, key: secret}}
    - apiKey:
        secretSelector: {{auth.test/consumer: \"true\"}}
  authorization:
    rules:
    - name: gold-or-organization-b
      action: Allow
      claims: [{{claim: tier, operator: Equals, values: [gold]}}]
    - action: Allow
      organizations: [B]
",
                server.url()
            )),
        ),
    ]);
    let client = Client::new(gateway.http);
    let rs = mint(&rsa, &claims());
    assert_eq!(bearer(&client, &rs).await.status, 200, "{}", gateway.log());

    let hs_key = SigningKey {
        key: EncodingKey::from_secret(hmac_secret.as_bytes()),
        alg: Algorithm::HS256,
        kid: String::new(),
        jwk: rsa.jwk.clone(),
    };
    let internal = with(claims(), json!({"iss": "https://internal.test"}));
    assert_eq!(
        bearer(
            &client,
            &mint_with(&hs_key, Algorithm::HS256, None, &internal)
        )
        .await
        .status,
        200
    );
    // Claim rule: silver tier is not allowed.
    let silver = mint(&rsa, &with(claims(), json!({"tier": "silver"})));
    assert_eq!(bearer(&client, &silver).await.status, 403);

    // An invalid token, but a valid API key of organization B: the key wins.
    let answer = client
        .send(
            "GET",
            HOST,
            "/",
            &[
                ("authorization", "Bearer not.a.token"),
                ("x-api-key", "key-bob-0123456789"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // An API key without the gold claim or organization B.
    let answer = client
        .send("GET", HOST, "/", &[("x-api-key", "key-alice-0123456789")])
        .await;
    assert_eq!(answer.status, 403);
}

#[tokio::test]
async fn anonymous_requests_when_allowed_still_face_the_rules() {
    let backend = upstream("backend", Behavior::default()).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        ("secrets.yaml", &api_key_secrets()),
        (
            "auth.yaml",
            &policy(
                "  authentication:
    allowAnonymous: true
    methods:
    - apiKey:
        secretSelector: {auth.test/consumer: \"true\"}
  authorization:
    rules:
    - action: Allow
      methods: [GET]
      paths: [/public]
    - action: Allow
      consumers: [alice]
",
            ),
        ),
    ]);
    let client = Client::new(gateway.http);
    assert_eq!(client.get(HOST, "/public/menu").await.status, 200);
    assert_eq!(client.get(HOST, "/private").await.status, 403);
    let alice = client
        .send(
            "GET",
            HOST,
            "/private",
            &[("x-api-key", "key-alice-0123456789")],
        )
        .await;
    assert_eq!(alice.status, 200);
    // Invalid credentials are refused even where anonymous would pass.
    let bad = client
        .send("GET", HOST, "/public/menu", &[("x-api-key", "wrong")])
        .await;
    assert_eq!(bad.status, 401);
}
