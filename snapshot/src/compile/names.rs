//! Checks of the small syntaxes inside resources: host names, header names
//! and values, paths, URLs, CIDRs, regular expressions and durations.
//!
//! Each returns `Err(message)` with a sentence for the status message; the
//! caller adds the field path and the reason. URLs and CIDRs are parsed by
//! hand: the grammar accepted is small (`http(s)://host[:port][/path]`), and
//! the `url` crate would accept much that a backend address must not have
//! (userinfo, query, fragment, non-HTTP schemes).

use super::MAX_REGEX_SIZE;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Checks a DNS name (no wildcard): lowercase letters, digits and `-`,
/// labels of 1 to 63 characters, at most 253 in all. IP addresses are
/// refused.
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > 253 {
        return Err(format!("{} characters; at most 253", name.len()));
    }
    if name.parse::<Ipv4Addr>().is_ok() || name.parse::<Ipv6Addr>().is_ok() {
        return Err(format!("{name:?} is an IP address; a host name is needed"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{name:?} must be lowercase (use {:?})",
            name.to_ascii_lowercase()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{name:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("{name:?} has a label longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            let hint = if c == '*' {
                " (a wildcard is only allowed as the whole first label: *.example.com)"
            } else if c == ':' {
                " (no port: host names are matched without it)"
            } else {
                ""
            };
            return Err(format!(
                "{name:?} is not a valid DNS name: character {c:?} is not allowed{hint}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{name:?} is not a valid DNS name: a label cannot start or end with '-'"
            ));
        }
    }
    Ok(())
}

/// Checks a host of a route or certificate: a DNS name, or `*.` and a DNS
/// name.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    match host.strip_prefix("*.") {
        Some(rest) => check_dns_name(rest),
        None => check_dns_name(host),
    }
}

/// Whether `c` may appear in an HTTP header name (RFC 9110 `tchar`).
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Checks an HTTP header name; returns it lowercased.
pub(crate) fn header_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("a header name must not be empty".to_owned());
    }
    if name.len() > super::MAX_HEADER_NAME_LEN {
        return Err(format!(
            "header name is {} characters; at most {}",
            name.len(),
            super::MAX_HEADER_NAME_LEN
        ));
    }
    if let Some(c) = name.bytes().find(|b| !is_tchar(*b)) {
        return Err(format!(
            "{name:?} is not a valid header name: character {:?} is not allowed",
            c as char
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Checks an HTTP header value: no control characters but tab.
pub(crate) fn check_header_value(value: &str) -> Result<(), String> {
    if value.len() > super::MAX_HEADER_VALUE_LEN {
        return Err(format!(
            "value is {} bytes; at most {}",
            value.len(),
            super::MAX_HEADER_VALUE_LEN
        ));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(
            "a header value must not contain control characters (CR, LF, NUL...)".to_owned(),
        );
    }
    Ok(())
}

/// Checks a path: starts with `/`, no whitespace or control characters, no
/// `?` or `#`.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if path.len() > super::MAX_PATH_LEN {
        return Err(format!(
            "path is {} characters; at most {}",
            path.len(),
            super::MAX_PATH_LEN
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
    {
        return Err(format!("{path:?} must not contain {c:?}"));
    }
    Ok(())
}

/// Compiles a regular expression as the dataplane will (anchored, size
/// limit) and reports the first error on one line.
pub(crate) fn check_regex(pattern: &str) -> Result<(), String> {
    if pattern.len() > super::MAX_PATH_LEN * 4 {
        return Err(format!(
            "regex is {} characters; at most {}",
            pattern.len(),
            super::MAX_PATH_LEN * 4
        ));
    }
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(MAX_REGEX_SIZE)
            .build()
            .map(|_| ())
    };
    build(pattern)
        .and_then(|()| build(&format!("^(?:{pattern})$")))
        .map_err(|e| regex_message(&e))
}

fn regex_message(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => {
            let detail = text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or("invalid syntax");
            format!("regex parse error: {detail}")
        }
        regex::Error::CompiledTooBig(limit) => {
            format!("regex too large: its compiled form exceeds {limit} bytes")
        }
        other => format!("regex error: {}", other.to_string().replace('\n', " ")),
    }
}

/// Parses a duration field, in milliseconds.
pub(crate) fn duration_ms(text: &str) -> Result<u64, String> {
    crds::common::parse_duration_ms(text).ok_or_else(|| {
        format!("{text:?} is not a duration (use up to four parts with units h, m, s, ms, e.g. 250ms, 5s, 1m30s)")
    })
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// An HTTP URL split into what a cluster needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    pub(crate) scheme: Scheme,
    /// Host name (lowercase) or IP address (IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Base path without trailing `/`; empty for none.
    pub(crate) path: String,
}

impl HttpUrl {
    /// `scheme://host:port` (IPv6 in brackets).
    pub(crate) fn origin(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Parses `http(s)://host[:port][/path]`. No userinfo, query or fragment.
pub(crate) fn parse_http_url(text: &str) -> Result<HttpUrl, String> {
    if text.len() > 2048 {
        return Err("URL longer than 2048 characters".to_owned());
    }
    let lower_prefix = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    let (scheme, rest) = if lower_prefix.starts_with("https://") {
        (Scheme::Https, &text[8..])
    } else if lower_prefix.starts_with("http://") {
        (Scheme::Http, &text[7..])
    } else {
        return Err(format!("{text:?} is not an http:// or https:// URL"));
    };
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} must not contain {c:?}"));
    }
    if rest.contains('?') || rest.contains('#') {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "{text:?} must not contain user information; put credentials in filters.requestHeaders"
        ));
    }
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let (host, port_text) = if let Some(inner) = authority.strip_prefix('[') {
        let end = inner
            .find(']')
            .ok_or_else(|| format!("{text:?}: unclosed '[' in the host"))?;
        let host = &inner[..end];
        let after = &inner[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{text:?}: unexpected text after ']'")),
        };
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("{text:?}: {host:?} is not an IPv6 address"))?;
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if !host.contains(':') && host.parse::<Ipv4Addr>().is_err() {
        check_dns_name(&host).map_err(|e| format!("{text:?}: host {e}"))?;
    }
    let port = match port_text {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "{text:?}: port {p:?} is not a number from 1 to 65535"
                ))
            }
        },
    };
    let path = path.trim_end_matches('/').to_owned();
    Ok(HttpUrl {
        scheme,
        host,
        port,
        path,
    })
}

/// Parses `address/prefix-length` or a bare address; returns the normalized
/// `address/prefix-length`.
pub(crate) fn parse_cidr(text: &str) -> Result<String, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{text:?}: prefix length must be 0 to {max}")),
        },
    };
    Ok(format!("{ip}/{len}"))
}

/// Checks a key path of a JSON transform: `a.b.c`, `items[].id`.
pub(crate) fn check_json_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 256 {
        return Err("a key path must have 1 to 256 characters".to_owned());
    }
    for segment in path.split('.') {
        let name = segment.strip_suffix("[]").unwrap_or(segment);
        if name.is_empty() || name.contains('[') || name.contains(']') {
            return Err(format!(
                "{path:?} is not a key path (use a.b.c, or items[].id for every element of an array)"
            ));
        }
    }
    Ok(())
}

/// Checks a name of the Kubernetes kind `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at
/// most 63 characters (rule and limit names).
pub(crate) fn check_label_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(check_host("shop.example.com").is_ok());
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("localhost").is_ok());
        assert!(check_host("Shop.example.com").is_err());
        assert!(check_host("a.*.com").is_err());
        assert!(check_host("example.com:80").is_err());
        assert!(check_host("10.0.0.1").is_err());
        assert!(check_host("-a.com").is_err());
        assert!(check_host("").is_err());
        assert!(check_host("*.").is_err());
    }

    #[test]
    fn urls() {
        let u = parse_http_url("http://127.0.0.1:9101").unwrap();
        assert_eq!(u.origin(), "http://127.0.0.1:9101");
        assert_eq!(u.path, "");
        let u = parse_http_url("HTTPS://Api.Example.com/v1/").unwrap();
        assert_eq!(u.origin(), "https://api.example.com:443");
        assert_eq!(u.path, "/v1");
        let u = parse_http_url("http://[::1]:8080/x").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.origin(), "http://[::1]:8080");
        for bad in [
            "ftp://x",
            "http://",
            "http://a:0",
            "http://a:99999",
            "http://u:p@h",
            "http://h/?q",
            "http://[::1",
            "http://h h",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap(), "10.1.2.3/32");
        assert_eq!(parse_cidr("::1").unwrap(), "::1/128");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
    }

    #[test]
    fn regex_messages_are_one_line() {
        let e = check_regex("/api/[").unwrap_err();
        assert!(e.starts_with("regex parse error: "), "{e}");
        assert!(!e.contains('\n'));
        let e = check_regex("(a{1000}){1000}").unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn header_names() {
        assert_eq!(header_name("X-User").unwrap(), "x-user");
        assert!(header_name("bad header").is_err());
        assert!(header_name("").is_err());
        assert!(check_header_value("a\r\nb").is_err());
    }
}
