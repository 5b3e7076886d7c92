//! Keeps a [`SharedTenants`] in step with its file while a service runs, so keys can be rotated
//! and limits changed without a restart.
//!
//! The file is reloaded on SIGHUP and whenever its bytes differ from the version in force, which
//! is checked every `poll_interval` by reading the file. Reading a file of a few kilobytes once a
//! second costs next to nothing and sees every change: a rename over the file, an edit in place
//! within the file system's timestamp granularity, a symlink swapped under it (as Kubernetes does
//! for mounted config maps). A file system watcher (inotify and the like) would add a dependency
//! with per-platform behaviour and is known to lose track of a file replaced by rename.
//!
//! Guarantee: a new version is swapped in only when it is valid; a refused version leaves the
//! previous one in force, is logged once at error level with the reason (and counted through
//! `on_reload`), and is not retried until the file changes again or SIGHUP asks for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::{SharedTenants, TenantError, TenantFile};

/// Starts watching `path` and returns the task. Must be called inside a tokio runtime; SIGHUP
/// (on Unix) is handled from the moment this returns, so the signal no longer ends the process.
///
/// `on_reload` is called after every reload attempt, for metrics.
pub fn spawn(
    path: PathBuf,
    tenants: SharedTenants,
    poll_interval: Duration,
    mut on_reload: impl FnMut(&Reload) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let task = async move {
        let first_tick = tokio::time::Instant::now() + poll_interval;
        let mut ticks = tokio::time::interval_at(first_tick, poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last version that was refused, so that it is reported once, not on every tick.
        let mut refused: Option<Seen> = None;
        loop {
            #[cfg(unix)]
            let trigger = tokio::select! {
                _ = ticks.tick() => Trigger::FileChanged,
                // `None` only once the runtime's signal driver is gone: then only ticks remain.
                Some(()) = hangup.recv() => Trigger::Signal,
            };
            #[cfg(not(unix))]
            let trigger = {
                ticks.tick().await;
                Trigger::FileChanged
            };
            let bytes = read(path.clone()).await;
            let seen = match &bytes {
                Ok(bytes) => Seen::Bytes(Sha256::digest(bytes).into()),
                Err(_) => Seen::Unreadable,
            };
            if trigger == Trigger::FileChanged {
                let in_force = match &bytes {
                    Ok(bytes) => tenants.current().is_parsed_from(bytes),
                    Err(_) => false,
                };
                if in_force || refused == Some(seen) {
                    continue;
                }
            }
            let parsed = bytes.and_then(|bytes| {
                let text = String::from_utf8(bytes)
                    .map_err(|_| TenantError::Invalid("the file is not UTF-8 text".to_owned()))?;
                TenantFile::from_toml(&text)
            });
            let reload = match parsed {
                Ok(file) => {
                    refused = None;
                    let file = Arc::new(file);
                    tenants.replace(Arc::clone(&file));
                    tracing::info!(
                        path = %path.display(),
                        trigger = trigger.name(),
                        tenants = file.tenants().len(),
                        keys = file.key_count(),
                        "tenant file reloaded"
                    );
                    Reload::Applied { file }
                }
                Err(error) => {
                    refused = Some(seen);
                    tracing::error!(
                        path = %path.display(),
                        trigger = trigger.name(),
                        error = %error,
                        "tenant file refused; the previous version stays in force: fix the file \
                         (it is read again when it changes, or on SIGHUP)"
                    );
                    Reload::Refused { error }
                }
            };
            on_reload(&reload);
        }
    };
    Ok(tokio::spawn(task))
}

/// The result of one reload attempt.
#[derive(Debug)]
pub enum Reload {
    /// The new version is in force.
    Applied { file: Arc<TenantFile> },
    /// The file was refused; the previous version stays in force.
    Refused { error: TenantError },
}

impl Reload {
    /// `reloaded` or `refused`: the `result` label of a reload counter.
    pub fn result(&self) -> &'static str {
        match self {
            Reload::Applied { .. } => "reloaded",
            Reload::Refused { .. } => "refused",
        }
    }
}

/// What the watcher saw in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Unreadable,
    Bytes([u8; 32]),
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Signal,
    FileChanged,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::FileChanged => "file_changed",
        }
    }
}

/// Reads the file off the async workers.
async fn read(path: PathBuf) -> Result<Vec<u8>, TenantError> {
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(source)) => Err(TenantError::Read {
            path: shown,
            source,
        }),
        Err(join) => Err(TenantError::Read {
            path: shown,
            source: std::io::Error::other(join.to_string()),
        }),
    }
}
