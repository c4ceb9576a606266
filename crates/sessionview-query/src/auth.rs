//! Backend.AI request signing (HMAC-SHA256), exactly as API v5.20191215 clients sign requests.
//!
//! string to sign = `METHOD \n path?query \n <date header verbatim> \n host:<Host> \n
//! content-type:<mime> \n x-backendai-version:<version> \n <hex SHA-256 of the empty string>`;
//! key = HMAC(HMAC(secret, "YYYYMMDD" of the request date), host); signature = hex HMAC(key, string).

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The API version this service speaks.
pub const API_VERSION: &str = "v5.20191215";

/// How far the request date may be from the server clock.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(15);

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header")]
    MissingAuthorization,
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(String),
    #[error("unsupported signMethod {0:?}: only HMAC-SHA256 is supported")]
    UnsupportedSignMethod(String),
    #[error("missing Date or X-BackendAI-Date header")]
    MissingDate,
    #[error("cannot parse the request date {0:?} (expected ISO 8601)")]
    BadDate(String),
    #[error(
        "the request date {date} is {skew_secs} s away from the server clock (at most 900 s allowed)"
    )]
    ClockSkew { date: String, skew_secs: i64 },
    #[error("unknown access key {0:?}")]
    UnknownAccessKey(String),
    #[error("access key {0:?} is inactive")]
    InactiveAccessKey(String),
    #[error("signature mismatch")]
    BadSignature,
    /// The keypair could not be read (the database cannot answer): not the caller's fault.
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// Errors in the request's date are the client's parameters (400); the rest fail auth (401).
    pub fn is_bad_parameter(&self) -> bool {
        matches!(
            self,
            AuthError::MissingDate | AuthError::BadDate(_) | AuthError::ClockSkew { .. }
        )
    }
}

/// The request facts that enter the signature.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    pub method: &'a str,
    /// The path with its query string, as sent (`/admin/graphql`).
    pub path_and_query: &'a str,
    /// The `Date` / `X-BackendAI-Date` header value, verbatim.
    pub date: &'a str,
    /// The `Host` header value, verbatim.
    pub host: &'a str,
    /// The request's MIME type (parameters such as `charset` are dropped, case is lowered).
    pub content_type: &'a str,
    /// The `X-BackendAI-Version` header value.
    pub version: &'a str,
}

/// The canonical string a client signs.
pub fn string_to_sign(i: &SigningInput<'_>) -> String {
    let mime = i
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let empty_body_hash = hex::encode(Sha256::digest(b""));
    format!(
        "{}\n{}\n{}\nhost:{}\ncontent-type:{}\nx-backendai-version:{}\n{}",
        i.method, i.path_and_query, i.date, i.host, mime, i.version, empty_body_hash
    )
}

fn hmac(key: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(data);
    mac
}

fn signing_key(secret_key: &str, date: &DateTime<FixedOffset>, host: &str) -> Vec<u8> {
    let day = date.format("%Y%m%d").to_string();
    let k1 = hmac(secret_key.as_bytes(), day.as_bytes())
        .finalize()
        .into_bytes();
    hmac(&k1, host.as_bytes()).finalize().into_bytes().to_vec()
}

/// The hex signature a client with `secret_key` sends for `input` (the client side; also used by
/// tests and the examples).
pub fn sign(secret_key: &str, input: &SigningInput<'_>) -> Result<String, AuthError> {
    let date = parse_date(input.date)?;
    let key = signing_key(secret_key, &date, input.host);
    Ok(hex::encode(
        hmac(&key, string_to_sign(input).as_bytes())
            .finalize()
            .into_bytes(),
    ))
}

/// The headers of a JSON request signed now, as Backend.AI clients send them (`Content-Type`,
/// `Date`, `X-BackendAI-Version`, `Authorization`): the one client-side signing of the workspace
/// (the `query` command, the bench, the tests).
pub fn signed_headers(
    access_key: &str,
    secret_key: &str,
    method: &str,
    path_and_query: &str,
    host: &str,
) -> Result<[(&'static str, String); 4], AuthError> {
    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let signature = sign(
        secret_key,
        &SigningInput {
            method,
            path_and_query,
            date: &date,
            host,
            content_type: "application/json",
            version: API_VERSION,
        },
    )?;
    Ok([
        ("Content-Type", "application/json".to_owned()),
        ("Date", date),
        ("X-BackendAI-Version", API_VERSION.to_owned()),
        (
            "Authorization",
            format!("BackendAI signMethod=HMAC-SHA256, credential={access_key}:{signature}"),
        ),
    ])
}

/// Parses `BackendAI signMethod=HMAC-SHA256, credential=<access_key>:<hex signature>`.
pub fn parse_authorization(header: &str) -> Result<(String, String), AuthError> {
    let malformed = |why: &str| AuthError::MalformedAuthorization(why.to_owned());
    let rest = header
        .trim()
        .strip_prefix("BackendAI")
        .ok_or_else(|| malformed("expected the BackendAI scheme"))?;
    let mut method = None;
    let mut credential = None;
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k.trim() {
            "signMethod" => method = Some(v.trim()),
            "credential" => credential = Some(v.trim()),
            _ => {}
        }
    }
    let method = method.ok_or_else(|| malformed("no signMethod"))?;
    if method != "HMAC-SHA256" {
        return Err(AuthError::UnsupportedSignMethod(method.to_owned()));
    }
    let (ak, sig) = credential
        .and_then(|c| c.split_once(':'))
        .ok_or_else(|| malformed("credential must be <access key>:<signature>"))?;
    if ak.is_empty() || sig.is_empty() {
        return Err(malformed("credential must be <access key>:<signature>"));
    }
    Ok((ak.to_owned(), sig.to_owned()))
}

/// Parses the request date: ISO 8601 with an offset, or without one (then UTC); an HTTP date
/// (RFC 2822) is accepted too.
pub fn parse_date(text: &str) -> Result<DateTime<FixedOffset>, AuthError> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d);
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
    ] {
        if let Ok(d) = DateTime::parse_from_str(t, fmt) {
            return Ok(d);
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(n.and_utc().fixed_offset());
        }
    }
    if let Ok(d) = DateTime::parse_from_rfc2822(t) {
        return Ok(d);
    }
    Err(AuthError::BadDate(text.to_owned()))
}

/// Parses the request date and checks that it lies within [`MAX_CLOCK_SKEW`] of `now`.
pub fn check_date(date: &str, now: DateTime<Utc>) -> Result<DateTime<FixedOffset>, AuthError> {
    let parsed = parse_date(date)?;
    let skew = (now - parsed.with_timezone(&Utc)).abs();
    if skew > MAX_CLOCK_SKEW {
        return Err(AuthError::ClockSkew {
            date: date.to_owned(),
            skew_secs: skew.num_seconds(),
        });
    }
    Ok(parsed)
}

/// Checks the signature of a request whose date was checked (constant-time comparison).
pub fn verify_signature(
    secret_key: &str,
    input: &SigningInput<'_>,
    date: &DateTime<FixedOffset>,
    signature_hex: &str,
) -> Result<(), AuthError> {
    let given =
        hex::decode(signature_hex.to_ascii_lowercase()).map_err(|_| AuthError::BadSignature)?;
    let key = signing_key(secret_key, date, input.host);
    hmac(&key, string_to_sign(input).as_bytes())
        .verify_slice(&given)
        .map_err(|_| AuthError::BadSignature)
}

/// Checks the date window, then the signature.
pub fn verify(
    secret_key: &str,
    input: &SigningInput<'_>,
    signature_hex: &str,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let date = check_date(input.date, now)?;
    verify_signature(secret_key, input, &date, signature_hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn input(date: &str) -> SigningInput<'_> {
        SigningInput {
            method: "POST",
            path_and_query: "/admin/graphql",
            date,
            host: "127.0.0.1:8080",
            content_type: "application/json",
            version: API_VERSION,
        }
    }

    #[test]
    fn string_to_sign_follows_the_contract() {
        let s = string_to_sign(&SigningInput {
            content_type: "Application/JSON; charset=utf-8",
            ..input("2020-02-16T15:47:28.997335+00:00")
        });
        assert_eq!(
            s,
            "POST\n/admin/graphql\n2020-02-16T15:47:28.997335+00:00\nhost:127.0.0.1:8080\n\
             content-type:application/json\nx-backendai-version:v5.20191215\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// A test vector computed independently with Python's hmac/hashlib, the way the
    /// backend.ai-client 20.03 signs (see `tests/sign_vector.py`).
    #[test]
    fn matches_the_python_client_test_vector() {
        let sig = sign(SECRET, &input("2020-02-16T15:47:28.997335+00:00")).unwrap();
        assert_eq!(sig, include_str!("../tests/sign_vector.txt").trim());
    }

    #[test]
    fn verifies_within_the_window_and_refuses_outside() {
        let date = "2020-02-16T15:47:28.997335+00:00";
        let sig = sign(SECRET, &input(date)).unwrap();
        let at = Utc.with_ymd_and_hms(2020, 2, 16, 15, 47, 28).unwrap();
        assert_eq!(verify(SECRET, &input(date), &sig, at), Ok(()));
        assert_eq!(
            verify(SECRET, &input(date), &sig.to_uppercase(), at),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, &input(date), &sig, at + TimeDelta::minutes(14)),
            Ok(())
        );
        assert!(matches!(
            verify(SECRET, &input(date), &sig, at + TimeDelta::minutes(16)),
            Err(AuthError::ClockSkew { .. })
        ));
        assert!(matches!(
            verify(SECRET, &input(date), &sig, at - TimeDelta::minutes(16)),
            Err(AuthError::ClockSkew { .. })
        ));
        assert_eq!(
            verify("other", &input(date), &sig, at),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, &input(date), "zz", at),
            Err(AuthError::BadSignature)
        );
        let other_path = SigningInput {
            path_and_query: "/admin/gql",
            ..input(date)
        };
        assert_eq!(
            verify(SECRET, &other_path, &sig, at),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn dates_without_offset_are_utc_and_http_dates_parse() {
        let utc = parse_date("2020-02-16T15:47:28.997335").unwrap();
        assert_eq!(utc, parse_date("2020-02-16T15:47:28.997335+00:00").unwrap());
        assert!(parse_date("Sun, 16 Feb 2020 15:47:28 GMT").is_ok());
        assert_eq!(
            parse_date("yesterday"),
            Err(AuthError::BadDate("yesterday".into()))
        );
    }

    #[test]
    fn the_signing_day_is_the_dates_own_calendar_day() {
        // 23:30 at -05:00 is the next day in UTC; the client signs with its own date text.
        let local = "2020-02-16T23:30:00-05:00";
        let sig = sign(SECRET, &input(local)).unwrap();
        let at = Utc.with_ymd_and_hms(2020, 2, 17, 4, 30, 0).unwrap();
        assert_eq!(verify(SECRET, &input(local), &sig, at), Ok(()));
    }

    #[test]
    fn parses_the_authorization_header() {
        assert_eq!(
            parse_authorization("BackendAI signMethod=HMAC-SHA256, credential=AKIAEXAMPLE:abc123")
                .unwrap(),
            ("AKIAEXAMPLE".into(), "abc123".into())
        );
        assert!(matches!(
            parse_authorization("BackendAI signMethod=HMAC-MD5, credential=a:b"),
            Err(AuthError::UnsupportedSignMethod(_))
        ));
        assert!(matches!(
            parse_authorization("Bearer xyz"),
            Err(AuthError::MalformedAuthorization(_))
        ));
        assert!(matches!(
            parse_authorization("BackendAI signMethod=HMAC-SHA256, credential=nocolon"),
            Err(AuthError::MalformedAuthorization(_))
        ));
    }
}
