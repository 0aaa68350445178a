//! QMP commands for snapshots: device hot-unplug and hot-plug, migration to and from a
//! file through `exec:` (QEMU 7.2 has no `file:` URI), and the virtio status that says
//! when a hot-plugged device's guest driver is up. More methods of [`Qmp`], kept apart
//! from the core client in `qmp.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::qmp::{Qmp, QmpError};

/// How often migration status is polled.
const POLL: Duration = Duration::from_millis(10);

/// A migration's state as `query-migrate` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration yet (`none`, or no `status` at all).
    None,
    /// Setting up or sending (`setup`, `active`, `device`, ...).
    Running(String),
    /// Done: every byte is written (source) or loaded (destination).
    Completed,
    /// Failed, with QEMU's `error-desc` when given.
    Failed(String),
    /// Cancelled.
    Cancelled,
}

impl MigrationStatus {
    /// Reads a `query-migrate` reply.
    pub fn from_reply(v: &Value) -> Self {
        let desc = || {
            v.get("error-desc")
                .and_then(Value::as_str)
                .unwrap_or("no error-desc")
                .to_string()
        };
        match v.get("status").and_then(Value::as_str) {
            None | Some("none") => MigrationStatus::None,
            Some("completed") => MigrationStatus::Completed,
            Some("failed") => MigrationStatus::Failed(desc()),
            Some("cancelled") | Some("cancelling") => MigrationStatus::Cancelled,
            Some(other) => MigrationStatus::Running(other.to_string()),
        }
    }

    /// Whether the migration ended (well or not).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed(_) | MigrationStatus::Cancelled
        )
    }
}

/// An `exec:` URI running `sh -c <cmd>` where `path` is quoted for the shell.
pub fn exec_uri(cmd_before_path: &str, path: &Path) -> String {
    let quoted = path.to_string_lossy().replace('\'', r"'\''");
    format!("exec:{cmd_before_path}'{quoted}'")
}

/// Whether an `x-query-virtio-status` reply says the guest driver runs the device.
pub fn virtio_started(v: &Value) -> bool {
    let vhost = v.get("vhost-started").and_then(Value::as_bool) == Some(true);
    let driver_ok = v
        .get("status")
        .and_then(|s| s.get("statuses"))
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|s| s.contains("DRIVER_OK"))
        });
    vhost || driver_ok
}

impl Qmp {
    /// `device_del` of `id`, then waits up to `timeout` for its DEVICE_DELETED event
    /// (the guest has let go of it).
    pub async fn device_del_wait(&self, id: &str, timeout: Duration) -> Result<(), QmpError> {
        // Subscribed first: the event can come before the command's reply.
        let mut events = self.subscribe();
        self.execute("device_del", Some(json!({ "id": id })))
            .await?;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(ev)
                        if ev.name == "DEVICE_DELETED"
                            && ev.data.get("device").and_then(Value::as_str) == Some(id) =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err(QmpError::Closed),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| QmpError::Timeout(format!("device_del {id} (no DEVICE_DELETED)")))?
    }

    /// `device_add` with the given properties (`driver`, `id`, `bus`, ...).
    pub async fn device_add(&self, props: Value) -> Result<(), QmpError> {
        self.execute("device_add", Some(props)).await.map(drop)
    }

    /// `chardev-add` of a unix socket client connected to `path`.
    pub async fn chardev_add_unix(&self, id: &str, path: &Path) -> Result<(), QmpError> {
        let backend = json!({
            "type": "socket",
            "data": {
                "addr": { "type": "unix", "data": { "path": path.to_string_lossy() } },
                "server": false
            }
        });
        self.execute("chardev-add", Some(json!({ "id": id, "backend": backend })))
            .await
            .map(drop)
    }

    /// Lifts the migration bandwidth limit (the stream goes to a local file).
    pub async fn migrate_unthrottled(&self) -> Result<(), QmpError> {
        let args = json!({ "max-bandwidth": 1u64 << 40 });
        self.execute("migrate-set-parameters", Some(args))
            .await
            .map(drop)
    }

    /// Starts an outgoing migration to `uri`.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// Starts the incoming migration of a QEMU started with `-incoming defer`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `query-migrate`.
    pub async fn query_migrate(&self) -> Result<MigrationStatus, QmpError> {
        let v = self.execute("query-migrate", None).await?;
        Ok(MigrationStatus::from_reply(&v))
    }

    /// Polls `query-migrate` until the migration ends or `timeout` passes; returns
    /// the final status (Completed, Failed or Cancelled).
    pub async fn wait_migration(&self, timeout: Duration) -> Result<MigrationStatus, QmpError> {
        let start = Instant::now();
        loop {
            let status = self.query_migrate().await?;
            if status.is_final() {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(QmpError::Timeout(format!(
                    "migration still {status:?} after {timeout:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the guest driver runs the virtio device at QOM path `path`
    /// (`x-query-virtio-status`: vhost started or DRIVER_OK).
    pub async fn virtio_device_started(&self, path: &str) -> Result<bool, QmpError> {
        let v = self
            .execute("x-query-virtio-status", Some(json!({ "path": path })))
            .await?;
        Ok(virtio_started(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_status_from_replies() {
        assert_eq!(
            MigrationStatus::from_reply(&json!({})),
            MigrationStatus::None
        );
        assert_eq!(
            MigrationStatus::from_reply(&json!({"status": "active", "ram": {}})),
            MigrationStatus::Running("active".into())
        );
        assert_eq!(
            MigrationStatus::from_reply(&json!({"status": "completed"})),
            MigrationStatus::Completed
        );
        let failed = MigrationStatus::from_reply(
            &json!({"status": "failed", "error-desc": "load of migration failed"}),
        );
        assert_eq!(
            failed,
            MigrationStatus::Failed("load of migration failed".into())
        );
        assert!(failed.is_final() && !MigrationStatus::Running("setup".into()).is_final());
    }

    #[test]
    fn exec_uri_quotes_the_path() {
        assert_eq!(
            exec_uri("cat > ", Path::new("/c/snap/state.tmp")),
            "exec:cat > '/c/snap/state.tmp'"
        );
        assert_eq!(
            exec_uri("cat ", Path::new("/a b/it's")),
            r"exec:cat '/a b/it'\''s'"
        );
    }

    #[test]
    fn virtio_status_started() {
        // Shapes of QEMU 7.2's x-query-virtio-status.
        let idle = json!({"vhost-started": false, "status": {"statuses": []}});
        assert!(!virtio_started(&idle));
        let vhost = json!({"vhost-started": true, "status": {"statuses": []}});
        assert!(virtio_started(&vhost));
        let driver = json!({"status": {"statuses": [
            "VIRTIO_CONFIG_S_ACKNOWLEDGE: Valid virtio device found",
            "VIRTIO_CONFIG_S_DRIVER_OK: Driver setup and ready"]}});
        assert!(virtio_started(&driver));
    }
}
