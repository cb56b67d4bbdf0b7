//! Authorization rules: plain functions of the identity and the request.
//!
//! Rules are checked in order; the first whose conditions all hold decides
//! (allow or deny). Within a condition, any listed value suffices. When
//! rules exist and none holds, the request is denied; without rules every
//! authenticated (or anonymous, when allowed) request passes. Conditions on
//! the caller (claims, groups, organizations, consumers) never hold for an
//! anonymous request; claim conditions hold only for JWT identities.

use super::jwt::{claim, claim_text};
use super::Identity;
use crate::Cidr;
use crds::auth::ClaimOperator;
use serde_json::Value;
use snapshot::model::{AuthzRule, ClaimCheck};
use std::net::IpAddr;
use std::sync::Arc;

/// One compiled rule.
struct Rule {
    name: Arc<str>,
    allow: bool,
    claims: Vec<ClaimCheck>,
    groups: Vec<String>,
    organizations: Vec<String>,
    consumers: Vec<String>,
    methods: Vec<http::Method>,
    paths: Vec<String>,
    cidrs: Vec<Cidr>,
}

/// The rules of one policy.
pub struct Rules {
    rules: Vec<Rule>,
}

/// What the rules decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The request may pass.
    pub allowed: bool,
    /// The rule that decided (`None`: no rules, or none held).
    pub rule: Option<Arc<str>>,
}

/// The request facts rules look at.
pub struct Request<'a> {
    /// Method.
    pub method: &'a http::Method,
    /// Path.
    pub path: &'a str,
    /// The client's address (after trusted proxies).
    pub client_ip: IpAddr,
}

impl Rules {
    /// Compiles the rules; a bad CIDR or method means a corrupt snapshot.
    pub fn build(rules: &[AuthzRule]) -> Result<Rules, String> {
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            let mut cidrs = Vec::with_capacity(r.client_cidrs.len());
            for c in &r.client_cidrs {
                cidrs.push(
                    Cidr::parse(c)
                        .ok_or_else(|| format!("rule {:?}: {c:?} is not a CIDR", r.name))?,
                );
            }
            let mut methods = Vec::with_capacity(r.methods.len());
            for m in &r.methods {
                methods.push(
                    http::Method::from_bytes(m.as_bytes())
                        .map_err(|_| format!("rule {:?}: {m:?} is not a method", r.name))?,
                );
            }
            out.push(Rule {
                name: Arc::from(r.name.as_str()),
                allow: r.allow,
                claims: r.claims.clone(),
                groups: r.groups.clone(),
                organizations: r.organizations.clone(),
                consumers: r.consumers.clone(),
                methods,
                paths: r.paths.clone(),
                cidrs,
            });
        }
        Ok(Rules { rules: out })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides a request.
    pub fn decide(&self, identity: Option<&Identity>, request: &Request<'_>) -> Verdict {
        if self.rules.is_empty() {
            return Verdict {
                allowed: true,
                rule: None,
            };
        }
        for rule in &self.rules {
            if rule.holds(identity, request) {
                return Verdict {
                    allowed: rule.allow,
                    rule: Some(rule.name.clone()),
                };
            }
        }
        Verdict {
            allowed: false,
            rule: None,
        }
    }
}

impl Rule {
    fn holds(&self, identity: Option<&Identity>, request: &Request<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(request.method) {
            return false;
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| path_has_prefix(request.path, p)) {
            return false;
        }
        if !self.cidrs.is_empty() && !self.cidrs.iter().any(|c| c.contains(request.client_ip)) {
            return false;
        }
        let caller_conditions = !self.groups.is_empty()
            || !self.organizations.is_empty()
            || !self.consumers.is_empty()
            || !self.claims.is_empty();
        if !caller_conditions {
            return true;
        }
        let Some(identity) = identity else {
            return false;
        };
        let in_list = |value: Option<&Arc<str>>, list: &[String]| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x.as_str() == v.as_ref()))
        };
        if !in_list(identity.consumer.as_ref(), &self.consumers)
            || !in_list(identity.organization.as_ref(), &self.organizations)
        {
            return false;
        }
        if !self.groups.is_empty()
            && !identity
                .groups
                .iter()
                .any(|g| self.groups.iter().any(|x| x.as_str() == g.as_ref()))
        {
            return false;
        }
        if !self.claims.is_empty() {
            let Some(claims) = identity.claims.as_deref() else {
                return false;
            };
            if !self.claims.iter().all(|c| claim_holds(claims, c)) {
                return false;
            }
        }
        true
    }
}

/// Segment-wise prefix: `/a` covers `/a` and `/a/b`, not `/ab`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One claim condition.
pub fn claim_holds(claims: &Value, check: &ClaimCheck) -> bool {
    let Some(value) = claim(claims, &check.claim) else {
        return false;
    };
    match check.operator {
        ClaimOperator::Equals => {
            claim_text(value).is_some_and(|v| check.values.first().is_some_and(|x| *x == v))
        }
        ClaimOperator::OneOf => claim_text(value).is_some_and(|v| check.values.contains(&v)),
        ClaimOperator::Prefix => claim_text(value)
            .is_some_and(|v| check.values.iter().any(|x| v.starts_with(x.as_str()))),
        ClaimOperator::Contains => match value {
            Value::Array(items) => items
                .iter()
                .filter_map(claim_text)
                .any(|v| check.values.contains(&v)),
            Value::String(s) => s
                .split_whitespace()
                .any(|v| check.values.iter().any(|x| x == v)),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(name: &str, allow: bool) -> AuthzRule {
        AuthzRule {
            name: name.into(),
            allow,
            claims: vec![],
            groups: vec![],
            organizations: vec![],
            consumers: vec![],
            methods: vec![],
            paths: vec![],
            client_cidrs: vec![],
        }
    }

    fn caller(org: &str, groups: &[&str], claims: Option<Value>) -> Identity {
        Identity {
            consumer: Some(Arc::from("alice")),
            organization: Some(Arc::from(org)),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            claims: claims.map(Arc::new),
            method: "jwt",
        }
    }

    fn get(path: &str) -> Request<'_> {
        Request {
            method: &http::Method::GET,
            path,
            client_ip: "10.1.2.3".parse().expect("ip"),
        }
    }

    #[test]
    fn organizations_a_and_b_only() {
        let rules = Rules::build(&[AuthzRule {
            organizations: vec!["A".into(), "B".into()],
            ..rule("orgs", true)
        }])
        .expect("rules");
        assert!(
            rules
                .decide(Some(&caller("A", &[], None)), &get("/"))
                .allowed
        );
        assert!(
            rules
                .decide(Some(&caller("B", &[], None)), &get("/"))
                .allowed
        );
        let c = rules.decide(Some(&caller("C", &[], None)), &get("/"));
        assert!(!c.allowed);
        assert_eq!(c.rule, None);
        assert!(!rules.decide(None, &get("/")).allowed);
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = Rules::build(&[
            AuthzRule {
                paths: vec!["/admin".into()],
                groups: vec!["admins".into()],
                ..rule("admins", true)
            },
            AuthzRule {
                paths: vec!["/admin".into()],
                ..rule("no-admin", false)
            },
            AuthzRule {
                client_cidrs: vec!["10.0.0.0/8".into()],
                methods: vec!["GET".into()],
                ..rule("internal-reads", true)
            },
        ])
        .expect("rules");
        let admin = caller("A", &["admins"], None);
        let user = caller("A", &["users"], None);
        assert!(rules.decide(Some(&admin), &get("/admin/x")).allowed);
        let denied = rules.decide(Some(&user), &get("/admin"));
        assert!(!denied.allowed);
        assert_eq!(denied.rule.as_deref(), Some("no-admin"));
        assert!(rules.decide(Some(&user), &get("/administrator")).allowed);
        let post = Request {
            method: &http::Method::POST,
            ..get("/x")
        };
        assert!(!rules.decide(Some(&user), &post).allowed);
        let outside = Request {
            client_ip: "192.0.2.1".parse().expect("ip"),
            ..get("/x")
        };
        assert!(!rules.decide(Some(&user), &outside).allowed);
    }

    #[test]
    fn claim_operators() {
        let claims = json!({"tier": "gold", "scope": "read write", "roles": ["a", "b"], "email": "x@shop.example", "n": 3});
        let c = |claim: &str, operator, values: &[&str]| ClaimCheck {
            claim: claim.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(claim_holds(
            &claims,
            &c("tier", ClaimOperator::Equals, &["gold"])
        ));
        assert!(!claim_holds(
            &claims,
            &c("tier", ClaimOperator::Equals, &["silver", "gold"])
        ));
        assert!(claim_holds(
            &claims,
            &c("tier", ClaimOperator::OneOf, &["silver", "gold"])
        ));
        assert!(claim_holds(
            &claims,
            &c("scope", ClaimOperator::Contains, &["write"])
        ));
        assert!(claim_holds(
            &claims,
            &c("roles", ClaimOperator::Contains, &["b"])
        ));
        assert!(!claim_holds(
            &claims,
            &c("roles", ClaimOperator::Contains, &["c"])
        ));
        assert!(claim_holds(
            &claims,
            &c("email", ClaimOperator::Prefix, &["x@"])
        ));
        assert!(claim_holds(&claims, &c("n", ClaimOperator::Equals, &["3"])));
        assert!(!claim_holds(
            &claims,
            &c("missing", ClaimOperator::OneOf, &["x"])
        ));
        let rules = Rules::build(&[AuthzRule {
            claims: vec![c("tier", ClaimOperator::Equals, &["gold"])],
            ..rule("gold", true)
        }])
        .expect("rules");
        assert!(
            rules
                .decide(Some(&caller("A", &[], Some(claims))), &get("/"))
                .allowed
        );
        // API-key identities carry no claims.
        assert!(
            !rules
                .decide(Some(&caller("A", &[], None)), &get("/"))
                .allowed
        );
    }

    #[test]
    fn no_rules_allow_and_bad_rules_do_not_build() {
        let rules = Rules::build(&[]).expect("rules");
        assert!(rules.decide(None, &get("/")).allowed);
        assert!(Rules::build(&[AuthzRule {
            client_cidrs: vec!["nonsense".into()],
            ..rule("x", true)
        }])
        .is_err());
    }

    #[test]
    fn prefixes_are_segment_wise() {
        assert!(path_has_prefix("/a", "/a"));
        assert!(path_has_prefix("/a/b", "/a/"));
        assert!(!path_has_prefix("/ab", "/a"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
