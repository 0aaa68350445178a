//! A fresh guest, the fast way when possible: restore the configuration's snapshot
//! (taking it first when there is none), and fall back to a cold boot when the
//! snapshot cannot be used, saying why. Also the fresh-state proof for restored guests
//! (their boot id is the snapshot's) and the disk-cache trap.

use std::time::{Duration, Instant};

use vexfs_proto::{ExecRequest, HealthReply};

use super::snapshot::{self, RestoreTimings, Restored, SnapshotError};
use super::{Accel, Vm, VmConfig, VmError, VsockSlot, resolve_accel};
use crate::client::AgentClient;

/// Restores tried before a silent agent makes it a cold boot.
const RESTORE_ATTEMPTS: u32 = 2;

/// How a fresh guest came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartedFrom {
    /// Restored from the snapshot; the guest reports this generation.
    Snapshot {
        /// The restore generation written into the guest.
        generation: u64,
        /// Whether the snapshot was taken by this call (none existed).
        taken_now: bool,
    },
    /// A cold boot; `fallback` says why the snapshot was not used (None: snapshots
    /// were not asked for).
    ColdBoot {
        /// The snapshot failure that made this a cold boot.
        fallback: Option<String>,
    },
}

/// A fresh guest with its agent answering.
#[derive(Debug)]
pub struct Started {
    /// The VM.
    pub vm: Vm,
    /// A client of its agent.
    pub client: AgentClient,
    /// Its Health.
    pub health: HealthReply,
    /// Restored or booted.
    pub from: StartedFrom,
    /// From the call to agent healthy (including any snapshot taken on the way).
    pub elapsed: Duration,
    /// Restores whose agent stayed silent before this one (or before the cold boot).
    pub silent_retries: u32,
    /// Phases of the restore that worked.
    pub restore: Option<RestoreTimings>,
}

impl Started {
    /// One line for a recovery timeline: how the guest started, in how long, and
    /// where a restore's time went.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} in {:.2} s",
            self.from.describe(),
            self.elapsed.as_secs_f64()
        );
        if let Some(t) = &self.restore {
            s.push_str(&format!(
                " (state loaded {:.2} s, agent {:.2} s)",
                t.loaded.as_secs_f64(),
                t.healthy.as_secs_f64()
            ));
        }
        if self.silent_retries > 0 {
            s.push_str(&format!(
                "; {} restore(s) with a silent agent before",
                self.silent_retries
            ));
        }
        s
    }
}

/// Restores `cfg`'s snapshot (taking it when missing; a snapshot that fails to
/// restore is removed, so the next call rebuilds it) or, when that fails, cold boots
/// `cfg`; each attempt waits up to `timeout` for the agent. Only a failed cold boot is
/// an error. A `cfg` without the root-port layout ([`snapshots_wanted`]) cold boots
/// with no fallback reason. A restored guest with disks has their cached blocks
/// dropped before it is returned (the disk files may be newer than the snapshot).
pub async fn restore_or_boot(cfg: &VmConfig, timeout: Duration) -> Result<Started, VmError> {
    let start = Instant::now();
    let accel = resolve_accel(cfg).await;
    if !snapshots_wanted(cfg) {
        return cold_boot(cfg, accel, start, timeout, None, 0).await;
    }
    let mut retries = 0;
    let fallback = match snapshot_restore(cfg, accel, timeout, &mut retries).await {
        Ok((r, taken_now)) => match drop_disk_caches(cfg, &r.client).await {
            Ok(()) => {
                return Ok(Started {
                    vm: r.vm,
                    client: r.client,
                    health: r.health,
                    from: StartedFrom::Snapshot {
                        generation: r.generation,
                        taken_now,
                    },
                    elapsed: start.elapsed(),
                    silent_retries: retries,
                    restore: Some(r.timings),
                });
            }
            Err(e) => {
                r.vm.kill();
                format!("restored guest unusable: {e}")
            }
        },
        Err(e) => e.to_string(),
    };
    tracing::warn!(error = %fallback, "snapshot restore failed; cold booting");
    cold_boot(cfg, accel, start, timeout, Some(fallback), retries).await
}

/// Whether `cfg` asks for snapshot restores: its vsock device sits on the PCIe root
/// port ([`VsockSlot::RootPort`]), the layout a snapshot is taken and restored with.
pub fn snapshots_wanted(cfg: &VmConfig) -> bool {
    cfg.vsock_slot == VsockSlot::RootPort
}

/// The guest paths of `cfg`'s disks (the agent links each by its name).
pub fn disk_devices(cfg: &VmConfig) -> Vec<String> {
    cfg.disks
        .iter()
        .map(|d| format!("/dev/disk/by-name/{}", d.name))
        .collect()
}

/// Drops what the restored guest cached of `cfg`'s disks; nothing to do without disks.
async fn drop_disk_caches(cfg: &VmConfig, client: &AgentClient) -> Result<(), VmError> {
    let devices = disk_devices(cfg);
    if devices.is_empty() {
        return Ok(());
    }
    let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    drop_block_caches(client, &refs).await
}

/// Boots `cfg` and waits up to `timeout` for its agent. The wait starts at the
/// launch: a soak under load saw two silent restores use up a shared budget, leaving a
/// fallback boot 0 s to come up ("did not boot within 0ns").
async fn cold_boot(
    cfg: &VmConfig,
    accel: Accel,
    start: Instant,
    timeout: Duration,
    fallback: Option<String>,
    silent_retries: u32,
) -> Result<Started, VmError> {
    let vm = Vm::launch_with(cfg, accel).await?;
    let (client, health) = match vm.wait_for_agent(timeout).await {
        Ok(ok) => ok,
        Err(e) => {
            if let Some(why) = &fallback {
                tracing::warn!(snapshot = %why, error = %e, "cold boot after a failed restore failed too");
            }
            return Err(e);
        }
    };
    Ok(Started {
        vm,
        client,
        health,
        from: StartedFrom::ColdBoot { fallback },
        elapsed: start.elapsed(),
        silent_retries,
        restore: None,
    })
}

impl StartedFrom {
    /// Whether the guest came from the snapshot.
    pub fn restored(&self) -> bool {
        matches!(self, StartedFrom::Snapshot { .. })
    }

    /// One line for a recovery timeline: restored or cold booted, and why.
    pub fn describe(&self) -> String {
        match self {
            StartedFrom::Snapshot {
                generation,
                taken_now: false,
            } => format!("restored from snapshot (generation {generation})"),
            StartedFrom::Snapshot {
                generation,
                taken_now: true,
            } => format!("snapshot taken, then restored (generation {generation})"),
            StartedFrom::ColdBoot { fallback: None } => "cold boot (snapshots off)".into(),
            StartedFrom::ColdBoot {
                fallback: Some(why),
            } => format!("cold boot, snapshot not used: {why}"),
        }
    }
}

/// Restores the snapshot of `cfg`, taking it first when there is none; removes one
/// that does not restore. Returns whether it was taken now; `silent_count` counts the
/// restores whose agent never answered.
pub async fn snapshot_restore(
    cfg: &VmConfig,
    accel: Accel,
    timeout: Duration,
    silent_count: &mut u32,
) -> Result<(Restored, bool), SnapshotError> {
    let root = snapshot::store_root(cfg);
    let key = snapshot::snapshot_key(cfg, accel)?;
    let (snap, taken_now) = match snapshot::find(&root, &key) {
        Some(s) => (s, false),
        None => (snapshot::take(cfg, accel, &root, timeout).await?, true),
    };
    let mut silent = None;
    for _ in 0..RESTORE_ATTEMPTS {
        match Vm::restore(cfg, accel, &snap, timeout).await {
            Ok(r) => return Ok((r, taken_now)),
            // The transport wedged, not the snapshot: keep it and try again.
            Err(e @ SnapshotError::AgentSilent(_)) => {
                tracing::warn!(error = %e, "restored agent silent; restoring again");
                *silent_count += 1;
                silent = Some(e);
            }
            Err(e) => {
                snapshot::discard(&snap);
                return Err(e);
            }
        }
    }
    Err(silent.unwrap_or_else(|| SnapshotError::AgentSilent("no attempt".into())))
}

/// Why a guest counts as fresh after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// A new boot: another boot id, no restore generation.
    NewBoot,
    /// A new restore: a generation the old guest did not have.
    NewRestore {
        /// The new generation.
        generation: u64,
    },
}

/// Whether `new` is a different guest from `old` (the one that crashed): a new
/// restore generation, or a new boot id without one. A restored guest keeps the
/// snapshot's boot id, so the boot id alone cannot tell.
pub fn fresh_state(old: &HealthReply, new: &HealthReply) -> Result<Freshness, String> {
    if new.restore_generation != 0 {
        if new.restore_generation == old.restore_generation {
            return Err(format!(
                "restore generation {} did not change",
                new.restore_generation
            ));
        }
        return Ok(Freshness::NewRestore {
            generation: new.restore_generation,
        });
    }
    if new.boot_id == old.boot_id {
        return Err(format!(
            "boot id {} did not change and no restore generation",
            new.boot_id
        ));
    }
    Ok(Freshness::NewBoot)
}

/// The guest shell script behind [`drop_block_caches`]; the devices are its `$@`.
pub const DROP_CACHES_SCRIPT: &str = "set -e; for d in \"$@\"; do blockdev --flushbufs \"$d\"; done; \
     sync; echo 3 > /proc/sys/vm/drop_caches";

/// The Exec request that drops the guest's cached blocks of `devices` (unmounted
/// block devices, e.g. `/dev/vda`) and the page cache.
pub fn drop_caches_request(devices: &[&str]) -> ExecRequest {
    let mut argv: Vec<String> = vec!["sh".into(), "-c".into(), DROP_CACHES_SCRIPT.into()];
    argv.push("sh".into());
    argv.extend(devices.iter().map(|d| d.to_string()));
    ExecRequest {
        argv,
        timeout_ms: 30_000,
        ..Default::default()
    }
}

/// Drops what a restored guest cached of `devices` (`blockdev --flushbufs` each, then
/// `drop_caches`). Call it after a restore and before the first use of any disk that
/// may have changed since the snapshot was taken: the snapshot's page cache still
/// holds the blocks it read back then.
pub async fn drop_block_caches(client: &AgentClient, devices: &[&str]) -> Result<(), VmError> {
    let mut c = client.clone().with_call_timeout(Duration::from_secs(35));
    let r = c.exec(drop_caches_request(devices)).await?;
    if r.exit_code != 0 {
        return Err(VmError::Config(format!(
            "dropping block caches of {devices:?} failed ({}): {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(boot: &str, generation: u64) -> HealthReply {
        HealthReply {
            boot_id: boot.into(),
            restore_generation: generation,
            ..Default::default()
        }
    }

    #[test]
    fn fresh_state_needs_a_new_generation_or_a_new_boot() {
        let cold = health("a", 0);
        assert_eq!(fresh_state(&cold, &health("b", 0)), Ok(Freshness::NewBoot));
        assert!(fresh_state(&cold, &health("a", 0)).is_err());
        // Restored from a snapshot (boot id "s") after a cold-booted guest.
        assert_eq!(
            fresh_state(&cold, &health("s", 7)),
            Ok(Freshness::NewRestore { generation: 7 })
        );
        // Restore after restore: same boot id, the generation tells.
        assert_eq!(
            fresh_state(&health("s", 7), &health("s", 8)),
            Ok(Freshness::NewRestore { generation: 8 })
        );
        assert!(fresh_state(&health("s", 7), &health("s", 7)).is_err());
        // A restored guest that crashed and was cold booted: new boot, generation gone.
        assert_eq!(
            fresh_state(&health("s", 7), &health("c", 0)),
            Ok(Freshness::NewBoot)
        );
    }

    #[test]
    fn timeline_says_restored_or_why_not() {
        let r = StartedFrom::Snapshot {
            generation: 5,
            taken_now: false,
        };
        assert!(r.restored());
        assert_eq!(r.describe(), "restored from snapshot (generation 5)");
        let t = StartedFrom::Snapshot {
            generation: 6,
            taken_now: true,
        };
        assert!(t.describe().contains("snapshot taken"));
        let off = StartedFrom::ColdBoot { fallback: None };
        assert!(!off.restored());
        assert_eq!(off.describe(), "cold boot (snapshots off)");
        let fell = StartedFrom::ColdBoot {
            fallback: Some("restore failed: state corrupt".into()),
        };
        assert_eq!(
            fell.describe(),
            "cold boot, snapshot not used: restore failed: state corrupt"
        );
    }

    #[test]
    fn snapshots_follow_the_root_port_and_disks_are_by_name() {
        let mut c = VmConfig::new("/k", "");
        assert!(
            !snapshots_wanted(&c),
            "the plain layout cannot be snapshotted"
        );
        c.vsock_slot = VsockSlot::RootPort;
        assert!(snapshots_wanted(&c));
        assert!(disk_devices(&c).is_empty());
        c.disks = vec![super::super::disks::Disk {
            name: "data".into(),
            path: "/run/x/t1/data.img".into(),
        }];
        assert_eq!(disk_devices(&c), ["/dev/disk/by-name/data"]);
    }

    #[test]
    fn drop_caches_passes_devices_as_arguments() {
        let r = drop_caches_request(&["/dev/vda", "/dev/vdb"]);
        assert_eq!(&r.argv[..2], ["sh", "-c"]);
        assert!(r.argv[2].contains("blockdev --flushbufs"));
        assert_eq!(&r.argv[3..], ["sh", "/dev/vda", "/dev/vdb"]);
    }
}
