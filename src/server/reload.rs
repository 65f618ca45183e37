//! Live config reload: a file watcher (and SIGHUP) → load → validate → build → swap.
//!
//! The watcher watches the config file's *directory*, not the file: editors that save by
//! writing a temp file and renaming it, and Kubernetes ConfigMaps that swap a `..data`
//! symlink, replace the file's inode, which a watch on the file itself would lose.
//! Events are debounced; only a config that loads and builds completely is swapped in, so an
//! invalid edit leaves the running config serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config;
use crate::pipeline::Snapshot;
use crate::server::AppState;

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Loads and builds the config at `path`; swaps it in when it is valid.
pub fn reload(state: &AppState, path: Option<&Path>) -> Result<u64, config::ConfigErrors> {
    let stores = state.snapshot.load().stores.clone();
    let result = config::load(path).and_then(|cfg| Snapshot::build(cfg, &state.encoding, GENERATION.fetch_add(1, Ordering::Relaxed) + 1, stores));
    match result {
        Ok(snap) => {
            let old = state.snapshot.load();
            if snap.config.server.listen != old.config.server.listen {
                tracing::warn!(old = %old.config.server.listen, new = %snap.config.server.listen, "server.listen changed: takes effect after a restart");
            }
            if snap.config.server.tls != old.config.server.tls {
                tracing::warn!("server.tls changed: takes effect after a restart");
            }
            if snap.config.server.log_level != old.config.server.log_level || snap.config.server.log_format != old.config.server.log_format {
                tracing::warn!("server.log_level / log_format changed: takes effect after a restart");
            }
            let generation = snap.generation;
            state.snapshot.store(Arc::new(snap));
            state.metrics.config_reload(true);
            tracing::info!(generation, "config reloaded");
            Ok(generation)
        }
        Err(e) => {
            state.metrics.config_reload(false);
            for line in &e.0 {
                tracing::error!(error = %line, "config reload rejected; the previous config keeps serving");
            }
            Err(e)
        }
    }
}

/// Does a change to `changed` concern the config at `config` (or its pipelines)?
fn relevant(changed: &Path, config: &Path, pipelines: &Path) -> bool {
    let name = changed.file_name().and_then(|n| n.to_str()).unwrap_or("");
    changed.file_name() == config.file_name()
        || name == "..data" // Kubernetes ConfigMap symlink swap
        || (changed.parent() == Some(pipelines) && name.ends_with(".toml"))
        || changed == pipelines
}

/// Starts the watcher and the SIGHUP handler. The returned watcher must be kept alive.
pub fn start(state: Arc<AppState>, path: Option<PathBuf>) -> Option<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading config");
                let _ = tx.send(());
            }
        });
    }
    let reload_path = path.clone();
    let reload_state = state.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: editors write in several steps.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let (state, path) = (reload_state.clone(), reload_path.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&state, path.as_deref())).await;
        }
    });

    let path = path?;
    // Canonicalize the directory, not the file: a ConfigMap's file is a symlink into a data
    // directory that the next swap replaces.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let path = dir.join(path.file_name().unwrap_or_default());
    let pipelines = dir.join("pipelines");
    let (cfg_path, pl) = (path.clone(), pipelines.clone());
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) && ev.paths.iter().any(|p| relevant(p, &cfg_path, &pl)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config; SIGHUP still reloads"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; SIGHUP still reloads");
    }
    if pipelines.is_dir() {
        let _ = watcher.watch(&pipelines, RecursiveMode::NonRecursive);
    }
    Some(watcher)
}
