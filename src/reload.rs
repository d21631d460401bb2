//! SIGHUP: re-read the file, validate, compile against the config in force (unchanged
//! upstreams keep their health state), and swap atomically. A bad file changes nothing.

use crate::app::App;
use crate::config;

/// Reloads the config file; the old config stays in force on any error.
pub fn reload(app: &App) -> Result<(), config::ConfigError> {
    let current = app.runtime();
    match config::load(&app.config_path, Some(&current)) {
        Ok(compiled) => {
            if compiled.settings != app.settings {
                tracing::warn!(
                    "start-up settings changed ([server] listen, admin_listen, threads, shutdown_grace; [telemetry]; [cache]); they take effect on restart"
                );
            }
            for w in &compiled.warnings {
                tracing::warn!(warning = %w, "config warning");
            }
            let hash = compiled.runtime.hash.clone();
            let routes = compiled.runtime.routes.len();
            app.swap_runtime(compiled.runtime);
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
