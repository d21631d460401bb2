//! SIGHUP: re-read the file, compile it to a plan, materialize it against the runtime in force
//! (unchanged upstreams keep their health, unchanged limits their counters), and swap it in
//! atomically. A bad file changes nothing.

use crate::app::App;
use crate::config;
use crate::runtime;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot make the config live: {0}")]
    Runtime(#[from] runtime::RuntimeError),
}

/// Reloads the config file; the old config stays in force on any error.
pub fn reload(app: &App) -> Result<(), ReloadError> {
    let result = config::load(&app.config_path).map_err(ReloadError::from).and_then(|plan| {
        if plan.settings != app.settings {
            tracing::warn!(
                "start-up settings changed ([server] listen, admin_listen, threads, shutdown_grace, upgrade_sock, upstream_keepalive_pool; [telemetry]; [cache]; [state]); they take effect on restart"
            );
        }
        for w in &plan.warnings {
            tracing::warn!(warning = %w, "config warning");
        }
        let current = app.runtime();
        Ok(runtime::materialize(plan, Some(&current), &app.process_parts())?)
    });
    match result {
        Ok(runtime) => {
            let hash = runtime.hash.clone();
            let routes = runtime.routes.len();
            app.swap_runtime(runtime);
            app.record_load(true, format!("reloaded config {hash}"));
            tracing::info!(hash = %hash, routes, "config reloaded");
            Ok(())
        }
        Err(e) => {
            app.record_load(false, e.to_string());
            tracing::error!(error = %e, "config reload failed; keeping the config in force");
            Err(e)
        }
    }
}
