//! A config generation made ready to serve: pipelines compiled to factories, upstream
//! clients built, route globs compiled. Built in full before it is swapped in, so a request
//! always sees one consistent generation.

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use harmony_filters::store::{StateStore, Stores};
use harmony_filters::Compiled;
use openai_harmony::HarmonyEncoding;

use crate::config::{Config, ConfigErrors};
use crate::upstream::Upstream;

pub struct Route {
    /// `routes[i]`, plus the pipeline name: the `route` metric label.
    pub label: String,
    pub path: String,
    models: GlobSet,
    pub upstream: Arc<Upstream>,
    pub pipeline: Arc<Compiled>,
    pub pipeline_name: String,
    /// `upstream_model`: the name sent upstream instead of the client's.
    pub upstream_model: Option<String>,
    /// `reasoning_effort`: the effort of a request that says none.
    pub reasoning_effort: Option<String>,
}

pub struct Snapshot {
    pub generation: u64,
    pub config: Config,
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub default_upstream: Arc<Upstream>,
    pub pipelines: BTreeMap<String, Arc<Compiled>>,
    /// Seals reasoning handed to clients (`server.reasoning_key`, else the process's key).
    pub sealer: Arc<harmony_filters::seal::Sealer>,
    /// Where state between requests lives; the next generation is built with the same.
    pub stores: Arc<Stores>,
}

pub enum RouteMatch<'a> {
    Found(&'a Route),
    /// Some route has this path, none this model.
    NoModel,
    /// No route has this path.
    NoPath,
}

impl Snapshot {
    /// Builds a generation; its pipelines keep state in `stores` (the server's, the same
    /// for every generation, so a reload keeps what the stores hold).
    pub fn build(config: Config, enc: &HarmonyEncoding, generation: u64, stores: Arc<Stores>) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, u) in &config.upstreams {
            match Upstream::new(name, u) {
                Ok(u) => {
                    let u = Arc::new(u);
                    u.start_health_checks();
                    upstreams.insert(name.clone(), u);
                }
                Err(e) => errors.push(e),
            }
        }
        let pipelines: BTreeMap<String, Arc<Compiled>> =
            config.pipelines.iter().map(|(name, (def, _))| (name.clone(), Arc::new(harmony_filters::compile_with(&def.stages, enc, &stores)))).collect();
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let mut set = GlobSetBuilder::new();
            for m in &r.models {
                match Glob::new(m) {
                    Ok(g) => {
                        set.add(g);
                    }
                    Err(e) => errors.push(format!("routes[{i}]: models: {e}")),
                }
            }
            let (Ok(models), Some(upstream), Some(pipeline)) = (set.build(), upstreams.get(&r.upstream), pipelines.get(&r.pipeline)) else {
                continue; // reported above or by load
            };
            routes.push(Route {
                label: format!("routes[{i}]:{}", r.pipeline),
                path: r.path.clone(),
                models,
                upstream: upstream.clone(),
                pipeline: pipeline.clone(),
                pipeline_name: r.pipeline.clone(),
                upstream_model: r.upstream_model.clone(),
                reasoning_effort: r.reasoning_effort.clone(),
            });
        }
        let default_upstream = config.default_upstream().and_then(|n| upstreams.get(n)).cloned();
        match default_upstream {
            Some(default_upstream) if errors.is_empty() => {
                let sealer = match config.server.reasoning_key.as_deref().filter(|k| !k.is_empty()) {
                    Some(secret) => Arc::new(harmony_filters::seal::Sealer::from_secret(secret)),
                    None => harmony_filters::seal::Sealer::process_random(),
                };
                Ok(Self { generation, config, routes, upstreams, default_upstream, pipelines, sealer, stores })
            }
            _ => {
                if errors.is_empty() {
                    errors.push("upstreams: at least one upstream is needed".into());
                }
                Err(ConfigErrors(errors))
            }
        }
    }

    pub fn route(&self, path: &str, model: &str) -> RouteMatch<'_> {
        let mut path_seen = false;
        for r in &self.routes {
            if r.path == path {
                path_seen = true;
                if r.models.is_match(model) {
                    return RouteMatch::Found(r);
                }
            }
        }
        if path_seen {
            RouteMatch::NoModel
        } else {
            RouteMatch::NoPath
        }
    }

    pub fn has_route_path(&self, path: &str) -> bool {
        self.routes.iter().any(|r| r.path == path)
    }

    /// Where a route keeps state between requests: its pipeline's `reasoning-memory` store,
    /// else the server's fallback store (memory, default limits); with no route, the fallback.
    pub fn store_of(&self, route: Option<&Route>) -> Arc<dyn StateStore> {
        match route.and_then(|r| r.pipeline.store.clone()) {
            Some(s) => s,
            None => self.stores.fallback(),
        }
    }

    /// The store a client API's own requests read (`GET`/`DELETE /v1/responses/{id}`): the
    /// store of the first route on the API's path, else the fallback.
    pub fn store_for_api(&self, api: harmony_filters::ClientApi) -> Arc<dyn StateStore> {
        self.store_of(self.routes.iter().find(|r| r.path == api.path()))
    }
}
