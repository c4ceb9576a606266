//! librdkafka client settings shared by every command that talks to Kafka (`project`, `run`,
//! `replay`, `simulate`, the bench): `--kafka-option KEY=VALUE`, the `SESSIONVIEW_KAFKA_<KEY>`
//! environment, and a connection check that names why a broker cannot be used (a wrong password,
//! an untrusted certificate) instead of waiting out a timeout.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

/// The environment prefix of librdkafka settings: `SESSIONVIEW_KAFKA_SASL_MECHANISM=SCRAM-SHA-512`
/// is `sasl.mechanism=SCRAM-SHA-512`.
pub const ENV_PREFIX: &str = "SESSIONVIEW_KAFKA_";

/// Settings whose values are secrets: logged as `***`.
const SECRET_KEYS: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

/// A Kafka setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadKafkaOption {
    #[error("--kafka-option {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    #[error("--kafka-option {0:?} has an empty key")]
    EmptyKey(String),
    #[error("the environment variable {0} is not valid UTF-8")]
    NotUtf8(String),
    #[error(
        "SESSIONVIEW_KAFKA_OPTIONS is no longer read: set each librdkafka setting in its own \
         variable (SESSIONVIEW_KAFKA_SASL_MECHANISM=... is sasl.mechanism) or pass \
         --kafka-option KEY=VALUE once per setting"
    )]
    OldOptionsVariable,
}

/// librdkafka settings given by the operator, in the order they apply: the environment first, then
/// `--kafka-option` flags (so a flag overrides a variable). Applied after sessionview's own
/// defaults, so every default can be overridden.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaOptions {
    settings: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KafkaOptions {
    /// Settings from `SESSIONVIEW_KAFKA_*` variables of `env` (sorted by key, for a stable order)
    /// and then the `KEY=VALUE` `flags`. A value may contain `=` and `,`.
    pub fn from_env_and_flags(
        env: impl IntoIterator<Item = (OsString, OsString)>,
        flags: &[String],
    ) -> Result<Self, BadKafkaOption> {
        let mut from_env = Vec::new();
        for (name, value) in env {
            let Some(name) = name.to_str() else { continue };
            let Some(key) = env_key(name) else { continue };
            if name == "SESSIONVIEW_KAFKA_OPTIONS" {
                return Err(BadKafkaOption::OldOptionsVariable);
            }
            let value = value
                .into_string()
                .map_err(|_| BadKafkaOption::NotUtf8(name.to_owned()))?;
            from_env.push((key, value));
        }
        from_env.sort();
        let mut settings = from_env;
        for flag in flags {
            let (key, value) = flag
                .split_once('=')
                .ok_or_else(|| BadKafkaOption::NotKeyValue(flag.clone()))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(BadKafkaOption::EmptyKey(flag.clone()));
            }
            settings.push((key.to_owned(), value.to_owned()));
        }
        Ok(Self { settings })
    }

    /// Settings from this process's environment and `flags`.
    pub fn from_process(flags: &[String]) -> Result<Self, BadKafkaOption> {
        Self::from_env_and_flags(std::env::vars_os(), flags)
    }

    /// These settings, given directly (tests, the bench).
    pub fn new(settings: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            settings: settings.into_iter().collect(),
        }
    }

    /// Sets every setting on `config` (later ones win).
    pub fn apply(&self, config: &mut ClientConfig) {
        for (k, v) in &self.settings {
            config.set(k, v);
        }
    }

    /// The value the operator gave for `key`, if any (the last one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key=value, ...` with secrets shown as `***`, for logs.
    pub fn describe(&self) -> String {
        self.settings
            .iter()
            .map(|(k, v)| {
                if is_secret(k) {
                    format!("{k}=***")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The security protocol in effect (`plaintext` unless set).
    pub fn security_protocol(&self) -> String {
        self.get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase()
    }
}

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key) || key.ends_with(".password") || key.ends_with(".secret")
}

/// The librdkafka key of a `SESSIONVIEW_KAFKA_*` variable, as the well-known Kafka container images
/// map `KAFKA_*`: lower case, `_` → `.`, `__` → `_`, `___` → `-`.
pub fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if rest.is_empty() {
        return None;
    }
    let lower = rest.to_ascii_lowercase();
    Some(
        lower
            .replace("___", "\u{1}")
            .replace("__", "\u{2}")
            .replace('_', ".")
            .replace('\u{1}', "-")
            .replace('\u{2}', "_"),
    )
}

/// The errors a Kafka client reported through its context, kept so that a failure can say why
/// (librdkafka reports a refused login or certificate there, then retries forever).
#[derive(Debug, Clone, Default)]
pub struct ClientErrors {
    reported: Arc<Mutex<Reported>>,
}

#[derive(Debug, Clone, Default)]
struct Reported {
    last: Option<ReportedError>,
    /// The newest error that retrying cannot fix. Kept apart from `last`: librdkafka follows a
    /// failed handshake with "all brokers are down", which must not hide it.
    fatal: Option<ReportedError>,
}

#[derive(Debug, Clone)]
struct ReportedError {
    code: Option<RDKafkaErrorCode>,
    reason: String,
}

impl ReportedError {
    /// Whether retrying cannot fix it: authentication refused, TLS handshake failed.
    fn is_fatal(&self) -> bool {
        matches!(
            self.code,
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
                    | RDKafkaErrorCode::UnsupportedSASLMechanism
                    | RDKafkaErrorCode::IllegalSASLState
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
            )
        )
    }
}

impl ClientErrors {
    /// Records an error a client context's `error` callback received.
    pub fn record(&self, error: &KafkaError, reason: &str) {
        let reported = ReportedError {
            code: error.rdkafka_error_code(),
            reason: reason.to_owned(),
        };
        if let Ok(mut r) = self.reported.lock() {
            if reported.is_fatal() {
                r.fatal = Some(reported.clone());
            }
            r.last = Some(reported);
        }
    }

    /// An error that retrying cannot fix, if one was reported (whatever came after it).
    pub fn fatal(&self) -> Option<String> {
        let fatal = self.reported.lock().ok()?.fatal.clone()?;
        Some(explain(&fatal))
    }

    /// The last error reported, explained.
    pub fn last(&self) -> Option<String> {
        let last = self.reported.lock().ok()?.last.clone()?;
        Some(explain(&last))
    }
}

fn explain(e: &ReportedError) -> String {
    let hint = match e.code {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            " (check sasl.mechanism, sasl.username and sasl.password)"
        }
        Some(RDKafkaErrorCode::SSL) => {
            " (check ssl.ca.location: it must hold the CA that signed the broker's certificate; \
             and that the broker address matches a name in its certificate)"
        }
        _ => "",
    };
    format!("{}{hint}", e.reason)
}

/// A client context that keeps the errors librdkafka reports (and logs them).
#[derive(Debug, Clone, Default)]
pub struct ErrorKeepingContext {
    pub errors: ClientErrors,
}

impl ClientContext for ErrorKeepingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.record(&error, reason);
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl rdkafka::consumer::ConsumerContext for ErrorKeepingContext {}

/// Why the broker cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot use Kafka at {brokers}: {why}")]
pub struct Unreachable {
    pub brokers: String,
    pub why: String,
}

/// Serves `consumer`'s pending events before anything is assigned, recording the errors among
/// them. A consumer hands an error to its context's `error` callback when it arrives on the main
/// queue, but returns it from `poll` when it arrives on the consumer's own queue (with a
/// `group.id` the main queue is forwarded there): both are kept.
pub fn drain_errors<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    errors: &ClientErrors,
) {
    // Bounded: nothing is assigned, so no message is expected; at most a few events wait.
    for _ in 0..64 {
        match consumer.poll(Duration::ZERO) {
            Some(Err(e)) => errors.record(&e, &e.to_string()),
            Some(Ok(_)) => {}
            None => break,
        }
    }
}

/// Reads the metadata through `fetch`, retrying until `timeout`, and fails at once with the cause
/// when the client reported one that retrying cannot fix (a refused login, an untrusted
/// certificate). librdkafka hands its errors over only while the client is polled: `poll`
/// ([`drain_errors`] for a consumer) runs between tries.
pub fn metadata_or_cause(
    brokers: &str,
    errors: &ClientErrors,
    timeout: Duration,
    mut fetch: impl FnMut(Duration) -> Result<Metadata, KafkaError>,
    mut poll: impl FnMut(),
) -> Result<Metadata, Unreachable> {
    let deadline = Instant::now() + timeout;
    let unreachable = |why: String| Unreachable {
        brokers: brokers.to_owned(),
        why,
    };
    loop {
        let attempt =
            Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()));
        match fetch(attempt.max(Duration::from_millis(100))) {
            Ok(m) => return Ok(m),
            Err(e) => {
                poll();
                if let Some(cause) = errors.fatal() {
                    return Err(unreachable(cause));
                }
                if Instant::now() >= deadline {
                    let reported = errors.last().unwrap_or_else(|| e.to_string());
                    let why = format!(
                        "no answer within {}s ({reported}); is the broker reachable, and is \
                         security.protocol the one its listener speaks?",
                        timeout.as_secs()
                    );
                    return Err(unreachable(why));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn variables_map_to_librdkafka_keys_like_the_kafka_images() {
        assert_eq!(
            env_key("SESSIONVIEW_KAFKA_SASL_MECHANISM").as_deref(),
            Some("sasl.mechanism")
        );
        assert_eq!(
            env_key("SESSIONVIEW_KAFKA_SSL_CA_LOCATION").as_deref(),
            Some("ssl.ca.location")
        );
        assert_eq!(env_key("SESSIONVIEW_KAFKA_A__B").as_deref(), Some("a_b"));
        assert_eq!(
            env_key("SESSIONVIEW_KAFKA_A___B_C").as_deref(),
            Some("a-b.c")
        );
        assert_eq!(env_key("SESSIONVIEW_KAFKA_"), None);
        assert_eq!(env_key("SESSIONVIEW_TEST_KAFKA"), None);
        assert_eq!(env_key("SESSIONVIEW_DATABASE_URL"), None);
    }

    #[test]
    fn flags_override_variables_and_values_keep_commas_and_equals() {
        let o = KafkaOptions::from_env_and_flags(
            env(&[
                ("SESSIONVIEW_KAFKA_SECURITY_PROTOCOL", "SSL"),
                ("SESSIONVIEW_KAFKA_SASL_JAAS", "a=b,c=d"),
                ("PATH", "/bin"),
            ]),
            &[
                "security.protocol=SASL_SSL".into(),
                "ssl.cipher.suites=A,B".into(),
            ],
        )
        .unwrap();
        assert_eq!(o.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(o.security_protocol(), "sasl_ssl");
        assert_eq!(o.get("sasl.jaas"), Some("a=b,c=d"));
        assert_eq!(o.get("ssl.cipher.suites"), Some("A,B"));
        let mut config = ClientConfig::new();
        o.apply(&mut config);
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
    }

    #[test]
    fn bad_settings_are_named() {
        for (flag, expected) in [
            ("novalue", BadKafkaOption::NotKeyValue("novalue".into())),
            ("=x", BadKafkaOption::EmptyKey("=x".into())),
        ] {
            assert_eq!(
                KafkaOptions::from_env_and_flags(Vec::new(), &[flag.into()]).unwrap_err(),
                expected
            );
        }
        let old =
            KafkaOptions::from_env_and_flags(env(&[("SESSIONVIEW_KAFKA_OPTIONS", "a=b")]), &[])
                .unwrap_err();
        assert_eq!(old, BadKafkaOption::OldOptionsVariable);
        assert!(old.to_string().contains("--kafka-option"));
    }

    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let e = KafkaOptions::from_env_and_flags(
            vec![(
                OsString::from("SESSIONVIEW_KAFKA_SASL_PASSWORD"),
                OsString::from_vec(vec![0xff, 0xfe]),
            )],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e,
            BadKafkaOption::NotUtf8("SESSIONVIEW_KAFKA_SASL_PASSWORD".into())
        );
    }

    #[test]
    fn secrets_are_not_described() {
        let o = KafkaOptions::new([
            ("sasl.username".to_owned(), "alice".to_owned()),
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("ssl.keystore.password".to_owned(), "k".to_owned()),
        ]);
        let d = o.describe();
        assert!(d.contains("sasl.username=alice"), "{d}");
        assert!(!d.contains("hunter2") && !d.contains("=k"), "{d}");
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    /// librdkafka follows a failed handshake with "all brokers are down": the refusal stays the
    /// cause (the start-up check failed to see it when the later error came first, and waited
    /// out its 15 s).
    #[test]
    fn a_refusal_is_not_hidden_by_the_errors_that_follow_it() {
        let errors = ClientErrors::default();
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "transport",
        );
        assert_eq!(errors.fatal(), None, "a transport failure is retried");
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "SSL handshake failed: certificate verify failed",
        );
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let fatal = errors.fatal().unwrap();
        assert!(fatal.contains("certificate verify failed"), "{fatal}");
        assert!(fatal.contains("check ssl.ca.location"), "{fatal}");
        assert_eq!(errors.last().as_deref(), Some("1/1 brokers are down"));
    }
}
