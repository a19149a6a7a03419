//! Gateway API keys: who is calling, which models they may use, and their limits.
//!
//! The table is built once from `[[keys]]`. Only SHA-256 digests are kept; a presented key
//! is hashed and compared with every digest in constant time, so neither the comparison
//! nor the table reveals anything about a key. With no `[[keys]]` the gateway is open and
//! [`KeyTable::authenticate`] answers `None` without looking at headers.

use std::sync::Arc;

use bytes::Bytes;
use http::{Extensions, HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, KeyConfig, LimitBackend, ModelPermission, OnBackendError};
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::limits::in_flight::InFlightCap;
use crate::limits::memory::MemoryLimit;
use crate::limits::redis::{RedisBackend, RedisLimit};
use crate::limits::{Limit, LimitKind, Store};
use crate::models::ModelTable;

/// One configured key.
#[derive(Debug)]
pub struct ApiKey {
    /// The configured name: logs, metrics and messages show this, never the key.
    pub name: Arc<str>,
    digest: [u8; 32],
    pub models: ModelPermission,
    pub requests: Option<Limit>,
    pub tokens: Option<Limit>,
    /// Slots for requests in flight (`max_concurrent`).
    pub concurrency: Option<Arc<InFlightCap>>,
    /// This key's `/v1/models` body, built once.
    pub models_json: Bytes,
}

/// The authenticated caller of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<ApiKey>);

impl Caller {
    /// Whether requests of this caller need a token estimate (for its token limit).
    pub fn counts_tokens(&self) -> bool {
        self.0.tokens.is_some()
    }
}

/// Why the Redis backend could not be set up (a bad URL; an unreachable server is not one).
#[derive(Debug, thiserror::Error)]
#[error("rate_limits.redis_url: {0}")]
pub struct BackendSetupError(String);

/// Every configured key.
#[derive(Debug)]
pub struct KeyTable {
    keys: Vec<Arc<ApiKey>>,
    pub on_backend_error: OnBackendError,
}

impl KeyTable {
    /// Builds the table and, for `backend = "redis"`, the shared connection (lazily
    /// connected: needs a tokio runtime, not a reachable Redis).
    pub fn new(config: &Config, models: &ModelTable) -> Result<Self, BackendSetupError> {
        let redis = match &config.rate_limits.backend {
            LimitBackend::Redis { url, timeout } if !config.keys.is_empty() => Some(
                RedisBackend::new(url.expose(), *timeout)
                    .map_err(|e| BackendSetupError(e.to_string()))?,
            ),
            _ => None,
        };
        let limit = |k: &KeyConfig, kind: LimitKind, per_minute| match &redis {
            Some(backend) => Limit::new(Store::Redis(RedisLimit::new(
                backend.clone(),
                &k.name,
                kind,
                per_minute,
            ))),
            None => Limit::new(Store::Memory(MemoryLimit::new(per_minute))),
        };
        let keys = config
            .keys
            .iter()
            .map(|k| {
                Arc::new(ApiKey {
                    name: k.name.clone(),
                    digest: k.digest,
                    models: k.models.clone(),
                    requests: k
                        .requests_per_minute
                        .map(|n| limit(k, LimitKind::Requests, n)),
                    tokens: k.tokens_per_minute.map(|n| limit(k, LimitKind::Tokens, n)),
                    concurrency: k.max_concurrent.map(|n| InFlightCap::new(n.get())),
                    models_json: models.list_json_where(|id| k.models.allows(id)),
                })
            })
            .collect();
        Ok(Self {
            keys,
            on_backend_error: config.rate_limits.on_backend_error,
        })
    }

    /// Whether the gateway is open (no `[[keys]]`).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller presenting `Authorization: Bearer <key>`: `None` on an open gateway,
    /// 401 `invalid_api_key` for a missing or unknown key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Caller>, GatewayError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .ok_or(GatewayError::MissingApiKey)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every digest is compared, so the time taken does not say which one matched.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
            .map(|k| Some(Caller(k.clone())))
            .ok_or(GatewayError::InvalidApiKey)
    }

    /// [`Self::authenticate`] for a request, recording the caller in its context, where the
    /// response side (access log, metrics, `x-ratelimit-*`) finds it. The one way routes
    /// authenticate.
    pub fn authenticate_request(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Option<Caller>, GatewayError> {
        let caller = self.authenticate(headers)?;
        if let (Some(Caller(key)), Some(ctx)) = (&caller, extensions.get::<Arc<RequestContext>>()) {
            let _ = ctx.caller.set(key.clone());
        }
        Ok(caller)
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn table(extra: &str) -> KeyTable {
        let text = format!(
            "[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [[models]]\nid = \"a\"\nupstream = \"u\"\n[[models]]\nid = \"b\"\nupstream = \"u\"\n{extra}"
        );
        let raw = RawConfig::from_toml(&text).map_err(|e| e.to_string());
        let config = raw.and_then(|r| Config::from_raw(&r, None).map_err(|e| e.to_string()));
        let Ok(config) = config else {
            panic!("{config:?}")
        };
        let Ok(models) = ModelTable::new(&config) else {
            panic!("model table")
        };
        match KeyTable::new(&config, &models) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn hex(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn auth(t: &KeyTable, value: &str) -> Result<Option<Caller>, GatewayError> {
        let mut h = HeaderMap::new();
        if let Ok(v) = value.parse() {
            h.insert(header::AUTHORIZATION, v);
        }
        t.authenticate(&h)
    }

    #[test]
    fn an_open_gateway_ignores_authorization() {
        let t = table("");
        assert!(t.is_open());
        assert!(matches!(auth(&t, "Bearer whatever"), Ok(None)));
    }

    #[test]
    fn keys_match_exactly_by_digest() {
        let t = table(&format!(
            "[[keys]]\nname = \"team-a\"\nsha256 = \"{}\"\nmodels = [\"a\"]\n",
            hex("sk-team-a-secret")
        ));
        let Ok(Some(caller)) = auth(&t, "Bearer sk-team-a-secret") else {
            panic!("the right key was refused")
        };
        assert_eq!(&*caller.0.name, "team-a");
        assert!(matches!(auth(&t, "bearer  sk-team-a-secret "), Ok(Some(_))));
        for wrong in [
            "Bearer sk-team-a-secre",
            "Bearer sk-team-a-secrett",
            "Bearer SK-TEAM-A-SECRET",
            "Basic sk-team-a-secret",
            "sk-team-a-secret",
        ] {
            assert!(
                matches!(
                    auth(&t, wrong),
                    Err(GatewayError::InvalidApiKey | GatewayError::MissingApiKey)
                ),
                "{wrong}"
            );
        }
        assert!(matches!(auth(&t, ""), Err(GatewayError::MissingApiKey)));
        assert!(matches!(
            auth(&t, "Bearer "),
            Err(GatewayError::MissingApiKey)
        ));
    }

    #[test]
    fn the_model_list_is_the_keys_own() {
        let t = table(&format!(
            "[[keys]]\nname = \"k\"\nsha256 = \"{}\"\nmodels = [\"b\"]\n",
            hex("k")
        ));
        let Ok(Some(caller)) = auth(&t, "Bearer k") else {
            panic!("refused")
        };
        let body = String::from_utf8_lossy(&caller.0.models_json).into_owned();
        assert!(body.contains("\"b\"") && !body.contains("\"a\""), "{body}");
        assert!(caller.0.models.allows("b") && !caller.0.models.allows("a"));
    }
}
