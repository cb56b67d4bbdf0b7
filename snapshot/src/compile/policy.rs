//! AuthPolicy and RateLimitPolicy -> [`AuthConfig`] / [`RateLimitConfig`],
//! and which rules of which routes they apply to.
//!
//! Targets are ApiRoutes of the policy's namespace, optionally one rule
//! (`sectionName`). A policy none of whose targets exists is not accepted
//! (`TargetNotFound`); one with some missing targets is accepted with
//! `ResolvedRefs=False`.
//!
//! Secrets never reach the snapshot as they are: API keys become SHA-256
//! digests, htpasswd files become (user, hash) pairs of accepted hash types
//! only, HMAC secrets are base64-encoded bytes for the dataplane's JWT
//! verifier. Authentication fails closed (see the parent module's docs).

use super::index::{secret_value, Index, RefError};
use super::names;
use super::report::{Findings, NotAccepted, Problem, Severity, StatusInput};
use super::route::CompiledRoute;
use super::{
    AcceptedResource, AcceptedVersion, Meta, ObjectKey, Output, KIND_AUTH_POLICY,
    KIND_RATE_LIMIT_POLICY,
};
use crate::model::{
    ApiKeyConfig, ApiKeyEntry, AuthConfig, AuthMethodConfig, AuthzRule, BasicConfig, ClaimCheck,
    ForwardConfig, JwtConfig, JwtKeys, KeyPartConfig, LimitConfig, RateLimitConfig,
};
use crate::resources::Resources;
use base64::Engine;
use crds::auth::{
    ApiKeyAuth, AuthMethod, AuthorizationAction, BasicAuth, ClaimToHeader, CredentialSource,
    ForwardAuth, JwtAlgorithm, JwtProvider,
};
use crds::common::{SecretKeyRef, TargetRef};
use crds::ratelimit::{FailureMode, KeySource, LimitMode, RateLimitScope};
use crds::{AuthPolicy, RateLimitPolicy};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// A JWKS with no keys: tokens can never verify (fail closed).
const EMPTY_JWKS: &str = r#"{"keys":[]}"#;

/// (namespace, route name, rule name).
pub(crate) type RuleRef = (String, String, String);

/// Compiled policies and where they apply.
#[derive(Default)]
pub(crate) struct Policies {
    pub(crate) auth_configs: BTreeMap<String, AuthConfig>,
    pub(crate) rate_limit_configs: BTreeMap<String, RateLimitConfig>,
    /// The AuthPolicy key of each rule that has one.
    pub(crate) rule_auth: HashMap<RuleRef, String>,
    /// The RateLimitPolicy keys of each rule that has any, sorted.
    pub(crate) rule_rate_limits: HashMap<RuleRef, Vec<String>>,
}

/// What a policy attaches to.
enum Target {
    Route(String),
    Rule(String, String),
}

/// Rank of a candidate policy for a rule: rule-level first, then older,
/// then namespace/name.
type Rank = (u8, i128, String);

pub(crate) fn compile_policies(
    resources: &Resources,
    index: &Index<'_>,
    routes: &[CompiledRoute],
    previous: Option<&BTreeMap<ObjectKey, AcceptedVersion>>,
    out: &mut Output,
) -> Policies {
    let mut route_rules: HashMap<(String, String), Vec<String>> = HashMap::new();
    for r in routes {
        let names = match &r.served {
            Some(s) => s.rule_names.clone(),
            None => r.current_rule_names.clone(),
        };
        route_rules.insert((r.meta.namespace.clone(), r.meta.name.clone()), names);
    }
    let mut policies = Policies::default();
    let mut auth_candidates: HashMap<RuleRef, (Rank, String)> = HashMap::new();

    for (meta, policy) in super::sorted_unique(&resources.auth_policies, |p| &p.metadata) {
        let key = meta.key(KIND_AUTH_POLICY);
        let policy_key = format!("{}/{}", meta.namespace, meta.name);
        let (mut findings, mut config) = compile_auth(policy, &meta, index);
        let mut spec_for_targets = &policy.spec.target_refs;
        let mut serving_generation = None;
        let mut fallback_generation = None;
        let mut invalid_note = None;
        let mut fallback_policy: Option<&AuthPolicy> = None;
        if findings.is_invalid() {
            findings.refs.clear();
            let last = previous
                .and_then(|p| p.get(&key))
                .filter(|v| v.uid == meta.uid);
            if let Some(version) = last {
                if let AcceptedResource::AuthPolicy(old) = &version.resource {
                    let (old_findings, old_config) = compile_auth(old, &meta, index);
                    if !old_findings.is_invalid() {
                        config = old_config;
                        findings.refs = old_findings.refs;
                        fallback_generation = Some(version.generation.unwrap_or(0));
                        serving_generation = fallback_generation;
                        fallback_policy = Some(old);
                        out.accepted.insert(key.clone(), version.clone());
                    }
                }
            }
            if fallback_policy.is_none() {
                config = Some(deny_all());
                invalid_note = Some(
                    "its targets refuse every request (403) until it is fixed (fail closed)"
                        .to_owned(),
                );
            }
        } else {
            serving_generation = Some(meta.generation.unwrap_or(0));
            out.accepted.insert(
                key.clone(),
                AcceptedVersion {
                    uid: meta.uid.clone(),
                    generation: meta.generation,
                    resource: AcceptedResource::AuthPolicy(Box::new(policy.clone())),
                },
            );
        }
        if let Some(old) = fallback_policy {
            spec_for_targets = &old.spec.target_refs;
        }
        let (targets, not_accepted) =
            resolve_targets(&meta, spec_for_targets, &route_rules, &mut findings);
        if not_accepted.is_some() {
            serving_generation = None;
        }
        if let Some(config) = config.filter(|_| !targets.is_empty()) {
            for target in &targets {
                for (rule, level) in expand(target, &meta.namespace, &route_rules) {
                    let rank: Rank = (level, meta.created, policy_key.clone());
                    let better = auth_candidates
                        .get(&rule)
                        .is_none_or(|(current, _)| rank < *current);
                    if better {
                        auth_candidates.insert(rule, (rank, policy_key.clone()));
                    }
                }
            }
            policies.auth_configs.insert(policy_key.clone(), config);
        }
        let mut status = StatusInput::new(meta.generation, findings);
        status.serving_generation = serving_generation;
        status.fallback_generation = fallback_generation;
        status.not_accepted = not_accepted;
        status.invalid_note = invalid_note;
        out.statuses.insert(key, status.into_report());
    }
    policies.rule_auth = auth_candidates
        .into_iter()
        .map(|(rule, (_, key))| (rule, key))
        .collect();

    for (meta, policy) in super::sorted_unique(&resources.rate_limit_policies, |p| &p.metadata) {
        let key = meta.key(KIND_RATE_LIMIT_POLICY);
        let policy_key = format!("{}/{}", meta.namespace, meta.name);
        let (mut findings, mut config) = compile_rate_limit(policy);
        let mut target_refs = &policy.spec.target_refs;
        let mut serving_generation = None;
        let mut fallback_generation = None;
        if findings.is_invalid() {
            config = None;
            let last = previous
                .and_then(|p| p.get(&key))
                .filter(|v| v.uid == meta.uid);
            if let Some(version) = last {
                if let AcceptedResource::RateLimitPolicy(old) = &version.resource {
                    let (old_findings, old_config) = compile_rate_limit(old);
                    if !old_findings.is_invalid() {
                        config = old_config;
                        target_refs = &old.spec.target_refs;
                        fallback_generation = Some(version.generation.unwrap_or(0));
                        serving_generation = fallback_generation;
                        out.accepted.insert(key.clone(), version.clone());
                    }
                }
            }
        } else {
            serving_generation = Some(meta.generation.unwrap_or(0));
            out.accepted.insert(
                key.clone(),
                AcceptedVersion {
                    uid: meta.uid.clone(),
                    generation: meta.generation,
                    resource: AcceptedResource::RateLimitPolicy(Box::new(policy.clone())),
                },
            );
        }
        let (targets, not_accepted) =
            resolve_targets(&meta, target_refs, &route_rules, &mut findings);
        if not_accepted.is_some() {
            serving_generation = None;
        }
        if let Some(config) = config.filter(|_| !targets.is_empty()) {
            for target in &targets {
                for (rule, _) in expand(target, &meta.namespace, &route_rules) {
                    let list = policies.rule_rate_limits.entry(rule).or_default();
                    if !list.contains(&policy_key) {
                        list.push(policy_key.clone());
                    }
                }
            }
            policies.rate_limit_configs.insert(policy_key, config);
        }
        let mut status = StatusInput::new(meta.generation, findings);
        status.serving_generation = serving_generation;
        status.fallback_generation = fallback_generation;
        status.not_accepted = not_accepted;
        status.invalid_note =
            (fallback_generation.is_none()).then(|| "its limits are not applied".to_owned());
        out.statuses.insert(key, status.into_report());
    }
    for list in policies.rule_rate_limits.values_mut() {
        list.sort();
    }
    policies
}

/// The rules a target covers, with the level (0 rule, 1 route).
fn expand(
    target: &Target,
    namespace: &str,
    route_rules: &HashMap<(String, String), Vec<String>>,
) -> Vec<(RuleRef, u8)> {
    match target {
        Target::Rule(route, rule) => vec![((namespace.to_owned(), route.clone(), rule.clone()), 0)],
        Target::Route(route) => route_rules
            .get(&(namespace.to_owned(), route.clone()))
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| ((namespace.to_owned(), route.clone(), r.clone()), 1))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn resolve_targets(
    meta: &Meta,
    refs: &[TargetRef],
    route_rules: &HashMap<(String, String), Vec<String>>,
    f: &mut Findings,
) -> (Vec<Target>, Option<NotAccepted>) {
    let mut targets = Vec::new();
    for (i, t) in refs.iter().enumerate().take(16) {
        let field = format!("spec.targetRefs[{i}]");
        let Some(rules) = route_rules.get(&(meta.namespace.clone(), t.name.clone())) else {
            f.unresolved(
                format!("{field}.name"),
                "TargetNotFound",
                format!("ApiRoute {}/{} not found", meta.namespace, t.name),
            );
            continue;
        };
        match &t.section_name {
            None => targets.push(Target::Route(t.name.clone())),
            Some(rule) if rules.contains(rule) => {
                targets.push(Target::Rule(t.name.clone(), rule.clone()));
            }
            Some(rule) => f.unresolved(
                format!("{field}.sectionName"),
                "TargetNotFound",
                format!(
                    "ApiRoute {}/{} has no rule named {rule:?} (its rules: {})",
                    meta.namespace,
                    t.name,
                    rules.join(", ")
                ),
            ),
        }
    }
    if targets.is_empty() && !refs.is_empty() {
        let problem = Problem {
            field: "spec.targetRefs".to_owned(),
            reason: "TargetNotFound".to_owned(),
            message: "none of the targets exists".to_owned(),
            severity: Severity::Error,
        };
        return (targets, Some(NotAccepted::NoTarget(problem)));
    }
    (targets, None)
}

fn check_target_refs(refs: &[TargetRef], f: &mut Findings) {
    if refs.is_empty() || refs.len() > 16 {
        f.invalid("spec.targetRefs", "Invalid", "must have 1 to 16 targets");
    }
    for (i, t) in refs.iter().enumerate().take(16) {
        if t.name.is_empty() || t.name.len() > 253 {
            f.invalid(
                format!("spec.targetRefs[{i}].name"),
                "Invalid",
                "must have 1 to 253 characters",
            );
        }
        if let Some(s) = &t.section_name {
            if let Err(e) = names::check_label_name(s) {
                f.invalid(format!("spec.targetRefs[{i}].sectionName"), "Invalid", e);
            }
        }
    }
}

/// The configuration of an AuthPolicy that cannot be compiled: no method
/// authenticates and one rule denies everything.
fn deny_all() -> AuthConfig {
    AuthConfig {
        methods: Vec::new(),
        allow_anonymous: false,
        forward_credentials: false,
        rules: vec![AuthzRule {
            name: "ferrogate-fail-closed".to_owned(),
            allow: false,
            claims: Vec::new(),
            groups: Vec::new(),
            organizations: Vec::new(),
            consumers: Vec::new(),
            methods: Vec::new(),
            paths: Vec::new(),
            client_cidrs: Vec::new(),
        }],
    }
}

struct AuthContext<'a, 'i> {
    namespace: &'a str,
    index: &'a Index<'i>,
    f: &'a mut Findings,
    /// Set when a forward-auth Service cannot be resolved.
    fail_closed: bool,
}

fn compile_auth(
    policy: &AuthPolicy,
    meta: &Meta,
    index: &Index<'_>,
) -> (Findings, Option<AuthConfig>) {
    let spec = &policy.spec;
    let mut f = Findings::default();
    check_target_refs(&spec.target_refs, &mut f);
    if spec.authentication.is_none() && spec.authorization.is_none() {
        f.invalid(
            "spec",
            "Invalid",
            "set authentication, authorization, or both",
        );
    }
    let mut ctx = AuthContext {
        namespace: &meta.namespace,
        index,
        f: &mut f,
        fail_closed: false,
    };
    let mut methods = Vec::new();
    let (mut allow_anonymous, mut forward_credentials) = (false, false);
    if let Some(a) = &spec.authentication {
        allow_anonymous = a.allow_anonymous;
        forward_credentials = a.forward_credentials;
        if a.methods.is_empty() || a.methods.len() > 8 {
            ctx.f.invalid(
                "spec.authentication.methods",
                "Invalid",
                "must have 1 to 8 methods",
            );
        }
        for (i, m) in a.methods.iter().enumerate().take(8) {
            if let Some(m) = ctx.method(&format!("spec.authentication.methods[{i}]"), m) {
                methods.push(m);
            }
        }
    }
    let mut rules = Vec::new();
    if let Some(z) = &spec.authorization {
        if z.rules.is_empty() || z.rules.len() > 64 {
            ctx.f.invalid(
                "spec.authorization.rules",
                "Invalid",
                "must have 1 to 64 rules",
            );
        }
        for (i, r) in z.rules.iter().enumerate().take(64) {
            rules.push(ctx.authz_rule(i, r));
        }
    }
    let fail_closed = ctx.fail_closed;
    if f.is_invalid() {
        return (f, None);
    }
    if fail_closed {
        return (f, Some(deny_all()));
    }
    (
        f,
        Some(AuthConfig {
            methods,
            allow_anonymous,
            forward_credentials,
            rules,
        }),
    )
}

impl AuthContext<'_, '_> {
    fn duration(&mut self, field: &str, text: Option<&String>, default: u64) -> u64 {
        let Some(text) = text else {
            return default;
        };
        match names::duration_ms(text) {
            Ok(0) => {
                self.f
                    .invalid(field, "InvalidDuration", "must be greater than 0");
                default
            }
            Ok(ms) => ms,
            Err(e) => {
                self.f.invalid(field, "InvalidDuration", e);
                default
            }
        }
    }

    fn header_name(&mut self, field: &str, name: &str) -> Option<String> {
        names::header_name(name)
            .map_err(|e| self.f.invalid(field, "Invalid", e))
            .ok()
    }

    fn header_list(&mut self, field: &str, list: &[String]) -> Vec<String> {
        if list.len() > 32 {
            self.f.invalid(
                field,
                "Invalid",
                format!("{} headers; at most 32", list.len()),
            );
        }
        let mut out: Vec<String> = list
            .iter()
            .enumerate()
            .take(32)
            .filter_map(|(i, h)| self.header_name(&format!("{field}[{i}]"), h))
            .collect();
        out.dedup();
        out
    }

    fn source(
        &mut self,
        field: &str,
        s: Option<&CredentialSource>,
        default_header: &str,
    ) -> CredentialSource {
        let Some(s) = s else {
            return CredentialSource {
                header: Some(default_header.to_owned()),
                query: None,
                cookie: None,
            };
        };
        let set = usize::from(s.header.is_some())
            + usize::from(s.query.is_some())
            + usize::from(s.cookie.is_some());
        if set != 1 {
            self.f.invalid(
                field,
                "Invalid",
                format!("set exactly one of header, query, cookie (found {set})"),
            );
        }
        let header = s
            .header
            .as_ref()
            .and_then(|h| self.header_name(&format!("{field}.header"), h));
        for (value, name) in [(&s.query, "query"), (&s.cookie, "cookie")] {
            if let Some(v) = value {
                if v.is_empty()
                    || v.len() > 256
                    || v.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    self.f.invalid(
                        format!("{field}.{name}"),
                        "Invalid",
                        "must have 1 to 256 characters and no spaces or control characters",
                    );
                }
            }
        }
        CredentialSource {
            header,
            query: s.query.clone(),
            cookie: s.cookie.clone(),
        }
    }

    fn method(&mut self, at: &str, m: &AuthMethod) -> Option<AuthMethodConfig> {
        let set = usize::from(m.jwt.is_some())
            + usize::from(m.api_key.is_some())
            + usize::from(m.basic.is_some())
            + usize::from(m.forward.is_some());
        if set != 1 {
            self.f.invalid(
                at,
                "Invalid",
                format!("set exactly one of jwt, apiKey, basic, forward (found {set})"),
            );
            return None;
        }
        if let Some(j) = &m.jwt {
            return self.jwt(&format!("{at}.jwt"), j).map(AuthMethodConfig::Jwt);
        }
        if let Some(k) = &m.api_key {
            return Some(AuthMethodConfig::ApiKey(
                self.api_key(&format!("{at}.apiKey"), k),
            ));
        }
        if let Some(b) = &m.basic {
            return Some(AuthMethodConfig::Basic(
                self.basic(&format!("{at}.basic"), b),
            ));
        }
        m.forward
            .as_ref()
            .and_then(|fw| self.forward(&format!("{at}.forward"), fw))
            .map(AuthMethodConfig::Forward)
    }

    /// Reads a Secret key; records why not when it cannot.
    fn secret_key(&mut self, field: &str, r: &SecretKeyRef) -> Option<Vec<u8>> {
        let ns = r.namespace.as_deref().unwrap_or(self.namespace);
        let secret = match self.index.secret(self.namespace, ns, &r.name) {
            Ok(s) => s,
            Err(RefError { reason, message }) => {
                self.f.unresolved(field, reason, message);
                return None;
            }
        };
        match secret_value(secret, &r.key) {
            Some(v) => Some(v),
            None => {
                self.f.unresolved(
                    field,
                    "SecretNotFound",
                    format!("Secret {ns}/{} has no key {:?}", r.name, r.key),
                );
                None
            }
        }
    }

    fn jwt(&mut self, at: &str, j: &JwtProvider) -> Option<JwtConfig> {
        let before = self.f.invalid.len();
        if j.issuer.is_empty() || j.issuer.len() > 2048 {
            self.f.invalid(
                format!("{at}.issuer"),
                "Invalid",
                "must have 1 to 2048 characters",
            );
        }
        if j.audiences.len() > 16 {
            self.f
                .invalid(format!("{at}.audiences"), "Invalid", "at most 16 audiences");
        }
        let mut algorithms = j.algorithms.clone();
        if algorithms.is_empty() {
            algorithms.push(JwtAlgorithm::RS256);
        }
        algorithms.sort();
        algorithms.dedup();
        let is_hmac = |a: &JwtAlgorithm| {
            matches!(
                a,
                JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
            )
        };
        let sources = usize::from(j.jwks_uri.is_some())
            + usize::from(j.jwks.is_some())
            + usize::from(j.jwks_secret_ref.is_some())
            + usize::from(j.hmac_secret_ref.is_some());
        if sources != 1 {
            self.f.invalid(
                at,
                "Invalid",
                format!("set exactly one key source: jwksUri, jwks, jwksSecretRef or hmacSecretRef (found {sources})"),
            );
        }
        if j.hmac_secret_ref.is_some() {
            if algorithms.iter().any(|a| !is_hmac(a)) {
                self.f.invalid(
                    format!("{at}.algorithms"),
                    "Invalid",
                    "with hmacSecretRef only HS256, HS384 and HS512 are allowed (the default is RS256: set algorithms)",
                );
            }
        } else if algorithms.iter().any(is_hmac) {
            self.f.invalid(
                format!("{at}.algorithms"),
                "Invalid",
                "HS256, HS384 and HS512 need hmacSecretRef (a shared secret), not a JWKS",
            );
        }
        let keys = if let Some(uri) = &j.jwks_uri {
            match names::parse_http_url(uri) {
                Ok(_) => JwtKeys::JwksUri(uri.clone()),
                Err(e) => {
                    self.f.invalid(format!("{at}.jwksUri"), "Invalid", e);
                    JwtKeys::Jwks(EMPTY_JWKS.to_owned())
                }
            }
        } else if let Some(doc) = &j.jwks {
            if let Err(e) = check_jwks(doc) {
                self.f.invalid(format!("{at}.jwks"), "Invalid", e);
            }
            JwtKeys::Jwks(doc.clone())
        } else if let Some(r) = &j.jwks_secret_ref {
            let field = format!("{at}.jwksSecretRef");
            match self.secret_key(&field, r) {
                None => JwtKeys::Jwks(EMPTY_JWKS.to_owned()),
                Some(bytes) => match String::from_utf8(bytes)
                    .map_err(|_| "not UTF-8 text".to_owned())
                    .and_then(|doc| check_jwks(&doc).map(|()| doc))
                {
                    Ok(doc) => JwtKeys::Jwks(doc),
                    Err(e) => {
                        self.f.unresolved(
                            &field,
                            "InvalidSecret",
                            format!("Secret key {:?} is not a JWKS document: {e}", r.key),
                        );
                        JwtKeys::Jwks(EMPTY_JWKS.to_owned())
                    }
                },
            }
        } else if let Some(r) = &j.hmac_secret_ref {
            match self.secret_key(&format!("{at}.hmacSecretRef"), r) {
                Some(bytes) if !bytes.is_empty() => {
                    JwtKeys::Hmac(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                Some(_) => {
                    self.f.unresolved(
                        format!("{at}.hmacSecretRef"),
                        "InvalidSecret",
                        "the HMAC secret is empty",
                    );
                    JwtKeys::Jwks(EMPTY_JWKS.to_owned())
                }
                None => JwtKeys::Jwks(EMPTY_JWKS.to_owned()),
            }
        } else {
            JwtKeys::Jwks(EMPTY_JWKS.to_owned())
        };
        let jwks_cache_ms = self.duration(
            &format!("{at}.jwksCacheDuration"),
            j.jwks_cache_duration.as_ref(),
            600_000,
        );
        let jwks_max_staleness_ms = self.duration(
            &format!("{at}.jwksMaxStaleness"),
            j.jwks_max_staleness.as_ref(),
            86_400_000,
        );
        let clock_skew_ms = match &j.clock_skew {
            None => 30_000,
            Some(d) => match names::duration_ms(d) {
                Ok(ms) if ms <= 300_000 => ms,
                Ok(_) => {
                    self.f
                        .invalid(format!("{at}.clockSkew"), "Invalid", "at most 5m");
                    30_000
                }
                Err(e) => {
                    self.f
                        .invalid(format!("{at}.clockSkew"), "InvalidDuration", e);
                    30_000
                }
            },
        };
        let token_from = self.source(
            &format!("{at}.tokenFrom"),
            j.token_from.as_ref(),
            "authorization",
        );
        let mut claims_to_headers = Vec::new();
        for (i, c) in j.claims_to_headers.iter().enumerate().take(16) {
            let field = format!("{at}.claimsToHeaders[{i}]");
            if c.claim.is_empty() || c.claim.len() > 256 {
                self.f.invalid(
                    format!("{field}.claim"),
                    "Invalid",
                    "must have 1 to 256 characters",
                );
            }
            if let Some(header) = self.header_name(&format!("{field}.header"), &c.header) {
                claims_to_headers.push(ClaimToHeader {
                    claim: c.claim.clone(),
                    header,
                });
            }
        }
        let claim = |c: &Option<String>, d: &str| {
            c.clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| d.to_owned())
        };
        if self.f.invalid.len() > before {
            return None;
        }
        Some(JwtConfig {
            issuer: j.issuer.clone(),
            audiences: j.audiences.clone(),
            algorithms,
            keys,
            jwks_cache_ms,
            jwks_max_staleness_ms,
            clock_skew_ms,
            token_from,
            claims_to_headers,
            consumer_claim: claim(&j.consumer_claim, "sub"),
            organization_claim: claim(&j.organization_claim, "org"),
            groups_claim: claim(&j.groups_claim, "groups"),
        })
    }

    fn api_key(&mut self, at: &str, k: &ApiKeyAuth) -> ApiKeyConfig {
        if k.secret_selector.is_empty() || k.secret_selector.len() > 8 {
            self.f.invalid(
                format!("{at}.secretSelector"),
                "Invalid",
                "must have 1 to 8 labels",
            );
        }
        let key_from = self.source(&format!("{at}.keyFrom"), k.key_from.as_ref(), "x-api-key");
        let mut keys: Vec<ApiKeyEntry> = Vec::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        if k.secret_selector.is_empty() {
            return ApiKeyConfig { key_from, keys };
        }
        for (name, secret) in self
            .index
            .secrets_matching(self.namespace, &k.secret_selector)
        {
            let what = format!("Secret {}/{name}", self.namespace);
            let text =
                |key: &str| secret_value(secret, key).and_then(|v| String::from_utf8(v).ok());
            let Some(raw) = secret_value(secret, "api-key") else {
                self.f.unresolved(
                    format!("{at}.secretSelector"),
                    "InvalidSecret",
                    format!("{what} has no data key api-key; it is ignored"),
                );
                continue;
            };
            let key = raw.trim_ascii();
            if key.is_empty() {
                self.f.unresolved(
                    format!("{at}.secretSelector"),
                    "InvalidSecret",
                    format!("{what}: api-key is empty; it is ignored"),
                );
                continue;
            }
            let Some(consumer) = text("consumer")
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
            else {
                self.f.unresolved(
                    format!("{at}.secretSelector"),
                    "InvalidSecret",
                    format!("{what} has no data key consumer (UTF-8 text); it is ignored"),
                );
                continue;
            };
            let sha256 = hex::encode(Sha256::digest(key));
            if let Some(first) = owners.get(&sha256) {
                self.f.unresolved(
                    format!("{at}.secretSelector"),
                    "InvalidSecret",
                    format!(
                        "{what} holds the same api-key as Secret {}/{first}; it is ignored",
                        self.namespace
                    ),
                );
                continue;
            }
            owners.insert(sha256.clone(), name.to_owned());
            let mut groups: Vec<String> = text("groups")
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            groups.sort();
            groups.dedup();
            let organization = text("organization")
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty());
            keys.push(ApiKeyEntry {
                sha256,
                consumer,
                groups,
                organization,
            });
        }
        keys.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        ApiKeyConfig { key_from, keys }
    }

    fn basic(&mut self, at: &str, b: &BasicAuth) -> BasicConfig {
        let realm = b.realm.clone().unwrap_or_else(|| "ferrogate".to_owned());
        if realm.len() > 256 || realm.contains('"') || names::check_header_value(&realm).is_err() {
            self.f.invalid(
                format!("{at}.realm"),
                "Invalid",
                "at most 256 characters, no '\"' or control characters",
            );
        }
        let field = format!("{at}.secretRef");
        let mut users: Vec<(String, String)> = Vec::new();
        let Some(bytes) = self.secret_key(&field, &b.secret_ref) else {
            return BasicConfig { realm, users };
        };
        let Ok(text) = String::from_utf8(bytes) else {
            self.f.unresolved(
                &field,
                "InvalidSecret",
                "the htpasswd file is not UTF-8 text",
            );
            return BasicConfig { realm, users };
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = n + 1;
            let Some((user, hash)) = line.split_once(':') else {
                self.f.unresolved(
                    &field,
                    "InvalidSecret",
                    format!("htpasswd line {lineno} is not user:hash; it is ignored"),
                );
                continue;
            };
            if user.is_empty() {
                self.f.unresolved(
                    &field,
                    "InvalidSecret",
                    format!("htpasswd line {lineno} has an empty user name; it is ignored"),
                );
                continue;
            }
            if let Err(why) = check_password_hash(hash) {
                self.f.unresolved(
                    &field,
                    "UnsupportedHash",
                    format!(
                        "htpasswd user {user:?} (line {lineno}): {why}; the user cannot log in"
                    ),
                );
                continue;
            }
            if users.iter().any(|(u, _)| u == user) {
                self.f.unresolved(
                    &field,
                    "InvalidSecret",
                    format!("htpasswd user {user:?} appears again on line {lineno}; the first entry is used"),
                );
                continue;
            }
            users.push((user.to_owned(), hash.to_owned()));
        }
        users.sort();
        BasicConfig { realm, users }
    }

    fn forward(&mut self, at: &str, fw: &ForwardAuth) -> Option<ForwardConfig> {
        let url = match (&fw.url, &fw.service) {
            (Some(_), Some(_)) | (None, None) => {
                self.f
                    .invalid(at, "Invalid", "set exactly one of url and service");
                None
            }
            (Some(url), None) => match names::parse_http_url(url) {
                Ok(u) => Some(format!(
                    "{}{}",
                    u.origin(),
                    if u.path.is_empty() { "/" } else { &u.path }
                )),
                Err(e) => {
                    self.f.invalid(format!("{at}.url"), "Invalid", e);
                    None
                }
            },
            (None, Some(s)) => {
                let path = s.path.clone().unwrap_or_else(|| "/".to_owned());
                if let Err(e) = names::check_path(&path) {
                    self.f.invalid(format!("{at}.service.path"), "Invalid", e);
                }
                if s.port == 0 {
                    self.f.invalid(
                        format!("{at}.service.port"),
                        "Invalid",
                        "must be from 1 to 65535",
                    );
                    None
                } else {
                    match self
                        .index
                        .service_port(self.namespace, self.namespace, &s.name, s.port)
                    {
                        Err(e) => {
                            self.f.unresolved(
                                format!("{at}.service"),
                                e.reason,
                                format!(
                                    "{}; the policy refuses every request until it resolves",
                                    e.message
                                ),
                            );
                            self.fail_closed = true;
                            None
                        }
                        Ok(r) => {
                            let authority = match (&r.cluster_ip, r.endpoints.first()) {
                                (Some(ip), _) => Some(host_port(ip, s.port)),
                                (None, Some(e)) => Some(host_port(&e.host, e.port)),
                                (None, None) => None,
                            };
                            match authority {
                                Some(a) => Some(format!("http://{a}{path}")),
                                None => {
                                    self.f.unresolved(
                                        format!("{at}.service"),
                                        "BackendNotFound",
                                        format!("Service {}/{} has no cluster IP and no ready endpoints; the policy refuses every request until it has", self.namespace, s.name),
                                    );
                                    self.fail_closed = true;
                                    None
                                }
                            }
                        }
                    }
                }
            }
        };
        let request_headers = if fw.request_headers.is_empty() {
            vec!["authorization".to_owned(), "cookie".to_owned()]
        } else {
            self.header_list(&format!("{at}.requestHeaders"), &fw.request_headers)
        };
        let upstream_headers =
            self.header_list(&format!("{at}.upstreamHeaders"), &fw.upstream_headers);
        let timeout_ms = self.duration(&format!("{at}.timeout"), fw.timeout.as_ref(), 2_000);
        Some(ForwardConfig {
            url: url?,
            request_headers,
            upstream_headers,
            timeout_ms,
        })
    }

    fn authz_rule(&mut self, i: usize, r: &crds::auth::AuthorizationRule) -> AuthzRule {
        let at = format!("spec.authorization.rules[{i}]");
        let name = r.name.clone().unwrap_or_else(|| format!("rule-{i}"));
        if name.is_empty() || name.len() > 63 {
            self.f.invalid(
                format!("{at}.name"),
                "Invalid",
                "must have 1 to 63 characters",
            );
        }
        let mut claims = Vec::new();
        for (k, c) in r.claims.iter().enumerate().take(16) {
            if c.claim.is_empty() || c.claim.len() > 256 {
                self.f.invalid(
                    format!("{at}.claims[{k}].claim"),
                    "Invalid",
                    "must have 1 to 256 characters",
                );
            }
            if c.values.is_empty() || c.values.len() > 64 {
                self.f.invalid(
                    format!("{at}.claims[{k}].values"),
                    "Invalid",
                    "must have 1 to 64 values",
                );
            }
            claims.push(ClaimCheck {
                claim: c.claim.clone(),
                operator: c.operator,
                values: c.values.clone(),
            });
        }
        for (list, n) in [
            (&r.groups, "groups"),
            (&r.organizations, "organizations"),
            (&r.consumers, "consumers"),
        ] {
            if list.len() > 64 {
                self.f
                    .invalid(format!("{at}.{n}"), "Invalid", "at most 64 values");
            }
        }
        let mut methods: Vec<String> = r.methods.iter().map(|m| m.as_str().to_owned()).collect();
        methods.sort();
        methods.dedup();
        let mut paths = Vec::new();
        for (k, p) in r.paths.iter().enumerate().take(32) {
            match names::check_path(p) {
                Ok(()) => paths.push(p.clone()),
                Err(e) => self.f.invalid(format!("{at}.paths[{k}]"), "Invalid", e),
            }
        }
        let mut client_cidrs = Vec::new();
        for (k, c) in r.client_cidrs.iter().enumerate().take(64) {
            match names::parse_cidr(c) {
                Ok(c) => client_cidrs.push(c),
                Err(e) => self
                    .f
                    .invalid(format!("{at}.clientCidrs[{k}]"), "Invalid", e),
            }
        }
        AuthzRule {
            name,
            allow: r.action == AuthorizationAction::Allow,
            claims,
            groups: r.groups.clone(),
            organizations: r.organizations.clone(),
            consumers: r.consumers.clone(),
            methods,
            paths,
            client_cidrs,
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A JWKS document: a JSON object with a `keys` array.
fn check_jwks(doc: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("keys") {
        Some(serde_json::Value::Array(_)) => Ok(()),
        _ => Err("a JWKS is a JSON object with a \"keys\" array".to_owned()),
    }
}

/// Accepts bcrypt and SHA-crypt hashes; refuses the rest with the reason.
fn check_password_hash(hash: &str) -> Result<(), &'static str> {
    if ["$2y$", "$2b$", "$2a$", "$5$", "$6$"]
        .iter()
        .any(|p| hash.starts_with(p))
    {
        Ok(())
    } else if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        Err("MD5 password hashes are refused; use bcrypt (htpasswd -B)")
    } else if hash.starts_with("{SHA}") {
        Err("SHA-1 password hashes are refused; use bcrypt (htpasswd -B)")
    } else {
        Err("plain-text or DES crypt passwords are refused; use bcrypt (htpasswd -B)")
    }
}

fn compile_rate_limit(policy: &RateLimitPolicy) -> (Findings, Option<RateLimitConfig>) {
    let spec = &policy.spec;
    let mut f = Findings::default();
    check_target_refs(&spec.target_refs, &mut f);
    let failure_mode = match (spec.scope, spec.failure_mode) {
        (RateLimitScope::Global, None) => {
            f.invalid(
                "spec.failureMode",
                "Invalid",
                "required with scope Global: Open (count locally while Redis is down; the total may exceed the limit) or Closed (refuse with 429)",
            );
            FailureMode::Closed
        }
        (_, Some(m)) => m,
        (RateLimitScope::Local, None) => FailureMode::Closed,
    };
    if spec.limits.is_empty() || spec.limits.len() > 16 {
        f.invalid("spec.limits", "Invalid", "must have 1 to 16 limits");
    }
    let mut limits: Vec<LimitConfig> = Vec::new();
    for (i, l) in spec.limits.iter().enumerate().take(16) {
        let at = format!("spec.limits[{i}]");
        if let Err(e) = names::check_label_name(&l.name) {
            f.invalid(format!("{at}.name"), "Invalid", e);
        } else if let Some(first) = limits.iter().position(|x| x.name == l.name) {
            f.invalid(
                format!("{at}.name"),
                "Invalid",
                format!("{:?} is already the name of limits[{first}]", l.name),
            );
        }
        if !(1..=1_000_000_000).contains(&l.requests) {
            f.invalid(
                format!("{at}.requests"),
                "Invalid",
                "must be from 1 to 1000000000",
            );
        }
        let period_ms = match names::duration_ms(&l.period) {
            Ok(ms) if (1_000..=86_400_000).contains(&ms) => ms,
            Ok(_) => {
                f.invalid(
                    format!("{at}.period"),
                    "InvalidDuration",
                    format!("{:?} is outside 1s to 24h", l.period),
                );
                1_000
            }
            Err(e) => {
                f.invalid(format!("{at}.period"), "InvalidDuration", e);
                1_000
            }
        };
        let burst = l.burst.unwrap_or(0);
        if burst > 1_000_000_000 {
            f.invalid(format!("{at}.burst"), "Invalid", "at most 1000000000");
        }
        if l.key.len() > 4 {
            f.invalid(format!("{at}.key"), "Invalid", "at most 4 parts");
        }
        let mut key = Vec::new();
        for (k, part) in l.key.iter().enumerate().take(4) {
            let field = format!("{at}.key[{k}]");
            let name = match part.source {
                KeySource::Header => match &part.name {
                    Some(n) => match names::header_name(n) {
                        Ok(n) => Some(n),
                        Err(e) => {
                            f.invalid(format!("{field}.name"), "Invalid", e);
                            None
                        }
                    },
                    None => {
                        f.invalid(
                            format!("{field}.name"),
                            "Invalid",
                            "required with source Header",
                        );
                        None
                    }
                },
                KeySource::Claim => match &part.name {
                    Some(n) if !n.is_empty() && n.len() <= 256 => Some(n.clone()),
                    _ => {
                        f.invalid(
                            format!("{field}.name"),
                            "Invalid",
                            "required with source Claim (1 to 256 characters)",
                        );
                        None
                    }
                },
                _ => {
                    if part.name.is_some() {
                        f.invalid(
                            format!("{field}.name"),
                            "Invalid",
                            "only used with source Header or Claim",
                        );
                    }
                    None
                }
            };
            key.push(KeyPartConfig {
                source: part.source,
                name,
            });
        }
        let when = l.when.clone().unwrap_or_default();
        let mut methods: Vec<String> = when.methods.iter().map(|m| m.as_str().to_owned()).collect();
        methods.sort();
        methods.dedup();
        let mut paths = Vec::new();
        for (k, p) in when.paths.iter().enumerate().take(32) {
            match names::check_path(p) {
                Ok(()) => paths.push(p.clone()),
                Err(e) => f.invalid(format!("{at}.when.paths[{k}]"), "Invalid", e),
            }
        }
        let mut devices = when.devices.clone();
        devices.sort();
        devices.dedup();
        limits.push(LimitConfig {
            name: l.name.clone(),
            requests: l.requests,
            period_ms,
            burst,
            key,
            methods,
            paths,
            devices,
            shadow: l.mode == LimitMode::Shadow,
        });
    }
    if f.is_invalid() {
        return (f, None);
    }
    (
        f,
        Some(RateLimitConfig {
            scope: spec.scope,
            failure_mode,
            limits,
        }),
    )
}
