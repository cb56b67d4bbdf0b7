//! Device classification: which [`DeviceClass`] a request comes from, decided
//! from its `User-Agent` and `Sec-CH-UA-Mobile` headers.
//!
//! Routes can match on the device class (`matches[].devices`), rate limits
//! can key on it and the metrics count by it, so this runs on every request.
//! It is one pass of an Aho-Corasick automaton (ASCII case-insensitive, all
//! tokens at once) over at most [`MAX_UA_BYTES`] bytes of the `User-Agent`:
//! no allocation, no copy, about twenty instructions per byte, bounded work
//! however large the header. (The first version tried every token starting
//! with each byte: about 12,800 instructions for a desktop Chrome
//! User-Agent, nearly a third of a proxied request's user-space work; the
//! automaton is kept equivalent to it by a property test.) Tokens past that
//! prefix are not seen; every real User-Agent puts the tokens that matter
//! well before it.
//!
//! # Rules, in order (first that applies wins)
//!
//! All token matches are ASCII case-insensitive substring matches.
//!
//! 1. **Bot.** A crawler, monitor, link previewer or scripted client:
//!    `bot` (Googlebot, bingbot, Slackbot, UptimeRobot, ...; but not the
//!    phone brand `Cubot`), `crawl`, `spider`, `slurp`, `fetcher`,
//!    `facebookexternalhit`, `meta-externalagent`, `mediapartners-google`,
//!    `google-inspectiontool`, `googleother`, `ia_archiver`, `archive.org`,
//!    `embedly`, `skypeuripreview`, `bingpreview`, `vkshare`,
//!    `w3c_validator`; uptime and synthetic monitors (`pingdom`, `uptime`,
//!    `statuscake`, `site24x7`, `newrelicpinger`, `datadogsynthetics`,
//!    `lighthouse`, `pagespeed`, `gtmetrix`) and health checkers
//!    (`kube-probe`, `elb-healthchecker`, `googlehc`, `check_http`,
//!    `zabbix`, `blackbox exporter`); headless browsers (`headless`,
//!    `phantomjs`); command-line tools and server-side HTTP libraries
//!    (`curl/`, `libcurl`, `wget`, `httpie`, `postmanruntime`, `insomnia`,
//!    `powershell`, `python-requests`, `python-urllib`, `python-httpx`,
//!    `aiohttp`, `scrapy`, `go-http-client`, `java/`, `apache-httpclient`,
//!    `libwww-perl`, `node-fetch`, `axios/`, `undici`, `ruby`, `faraday`,
//!    `guzzlehttp`, `wordpress`, `nutch`, `heritrix`). A bot token wins over
//!    everything: Googlebot Smartphone says `Android ... Mobile` and is still
//!    a bot.
//! 2. **Big screens are desktop.** Smart TVs, TV sticks and casting devices
//!    (`smart-tv`, `smarttv`, `hbbtv`, `googletv`, `android tv`, `appletv`,
//!    `roku`, `crkey`, `bravia`, Fire TV's `; aft…` models) get the desktop
//!    layout; many of them otherwise look like Android tablets.
//! 3. **Tablet tokens.** `ipad`, `tablet` (but not Windows' `Tablet PC`),
//!    `kindle`, `silk` (Amazon Fire), `playbook`. Checked before mobile
//!    because iPad and Kindle user agents also say `Mobile`.
//! 4. **`Sec-CH-UA-Mobile: ?1` is mobile.** The client hint is the browser's
//!    own structured answer (Chromium sends it on every request).
//! 5. **Android browser without `Mobile` is a tablet.** This is the
//!    convention Google documents for Android browsers (phones say
//!    `Mobile`, tablets do not). It applies only to browsers (a `Mozilla/`
//!    user agent): an app's own user agent (`Dalvik/…`, `MyApp/1.0
//!    (Android 14)`) says nothing about the screen, and apps run mostly on
//!    phones, so those are mobile (rule 7).
//! 6. **`Sec-CH-UA-Mobile: ?0` is desktop**, whatever else the user agent
//!    says: that is what Chrome sends when the user asked for the desktop
//!    site.
//! 7. **Mobile tokens.** `mobi` (covers `Mobile`, `IEMobile`, `Opera
//!    Mobi`), `iphone`, `ipod`, `windows phone`, `blackberry`, `bb10`,
//!    `opera mini`, `symbian`, `j2me`, `midp`; and native app clients, which
//!    a gateway sees from its users' phone apps: `okhttp` (Android's HTTP
//!    library), `dalvik` (Android's default app user agent), `cfnetwork`
//!    (iOS's default, `MyApp/1 CFNetwork/… Darwin/…`), `alamofire` (iOS),
//!    `dart:io` (Flutter); and any remaining `android`.
//! 8. **Everything else is desktop**, including a missing or empty
//!    `User-Agent`, Electron apps and game consoles.
//!
//! # Choices worth knowing
//!
//! - iPadOS 13+ Safari asks for desktop sites by default and sends a
//!   `Macintosh` user agent with no client hint; it is classified desktop,
//!   which is also the layout it asked for. Only `Sec-CH-UA-Mobile: ?1`
//!   would change that.
//! - Native macOS apps also use CFNetwork and are classified mobile; they
//!   are rare behind an API gateway compared to iOS apps.
//! - Scripted clients count as bots so that limits and routes for "humans
//!   on browsers and apps" can exclude them; an Android or iOS app that uses
//!   okhttp/CFNetwork/Alamofire is a person on a phone, so it is mobile.
//! - Matching is on substrings, like every production UA classifier; a
//!   client can claim any class by sending the right token. Device class is
//!   a routing and fairness hint, never an authorization decision.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crds::DeviceClass;

/// How much of the `User-Agent` is examined.
pub const MAX_UA_BYTES: usize = 512;

/// What a token says about the client.
#[derive(Clone, Copy)]
enum Hint {
    Bot,
    Tv,
    Tablet,
    Mobile,
    App,
    Android,
    Browser,
}

impl Hint {
    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A lowercase token and the contexts in which it does not count.
struct Token {
    text: &'static [u8],
    hint: Hint,
    /// The match is ignored when these bytes come right before it.
    unless_before: &'static [u8],
    /// The match is ignored when these bytes come right after it.
    unless_after: &'static [u8],
}

const fn t(text: &'static str, hint: Hint) -> Token {
    Token {
        text: text.as_bytes(),
        hint,
        unless_before: b"",
        unless_after: b"",
    }
}

static TOKENS: &[Token] = &[
    // Bots: crawlers and link previewers.
    Token {
        unless_before: b"cu", // Cubot phones
        ..t("bot", Hint::Bot)
    },
    t("crawl", Hint::Bot),
    t("spider", Hint::Bot),
    t("slurp", Hint::Bot),
    t("fetcher", Hint::Bot),
    t("facebookexternalhit", Hint::Bot),
    t("meta-externalagent", Hint::Bot),
    t("mediapartners-google", Hint::Bot),
    t("google-inspectiontool", Hint::Bot),
    t("googleother", Hint::Bot),
    t("ia_archiver", Hint::Bot),
    t("archive.org", Hint::Bot),
    t("embedly", Hint::Bot),
    t("skypeuripreview", Hint::Bot),
    t("bingpreview", Hint::Bot),
    t("vkshare", Hint::Bot),
    t("w3c_validator", Hint::Bot),
    t("nutch", Hint::Bot),
    t("heritrix", Hint::Bot),
    // Bots: monitors and health checkers.
    t("pingdom", Hint::Bot),
    t("uptime", Hint::Bot),
    t("statuscake", Hint::Bot),
    t("site24x7", Hint::Bot),
    t("newrelicpinger", Hint::Bot),
    t("datadogsynthetics", Hint::Bot),
    t("lighthouse", Hint::Bot),
    t("pagespeed", Hint::Bot),
    t("gtmetrix", Hint::Bot),
    t("kube-probe", Hint::Bot),
    t("elb-healthchecker", Hint::Bot),
    t("googlehc", Hint::Bot),
    t("check_http", Hint::Bot),
    t("zabbix", Hint::Bot),
    t("blackbox exporter", Hint::Bot),
    // Bots: headless browsers, command-line tools, server-side libraries.
    t("headless", Hint::Bot),
    t("phantomjs", Hint::Bot),
    t("curl/", Hint::Bot),
    t("libcurl", Hint::Bot),
    t("wget", Hint::Bot),
    t("httpie", Hint::Bot),
    t("postmanruntime", Hint::Bot),
    t("insomnia", Hint::Bot),
    t("powershell", Hint::Bot),
    t("python-requests", Hint::Bot),
    t("python-urllib", Hint::Bot),
    t("python-httpx", Hint::Bot),
    t("aiohttp", Hint::Bot),
    t("scrapy", Hint::Bot),
    t("go-http-client", Hint::Bot),
    t("java/", Hint::Bot),
    t("apache-httpclient", Hint::Bot),
    t("libwww-perl", Hint::Bot),
    t("node-fetch", Hint::Bot),
    t("axios/", Hint::Bot),
    t("undici", Hint::Bot),
    t("ruby", Hint::Bot),
    t("faraday", Hint::Bot),
    t("guzzlehttp", Hint::Bot),
    t("wordpress", Hint::Bot),
    // Big screens.
    t("smart-tv", Hint::Tv),
    t("smarttv", Hint::Tv),
    t("hbbtv", Hint::Tv),
    t("googletv", Hint::Tv),
    t("android tv", Hint::Tv),
    t("appletv", Hint::Tv),
    t("roku", Hint::Tv),
    t("crkey", Hint::Tv),
    t("bravia", Hint::Tv),
    t("; aft", Hint::Tv),
    // Tablets.
    t("ipad", Hint::Tablet),
    Token {
        unless_after: b" pc", // Windows "Tablet PC" is a laptop
        ..t("tablet", Hint::Tablet)
    },
    t("kindle", Hint::Tablet),
    t("silk", Hint::Tablet),
    t("playbook", Hint::Tablet),
    // Phones.
    t("mobi", Hint::Mobile),
    t("iphone", Hint::Mobile),
    t("ipod", Hint::Mobile),
    t("windows phone", Hint::Mobile),
    t("blackberry", Hint::Mobile),
    t("bb10", Hint::Mobile),
    t("opera mini", Hint::Mobile),
    t("symbian", Hint::Mobile),
    t("j2me", Hint::Mobile),
    t("midp", Hint::Mobile),
    // Native app HTTP stacks.
    t("okhttp", Hint::App),
    t("dalvik", Hint::App),
    t("cfnetwork", Hint::App),
    t("alamofire", Hint::App),
    t("dart:io", Hint::App),
    // Context for rule 5.
    t("android", Hint::Android),
    t("mozilla/", Hint::Browser),
];

/// Tokens grouped by their first byte, so the scan looks at only the few
/// tokens that can start at each position.
static BY_FIRST_BYTE: LazyLock<Vec<Vec<&'static Token>>> = LazyLock::new(|| {
    let mut index: Vec<Vec<&'static Token>> = vec![Vec::new(); 256];
    for token in TOKENS {
        if let Some(&first) = token.text.first() {
            index[usize::from(first)].push(token);
        }
    }
    index
});

/// Classifies a request by its `User-Agent` and `Sec-CH-UA-Mobile` header
/// values (raw bytes, as received). See the module docs for the rules.
pub fn classify(user_agent: Option<&[u8]>, sec_ch_ua_mobile: Option<&[u8]>) -> DeviceClass {
    let flags = user_agent.map_or(0, scan);
    let has = |hint: Hint| flags & hint.bit() != 0;
    let hint_mobile = sec_ch_ua_mobile.and_then(parse_sf_boolean);

    if has(Hint::Bot) {
        return DeviceClass::Bot;
    }
    if has(Hint::Tv) {
        return DeviceClass::Desktop;
    }
    if has(Hint::Tablet) {
        return DeviceClass::Tablet;
    }
    if hint_mobile == Some(true) {
        return DeviceClass::Mobile;
    }
    if has(Hint::Android) && has(Hint::Browser) && !has(Hint::Mobile) && !has(Hint::App) {
        return DeviceClass::Tablet;
    }
    if hint_mobile == Some(false) {
        return DeviceClass::Desktop;
    }
    if has(Hint::Mobile) || has(Hint::App) || has(Hint::Android) {
        return DeviceClass::Mobile;
    }
    DeviceClass::Desktop
}

/// All of [`TOKENS`], matched at once and case-insensitively; pattern `i`
/// is `TOKENS[i]`. `None` only if the automaton could not be built (it
/// always can: a hundred short patterns), and then [`scan_each`] is used.
static MATCHER: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::Standard)
        .kind(Some(AhoCorasickKind::DFA))
        .build(TOKENS.iter().map(|token| token.text))
        .ok()
});

/// The set of [`Hint`] bits whose tokens occur in the first
/// [`MAX_UA_BYTES`] bytes. Stops at the first bot token, since bot wins.
fn scan(user_agent: &[u8]) -> u8 {
    let Some(matcher) = MATCHER.as_ref() else {
        return scan_each(user_agent);
    };
    let ua = &user_agent[..user_agent.len().min(MAX_UA_BYTES)];
    let mut flags = 0u8;
    for found in matcher.find_overlapping_iter(ua) {
        let Some(token) = TOKENS.get(found.pattern().as_usize()) else {
            continue;
        };
        if in_context(ua, found.start(), found.end(), token) {
            flags |= token.hint.bit();
            if matches!(token.hint, Hint::Bot) {
                return flags;
            }
        }
    }
    flags
}

/// Whether a token found at `start..end` is not cancelled by the text
/// around it (`unless_before` / `unless_after`, ASCII case-insensitive).
fn in_context(ua: &[u8], start: usize, end: usize, token: &Token) -> bool {
    let before = &ua[..start];
    let after = &ua[end..];
    let cancelled_before = !token.unless_before.is_empty()
        && before.len() >= token.unless_before.len()
        && before[before.len() - token.unless_before.len()..]
            .eq_ignore_ascii_case(token.unless_before);
    let cancelled_after = !token.unless_after.is_empty()
        && after.len() >= token.unless_after.len()
        && after[..token.unless_after.len()].eq_ignore_ascii_case(token.unless_after);
    !(cancelled_before || cancelled_after)
}

/// The same as [`scan`], token by token at each byte: the fallback, and
/// the reference the automaton is tested against.
fn scan_each(user_agent: &[u8]) -> u8 {
    let mut buf = [0u8; MAX_UA_BYTES];
    let len = user_agent.len().min(MAX_UA_BYTES);
    for (dst, src) in buf.iter_mut().zip(user_agent) {
        *dst = src.to_ascii_lowercase();
    }
    let ua = &buf[..len];
    let index = &*BY_FIRST_BYTE;

    let mut flags = 0u8;
    for (at, &byte) in ua.iter().enumerate() {
        let Some(candidates) = index.get(usize::from(byte)) else {
            continue;
        };
        for token in candidates {
            if token_matches(ua, at, token) {
                flags |= token.hint.bit();
                if matches!(token.hint, Hint::Bot) {
                    return flags;
                }
            }
        }
    }
    flags
}

fn token_matches(ua: &[u8], at: usize, token: &Token) -> bool {
    let rest = &ua[at..];
    if !rest.starts_with(token.text) {
        return false;
    }
    if !token.unless_before.is_empty() && ua[..at].ends_with(token.unless_before) {
        return false;
    }
    if !token.unless_after.is_empty() && rest[token.text.len()..].starts_with(token.unless_after) {
        return false;
    }
    true
}

/// Parses a Structured Field boolean (RFC 8941): `?1` or `?0`, with optional
/// surrounding whitespace. Anything else is ignored, as the RFC asks.
fn parse_sf_boolean(value: &[u8]) -> Option<bool> {
    match value.trim_ascii() {
        b"?1" => Some(true),
        b"?0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceClass::{Bot, Desktop, Mobile, Tablet};

    /// Real User-Agent strings and what they must classify as without a
    /// client hint.
    const USER_AGENTS: &[(&str, DeviceClass)] = &[
        // Phones.
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", Mobile),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1", Mobile),
        ("Mozilla/5.0 (iPod touch; CPU iPhone OS 12_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1", Mobile),
        ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36", Mobile),
        ("Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0.0.0 Mobile Safari/537.36", Mobile),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UD1A.230803.041; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.163 Mobile Safari/537.36", Mobile),
        ("Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0", Mobile),
        ("Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36", Mobile),
        ("Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.15063", Mobile),
        ("Mozilla/5.0 (compatible; MSIE 10.0; Windows Phone 8.0; Trident/6.0; IEMobile/10.0; ARM; Touch; NOKIA; Lumia 920)", Mobile),
        ("Mozilla/5.0 (BB10; Touch) AppleWebKit/537.35+ (KHTML, like Gecko) Version/10.3.3.2205 Mobile Safari/537.35+", Mobile),
        ("BlackBerry9700/5.0.0.862 Profile/MIDP-2.1 Configuration/CLDC-1.1 VendorID/331", Mobile),
        ("Opera/9.80 (Android; Opera Mini/36.2.2254/119.132; U; id) Presto/2.12.423 Version/12.16", Mobile),
        ("Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25 Version/10.54", Mobile),
        ("Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/110.0.0.0 Mobile Safari/537.36", Mobile),
        // Native app clients.
        ("okhttp/4.12.0", Mobile),
        ("Dalvik/2.1.0 (Linux; U; Android 13; SM-G991B Build/TP1A.220624.014)", Mobile),
        ("MyShop/5.2.1 (com.example.myshop; build:1042; iOS 17.2.1) Alamofire/5.8.0", Mobile),
        ("MyShop/1042 CFNetwork/1494.0.7 Darwin/23.4.0", Mobile),
        ("Dart/3.2 (dart:io)", Mobile),
        ("MyShop/5.2.1 (Android 14; Pixel 7)", Mobile),
        // Tablets.
        ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", Tablet),
        ("Mozilla/5.0 (Linux; Android 13; SM-X906C) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/22.0 Chrome/111.0.5563.116 Safari/537.36", Tablet),
        ("Mozilla/5.0 (Linux; Android 12; SM-T970) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", Tablet),
        ("Mozilla/5.0 (Linux; Android 4.4.2; Nexus 7 Build/KOT49H) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/34.0.1847.114 Safari/537.36", Tablet),
        ("Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/120.3.1 like Chrome/120.0.6099.230 Safari/537.36", Tablet),
        ("Mozilla/5.0 (X11; U; Linux armv7l like Android; en-us) AppleWebKit/531.2+ (KHTML, like Gecko) Version/5.0 Safari/533.2+ Kindle/3.0+", Tablet),
        ("Mozilla/5.0 (Android 14; Tablet; rv:121.0) Gecko/121.0 Firefox/121.0", Tablet),
        ("Mozilla/5.0 (PlayBook; U; RIM Tablet OS 2.1.0; en-US) AppleWebKit/536.2+ (KHTML, like Gecko) Version/7.2.1.0 Safari/536.2+", Tablet),
        // Desktops.
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", Desktop),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91", Desktop),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15", Desktop),
        ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", Desktop),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", Desktop),
        ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", Desktop),
        ("Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0; SLCC2; Tablet PC 2.0)", Desktop),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19041", Desktop),
        ("Mozilla/5.0 (Linux; Android 9; BRAVIA 4K GB Build/PTT1.190515.001.S52) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/92.0.4515.131 Safari/537.36", Desktop),
        ("Mozilla/5.0 (Linux; Android 7.1.2; AFTMM Build/NS6265; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/70.0.3538.110 Mobile Safari/537.36", Desktop),
        ("Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36", Desktop),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Slack/4.36.140 Chrome/120.0.6099.56 Electron/28.0.0 Safari/537.36", Desktop),
        // Crawlers and link previewers.
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Bot),
        ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.216 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Bot),
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36", Bot),
        ("Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)", Bot),
        ("Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)", Bot),
        ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", Bot),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 14_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/14.0 Mobile/15E148 Safari/604.1 (compatible; Applebot/0.1)", Bot),
        ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", Bot),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", Bot),
        ("Twitterbot/1.0", Bot),
        ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", Bot),
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)", Bot),
        // Monitors and health checks.
        ("Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)", Bot),
        ("Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", Bot),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/98.0.4758.102 Safari/537.36 StatusCake", Bot),
        ("kube-probe/1.29", Bot),
        ("ELB-HealthChecker/2.0", Bot),
        ("GoogleHC/1.0", Bot),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Chrome-Lighthouse", Bot),
        // Scripted clients and headless browsers.
        ("curl/8.5.0", Bot),
        ("Wget/1.21.4", Bot),
        ("python-requests/2.31.0", Bot),
        ("Python/3.11 aiohttp/3.9.1", Bot),
        ("Go-http-client/2.0", Bot),
        ("Java/17.0.9", Bot),
        ("Apache-HttpClient/4.5.14 (Java/17.0.9)", Bot),
        ("PostmanRuntime/7.36.0", Bot),
        ("HTTPie/3.2.2", Bot),
        ("axios/1.6.2", Bot),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.28 Safari/537.36", Bot),
    ];

    #[test]
    fn real_user_agents() {
        assert!(USER_AGENTS.len() >= 40);
        let mut wrong = Vec::new();
        for &(ua, want) in USER_AGENTS {
            let got = classify(Some(ua.as_bytes()), None);
            if got != want {
                wrong.push(format!("{ua}\n  want {want:?}, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
    }

    #[test]
    fn missing_or_empty_user_agent_is_desktop() {
        assert_eq!(classify(None, None), Desktop);
        assert_eq!(classify(Some(b""), None), Desktop);
        assert_eq!(classify(Some(b"   "), None), Desktop);
    }

    #[test]
    fn matching_is_case_insensitive() {
        assert_eq!(classify(Some(b"CURL/8.0"), None), Bot);
        assert_eq!(
            classify(Some(b"mozilla/5.0 (IPAD; cpu os 17)"), None),
            Tablet
        );
        assert_eq!(classify(Some(b"Mozilla/5.0 (IpHoNe)"), None), Mobile);
    }

    const IPHONE: &[u8] = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const ANDROID_PHONE: &[u8] = b"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
    const ANDROID_TABLET: &[u8] = b"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const WINDOWS: &[u8] = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const IPAD_DESKTOP_MODE: &[u8] = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";
    const GOOGLEBOT_SMARTPHONE: &[u8] = b"Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.216 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const IPAD: &[u8] = b"Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

    #[test]
    fn client_hint_mobile() {
        // ?1 makes a desktop-looking or missing user agent mobile.
        assert_eq!(classify(Some(WINDOWS), Some(b"?1")), Mobile);
        assert_eq!(classify(None, Some(b"?1")), Mobile);
        assert_eq!(classify(Some(ANDROID_PHONE), Some(b"?1")), Mobile);
        // iPadOS desktop-mode Safari: desktop unless the hint says mobile.
        assert_eq!(classify(Some(IPAD_DESKTOP_MODE), None), Desktop);
        assert_eq!(classify(Some(IPAD_DESKTOP_MODE), Some(b"?1")), Mobile);
        // Bots and explicit tablets win over the hint.
        assert_eq!(classify(Some(GOOGLEBOT_SMARTPHONE), Some(b"?1")), Bot);
        assert_eq!(classify(Some(IPAD), Some(b"?1")), Tablet);
    }

    #[test]
    fn client_hint_not_mobile() {
        // "Request desktop site" on a phone.
        assert_eq!(classify(Some(ANDROID_PHONE), Some(b"?0")), Desktop);
        assert_eq!(classify(Some(IPHONE), Some(b"?0")), Desktop);
        assert_eq!(classify(Some(WINDOWS), Some(b"?0")), Desktop);
        // Chrome on an Android tablet sends ?0 and no "Mobile".
        assert_eq!(classify(Some(ANDROID_TABLET), Some(b"?0")), Tablet);
        assert_eq!(classify(Some(IPAD), Some(b"?0")), Tablet);
        assert_eq!(classify(Some(b"curl/8.5.0"), Some(b"?0")), Bot);
    }

    #[test]
    fn client_hint_parsing() {
        assert_eq!(classify(Some(WINDOWS), Some(b" ?1 ")), Mobile);
        assert_eq!(classify(Some(WINDOWS), Some(b"\t?1")), Mobile);
        // Malformed hints are ignored: the user agent decides.
        for bad in [&b"1"[..], b"?2", b"true", b"?1;a=b", b"", b"?", b"??1"] {
            assert_eq!(classify(Some(IPHONE), Some(bad)), Mobile, "{bad:?}");
            assert_eq!(classify(Some(WINDOWS), Some(bad)), Desktop, "{bad:?}");
        }
    }

    #[test]
    fn only_the_first_bytes_are_examined() {
        let mut ua = vec![b'x'; MAX_UA_BYTES];
        ua.extend_from_slice(b" Googlebot iPhone");
        assert_eq!(classify(Some(&ua), None), Desktop);

        let mut ua = b"curl/8.0 ".to_vec();
        ua.resize(1 << 20, b'a');
        assert_eq!(classify(Some(&ua), None), Bot);
    }

    #[test]
    fn a_token_cut_at_the_limit_does_not_match() {
        let mut ua = vec![b' '; MAX_UA_BYTES - 3];
        ua.extend_from_slice(b"iPhone");
        assert_eq!(classify(Some(&ua), None), Desktop);
        ua.truncate(MAX_UA_BYTES - 3);
        ua.extend_from_slice(b"bot");
        assert_eq!(classify(Some(&ua), None), Bot);
    }

    #[test]
    fn exceptions_only_apply_in_context() {
        // "Cubot" is a phone brand, but a bot token elsewhere still counts.
        assert_eq!(
            classify(
                Some(b"Mozilla/5.0 (Linux; Android 9; CUBOT X19) Googlebot"),
                None
            ),
            Bot
        );
        assert_eq!(classify(Some(b"Robot"), None), Bot);
        // "Tablet PC" is a laptop; a plain "Tablet" is a tablet.
        assert_eq!(
            classify(Some(b"Windows NT 6.1; Tablet PC 2.0"), None),
            Desktop
        );
        assert_eq!(
            classify(Some(b"Windows NT 6.1; Tablet PC 2.0; Tablet"), None),
            Tablet
        );
        assert_eq!(classify(Some(b"Tablet"), None), Tablet);
        // Token at the very start and end of the input.
        assert_eq!(classify(Some(b"bot"), None), Bot);
        assert_eq!(classify(Some(b"cubot"), None), Desktop);
    }

    #[test]
    fn non_utf8_bytes_are_fine() {
        assert_eq!(classify(Some(b"\xff\xfe iPhone \x80"), None), Mobile);
        assert_eq!(classify(Some(&[0u8; 2048]), Some(b"\xff")), Desktop);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(
            ua in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..2048)),
            hint in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
        ) {
            let _ = classify(ua.as_deref(), hint.as_deref());
        }

        #[test]
        fn depends_only_on_the_prefix(
            prefix in proptest::collection::vec(proptest::num::u8::ANY, MAX_UA_BYTES..MAX_UA_BYTES + 1),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let mut long = prefix.clone();
            long.extend_from_slice(&tail);
            proptest::prop_assert_eq!(classify(Some(&prefix), None), classify(Some(&long), None));
        }

        /// The automaton finds what trying each token at each byte finds,
        /// on text made of token pieces, their contexts and noise.
        #[test]
        fn the_automaton_agrees_with_the_token_by_token_scan(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(TOKENS.iter().map(|t| t.text.to_vec()).collect::<Vec<_>>()),
                    proptest::sample::select(vec![
                        b"cu".to_vec(), b"CU".to_vec(), b" pc".to_vec(), b" PC".to_vec(),
                        b"Cubot".to_vec(), b"cuBOT".to_vec(), b"Tablet PC".to_vec(),
                        b"tablet pc".to_vec(), b"tablet p".to_vec(),
                        b"Mozilla/5.0 (".to_vec(), b"; ".to_vec(), b"/".to_vec(),
                    ]),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..6),
                ],
                0..40,
            ),
            upper in proptest::bool::ANY,
        ) {
            let mut ua: Vec<u8> = pieces.concat();
            if upper {
                ua.make_ascii_uppercase();
            }
            proptest::prop_assert!(MATCHER.is_some());
            // Both stop at a bot token, which decides alone; what else each
            // saw before it may differ with the order the matches come in.
            let (fast, each) = (scan(&ua), scan_each(&ua));
            let bot = Hint::Bot.bit();
            if fast & bot != 0 || each & bot != 0 {
                proptest::prop_assert_eq!(fast & bot, each & bot, "{:?}", String::from_utf8_lossy(&ua));
            } else {
                proptest::prop_assert_eq!(fast, each, "{:?}", String::from_utf8_lossy(&ua));
            }
        }

        #[test]
        fn case_does_not_matter(ua in "[ -~]{0,300}") {
            let upper = ua.to_ascii_uppercase();
            let lower = ua.to_ascii_lowercase();
            proptest::prop_assert_eq!(
                classify(Some(upper.as_bytes()), None),
                classify(Some(lower.as_bytes()), None)
            );
        }
    }
}
