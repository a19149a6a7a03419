//! The model table: which model ids the gateway serves and the route for each.
//! Built once at start-up from the validated config; read-only afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::{Config, ModelConfig, ModelMatch};
use crate::openai::{Model, ModelList};
use crate::per_worker::{Local, PerWorker};
use crate::upstream::{Upstream, UpstreamBuildError};

/// Where a model's requests go and the limits that apply to them.
#[derive(Debug)]
pub struct ModelRoute {
    /// The configured id (`"*"` for the wildcard entry).
    pub id: Arc<str>,
    pub config: ModelConfig,
    pub upstream: Arc<Upstream>,
    /// The JSON string to splice in as `"model"` when the upstream knows the model under
    /// another name; `None` forwards the client's bytes unchanged.
    pub upstream_model_json: Option<Bytes>,
}

/// All configured models.
#[derive(Debug)]
pub struct ModelTable {
    /// Per worker: each request holds its route for its whole life (`per_worker`).
    exact: HashMap<String, PerWorker<ModelRoute>>,
    wildcard: Option<PerWorker<ModelRoute>>,
    /// Listed ids in configuration order, for `/v1/models`.
    listed: Vec<Arc<ModelRoute>>,
    /// When the table was built, reported as `created`.
    created: u64,
    /// Every configured upstream, in configuration order.
    upstreams: Vec<Arc<Upstream>>,
}

impl ModelTable {
    /// Builds one client per upstream and one route per model.
    pub fn new(config: &Config) -> Result<Self, UpstreamBuildError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut exact = HashMap::new();
        let mut wildcard = None;
        let mut listed = Vec::new();
        for m in &config.models {
            // Validation guarantees the index; a miss would be a bug, so skip rather than panic.
            let Some(upstream) = upstreams.get(m.upstream).cloned() else {
                continue;
            };
            let upstream_model_json = m
                .upstream_model
                .as_ref()
                .map(|name| Bytes::from(serde_json::Value::from(name.as_str()).to_string()));
            let id: Arc<str> = match &m.matches {
                ModelMatch::Exact(id) => Arc::from(id.as_str()),
                ModelMatch::Wildcard => Arc::from("*"),
            };
            let route = Arc::new(ModelRoute {
                id,
                config: m.clone(),
                upstream,
                upstream_model_json,
            });
            match &m.matches {
                ModelMatch::Exact(id) => {
                    exact.insert(id.clone(), PerWorker::new(route.clone()));
                    listed.push(route);
                }
                ModelMatch::Wildcard => wildcard = Some(PerWorker::new(route)),
            }
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            exact,
            wildcard,
            listed,
            created,
            upstreams,
        })
    }

    /// Every configured upstream.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The route for a requested model id: an exact entry, else the wildcard.
    pub fn resolve(&self, model: &str) -> Option<Local<ModelRoute>> {
        self.exact
            .get(model)
            .or(self.wildcard.as_ref())
            .map(PerWorker::local)
    }

    /// The `/v1/models` list body (`"*"` is not a model and is not listed).
    pub fn list_json(&self) -> Bytes {
        self.list_json_where(|_| true)
    }

    /// The list body of the listed ids `keep` accepts (a key's own list).
    pub fn list_json_where(&self, keep: impl Fn(&str) -> bool) -> Bytes {
        let data = self
            .listed
            .iter()
            .filter(|r| keep(&r.id))
            .map(|r| self.entry(r))
            .collect();
        json_bytes(&ModelList {
            object: "list",
            data,
        })
    }

    /// The `/v1/models/{id}` body, for listed ids only.
    pub fn model_json(&self, id: &str) -> Option<Bytes> {
        let route = self.exact.get(id)?;
        Some(json_bytes(&self.entry(route.get())))
    }

    fn entry<'a>(&self, r: &'a ModelRoute) -> Model<'a> {
        Model {
            id: &r.id,
            object: "model",
            created: self.created,
            owned_by: &r.upstream.name,
        }
    }
}

fn json_bytes(v: &impl serde::Serialize) -> Bytes {
    serde_json::to_vec(v).map(Bytes::from).unwrap_or_default()
}
